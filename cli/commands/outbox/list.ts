import { Command, Option, UsageError } from 'clipanion'
import { isMeshError } from '../../../protocol/errors.js'
import {
  listOutboxRows,
  OUTBOX_STATES,
  parseOutboxStates,
  type OutboxRowJson,
} from '../../../peer-runtime/node/daemon/ipc-outbox.js'
import type { OutboxState } from '../../../peer-runtime/store/types.js'
import { connectDaemon } from '../daemon/connect.js'
import { parsePositiveInt } from '../duration.js'
import { HomeCommand } from '../home-command.js'
import { DaemonLink } from '../link/daemon-link.js'
import { CLI_SESSION_ID } from '../link/mesh-link.js'
import { openCliOutbox } from './cli-outbox.js'

/** What `outbox list --json` prints. */
export interface OutboxListJson {
  mesh: string
  /** How it was read: through the daemon, or from the store on disk. */
  via: 'daemon' | 'direct'
  /** The session whose outbox this is. */
  session: string
  /** Oldest first. */
  rows: OutboxRowJson[]
}

/** What `outbox list` shows without `--state`: every row not delivered (queued ones too). */
const UNFINISHED: readonly OutboxState[] = ['pending', 'inflight', 'accepted', 'dead']

/** `agentmesh outbox list`: the rows this home's sends left in its outbox. */
export class OutboxListCommand extends HomeCommand {
  static override paths = [['outbox', 'list'], ['outbox']]

  static override usage = Command.Usage({
    category: 'Messages',
    description: "List the messages in this home's outbox",
    details: `
      Lists the outbox of this home's session \`${CLI_SESSION_ID}\` (where \`agentmesh send\` and
      \`agentmesh rpc\` leave their rows), oldest first: id, state, recipient, channel, attempts and the last
      error. States: \`pending\` (waiting for its next attempt), \`inflight\` (being sent), \`accepted\`
      (queued at the coordinator: the recipient is offline), \`done\` (delivered), \`dead\` (given up:
      \`agentmesh outbox requeue\` sends it again) and \`aborted\` (a dead row requeued under another id).
      Without \`--state\` it lists every row not delivered (pending, inflight, accepted, dead); \`--state\`
      takes one state, several separated by commas, or \`all\`. \`--limit\` keeps the newest (default 100).
      \`--json\` prints \`{mesh, via, session, rows}\`, each row as \`msg status --json\` prints one, with
      \`nextAttemptAt\` (pending) and \`requeuedAs\` (aborted).

      Through the home's daemon when one runs (\`GET /v1/outbox\`), else from the store on disk (nothing
      goes over the network). It says on stderr which.
    `,
    examples: [
      ['What has not been delivered yet', '$0 outbox list'],
      ['The messages given up on, as JSON', '$0 outbox list --state dead --json'],
    ],
  })

  mesh = Option.String('--mesh', { description: "The mesh (default: the home's only one)" })

  state = Option.String('--state', {
    description: `Only rows in these states (${OUTBOX_STATES.join(', ')}, comma-separated, or all)`,
  })

  limit = Option.String('--limit', { description: 'At most this many rows, the newest (default 100)' })

  override async run(): Promise<number> {
    const states = this.#states()
    const limit = this.limit === undefined ? 100 : parsePositiveInt(this.limit, '--limit')
    const mesh = await this.meshOrOnly(this.mesh)
    let rows: OutboxRowJson[]
    let via: OutboxListJson['via']
    const daemon = await connectDaemon(this.home)
    if (daemon !== undefined) {
      this.note(`through the daemon (pid ${daemon.pid})`)
      via = 'daemon'
      const link = await DaemonLink.open(daemon.client, this.home, mesh).catch((err: unknown) => {
        daemon.client.close()
        throw err
      })
      try {
        rows = await link.outbox(states, limit, AbortSignal.timeout(15_000))
      } finally {
        await link.close()
      }
    } else {
      this.note('no daemon runs on this home: reading the outbox on disk')
      via = 'direct'
      const cli = await openCliOutbox(this.home, mesh, (pid) =>
        this.note(`waiting for ${pid}, which holds this presence's store`),
      )
      try {
        rows = cli === undefined ? [] : await listOutboxRows(cli.store, states, limit)
      } finally {
        await cli?.store.close()
      }
    }
    if (this.json) {
      this.printJson({ mesh, via, session: CLI_SESSION_ID, rows } satisfies OutboxListJson)
      return 0
    }
    for (const r of rows) this.context.stdout.write(outboxLine(r) + '\n')
    if (rows.length === 0) this.note(`no messages in the outbox (${states.join(', ')})`)
    return 0
  }

  #states(): OutboxState[] {
    if (this.state === undefined) return [...UNFINISHED]
    if (this.state === 'all') return [...OUTBOX_STATES]
    try {
      return parseOutboxStates(this.state)
    } catch (err) {
      if (!isMeshError(err)) throw err
      throw new UsageError(`--state: ${err.message}`)
    }
  }
}

/** `01JD…  accepted  queued — recipient offline  dm to 1f2e3d4c5b6a7988…  1 attempt(s)  2026-12-07 23:59:01`. */
export function outboxLine(r: OutboxRowJson): string {
  const to = /^[0-9a-f]{64}$/.test(r.to) ? r.to.slice(0, 16) + '…' : r.to
  const when = new Date(r.createdAt).toISOString().replace('T', ' ').slice(0, 19)
  const parts = [
    r.id,
    r.state.padEnd(8),
    STATE_WORDS[r.state] ?? r.state,
    `${r.channel} to ${to}`,
    `${r.attempts} attempt(s)`,
    when,
  ]
  if (r.lastError !== undefined) parts.push(`last error ${r.lastError.code}: ${r.lastError.message}`)
  if (r.requeuedAs !== undefined) parts.push(`requeued as ${r.requeuedAs}`)
  return parts.join('  ')
}

const STATE_WORDS: Record<string, string> = {
  pending: 'waiting to be sent',
  inflight: 'being sent',
  accepted: 'queued — recipient offline',
  done: 'delivered',
  dead: 'given up',
  aborted: 'requeued',
}
