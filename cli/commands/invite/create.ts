import { Command, Option, UsageError } from 'clipanion'
import { INVITE_ROLES, MAX_INVITE_USES, type InviteRole } from '../../../protocol/invite.js'
import { createInvite, type CreatedInvite } from '../../../peer-runtime/node/home-membership.js'
import { parseDuration, parsePositiveInt } from '../duration.js'
import { HomeCommand } from '../home-command.js'

/** What `invite create --json` prints. */
export type InviteCreateJson = CreatedInvite

/** `agentmesh invite create --mesh <mesh>`: an invite token signed by this home's owner or admin key. */
export class InviteCreateCommand extends HomeCommand {
  static override paths = [['invite', 'create']]

  static override usage = Command.Usage({
    category: 'Meshes',
    description: 'Sign an invite to a mesh and print its token',
    details: `
      Signs an invite with this home's member key, which must be the mesh's owner or an admin, and prints
      the \`am1.\` token on stdout (alone, so \`TOKEN=$(agentmesh invite create …)\` works). The token
      carries the coordinator's address and key and the owner's key: whoever joins with it pins both. No
      coordinator call is made; the join itself is checked against the roster.
    `,
    examples: [
      ['A one-use member invite, valid 24 h', '$0 invite create --mesh team'],
      [
        'An admin invite for 5 people, valid a week',
        '$0 invite create --mesh team --role admin --uses 5 --expires 7d',
      ],
    ],
  })

  mesh = Option.String('--mesh', { description: "The mesh (default: the home's only one)" })

  role = Option.String('--role', 'member', {
    description: `The role it grants: ${INVITE_ROLES.join(' or ')}`,
  })

  uses = Option.String('--uses', '1', { description: 'How many joins it allows' })

  expires = Option.String('--expires', '24h', { description: 'How long it stays valid (30m, 24h, 7d)' })

  override async run(): Promise<number> {
    if (!(INVITE_ROLES as readonly string[]).includes(this.role)) {
      throw new UsageError(`--role is ${INVITE_ROLES.join(' or ')} (got ${JSON.stringify(this.role)})`)
    }
    const maxUses = parsePositiveInt(this.uses, '--uses')
    if (maxUses > MAX_INVITE_USES) throw new UsageError(`--uses is at most ${MAX_INVITE_USES}`)
    const ttlMs = parseDuration(this.expires, '--expires')
    const created = await createInvite({
      home: this.home,
      mesh: await this.meshOrOnly(this.mesh),
      role: this.role as InviteRole,
      maxUses,
      expiresAt: Date.now() + ttlMs,
    })
    if (this.json) this.printJson(created satisfies InviteCreateJson)
    else {
      this.context.stdout.write(`${created.token}\n`)
      this.note(
        `invite to ${created.mesh} as ${created.role}, ${created.maxUses} use(s), valid until ` +
          `${new Date(created.expiresAt).toISOString()}; join with: agentmesh join <token> --name <you>`,
      )
    }
    return 0
  }
}
