import { access } from 'node:fs/promises'
import { Command, Option } from 'clipanion'
import { MeshError } from '../../../protocol/errors.js'
import { deliveryJson, type DeliveryJson } from '../../../peer-runtime/node/daemon/ipc-json.js'
import type { OutboxVia } from '../../../peer-runtime/store/types.js'
import { loadOrCreateSessionKey, sessionKeyPath, storePath } from '../../../peer-runtime/node/home.js'
import { sqliteStore } from '../../../peer-runtime/node/sqlite-store.js'
import { connectDaemon } from '../daemon/connect.js'
import { HomeCommand } from '../home-command.js'
import { DaemonLink } from '../link/daemon-link.js'
import { CLI_SESSION_ID } from '../link/mesh-link.js'

/**
 * What `msg status --json` prints: the outbox row as the daemon's `GET /v1/messages/:id` gives it, with
 * the row's transport (`DeliveryJson.via`: `p2p`, `relay`, null while nothing carried it) as `transport`
 * (as `send --json` names it), and `via` saying how this command read it.
 */
export type MsgStatusJson = Omit<DeliveryJson, 'via'> & {
  transport: OutboxVia | null
  via: 'daemon' | 'direct'
}

/** `agentmesh msg status <id>`: where a message `agentmesh send` sent from this home is. */
export class MsgStatusCommand extends HomeCommand {
  static override paths = [['msg', 'status']]

  static override usage = Command.Usage({
    category: 'Messages',
    description: 'Show the delivery state of a message this home sent',
    details: `
      Looks the id (printed by \`agentmesh send\`) up in the outbox of this home's session
      \`${CLI_SESSION_ID}\`: through the home's daemon when one runs (\`GET /v1/messages/:id\`), else in the
      outbox on disk (nothing goes over the network). Prints the state (\`pending\`, \`inflight\`,
      \`accepted\`: queued at the coordinator, \`done\`: delivered, \`dead\`), the transport that got it
      there (\`via p2p\`: a peer-to-peer data channel; \`via relay\`: the coordinator) and each recipient's
      outcome. \`--json\` prints \`{id, mesh, to, channel, state, recipients, attempts, lastError?,
      transport, createdAt, updatedAt, via}\` (\`transport\`: \`p2p\`, \`relay\` or null while nothing
      carried it; \`via\`: \`daemon\` or \`direct\`, how this command read it). An id it never sent is \`MESH_ERR_UNKNOWN_MESSAGE\` (exit 1).
    `,
    examples: [['The state of a message', '$0 msg status 01JD3XK5Q6M8Z7Y2W9V4T1S0RP']],
  })

  mesh = Option.String('--mesh', { description: "The mesh (default: the home's only one)" })

  id = Option.String({ name: 'id' })

  override async run(): Promise<number> {
    const mesh = await this.meshOrOnly(this.mesh)
    const { row, via } = await this.#find(mesh)
    if (row === undefined) {
      throw new MeshError(
        'MESH_ERR_UNKNOWN_MESSAGE',
        `this home sent no message ${this.id} in mesh ${mesh}`,
        {
          details: { id: this.id, mesh },
        },
      )
    }
    if (this.json) {
      const { via: transport, ...rest } = row
      this.printJson({ ...rest, transport: transport ?? null, via } satisfies MsgStatusJson)
      return 0
    }
    const error =
      row.lastError === undefined ? '' : `, last error ${row.lastError.code}: ${row.lastError.message}`
    const how = row.via === undefined ? '' : ` via ${row.via}`
    const out = [
      `${row.id} ${STATES[row.state] ?? row.state} (${row.state})${how}, ${row.attempts} attempt(s)${error}`,
      `  sent ${new Date(row.createdAt).toISOString()}, updated ${new Date(row.updatedAt).toISOString()}`,
    ]
    for (const [pk, state] of Object.entries(row.recipients)) out.push(`  ${pk}  ${state}`)
    this.context.stdout.write(out.join('\n') + '\n')
    return 0
  }

  async #find(mesh: string): Promise<{ row: DeliveryJson | undefined; via: MsgStatusJson['via'] }> {
    const daemon = await connectDaemon(this.home)
    if (daemon !== undefined) {
      this.note(`through the daemon (pid ${daemon.pid})`)
      const link = await DaemonLink.open(daemon.client, this.home, mesh).catch((err: unknown) => {
        daemon.client.close()
        throw err
      })
      try {
        return { row: await link.status(this.id, AbortSignal.timeout(15_000)), via: 'daemon' }
      } finally {
        await link.close()
      }
    }
    this.note('no daemon runs on this home: reading the outbox on disk')
    // No session key yet: this home never sent from the `cli` session.
    const exists = await access(sessionKeyPath(this.home, mesh, CLI_SESSION_ID)).then(
      () => true,
      () => false,
    )
    if (!exists) return { row: undefined, via: 'direct' }
    const key = await loadOrCreateSessionKey(this.home, mesh, CLI_SESSION_ID)
    const store = sqliteStore({ path: storePath(this.home, mesh, key.publicKey) })
    try {
      const row = await store.getOutbox(this.id)
      return { row: row === undefined ? undefined : deliveryJson(row), via: 'direct' }
    } finally {
      await store.close()
    }
  }
}

const STATES: Record<string, string> = {
  pending: 'waiting to be sent',
  inflight: 'being sent',
  accepted: 'queued — recipient offline',
  done: 'delivered',
  dead: 'given up',
  aborted: 'requeued under another id',
}
