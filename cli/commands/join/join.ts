import { Command, Option } from 'clipanion'
import { joinMesh } from '../../../peer-runtime/node/home-membership.js'
import { HomeCommand } from '../home-command.js'
import type { MembershipJson } from '../mesh/create.js'

/** `agentmesh join <token>`: joins the mesh an invite names, with a new member key in this home. */
export class JoinCommand extends HomeCommand {
  static override paths = [['join'], ['mesh', 'join']]

  static override usage = Command.Usage({
    category: 'Meshes',
    description: 'Join a mesh with an invite token',
    details: `
      Checks the invite (signature, expiry), makes a new member key, signs the join with it and sends it
      to the coordinator the invite names; then keeps the key, the pinned coordinator and owner keys, and
      the address in \`<home>/meshes/<mesh>/\` (mode 0600). A coordinator answering with another key than
      the invite's is refused (\`MESH_ERR_COORDINATOR_MISMATCH\`); \`--coordinator\` reaches it at another
      address than the invite's (behind a proxy, another port), its key still pinned from the invite.

      One home joins a mesh once (\`MESH_ERR_ALREADY_JOINED\`): for a second user on one machine, use
      another \`--home\`. \`--force\` replaces this home's membership with a new one.
    `,
    examples: [
      ['Join as "alice"', '$0 join am1.… --name alice'],
      ['Join into another home', '$0 join am1.… --name bob --home /tmp/bob'],
    ],
  })

  token = Option.String({ name: 'token' })

  name = Option.String('--name', { description: 'Your display name in the mesh' })

  force = Option.Boolean('--force', false, { description: "Replace this home's membership of that mesh" })

  override async run(): Promise<number> {
    const config = await joinMesh({
      home: this.home,
      token: this.token,
      force: this.force,
      ...(this.coordinator !== undefined && { coordinatorUrl: this.coordinator }),
      ...(this.name !== undefined && { displayName: this.name }),
    })
    if (this.json) this.printJson({ ...config, home: this.home } satisfies MembershipJson)
    else {
      const as = config.displayName === undefined ? '' : ` as ${config.displayName}`
      this.context.stdout.write(
        `joined mesh ${config.mesh}${as} (${config.role}, key ${config.memberPk.slice(0, 16)}…) on ${config.coordinatorUrl}\n`,
      )
    }
    return 0
  }
}
