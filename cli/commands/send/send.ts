import { Command, Option, UsageError } from 'clipanion'
import { isMeshErrorCode, MeshError, type MeshErrorCode } from '../../../protocol/errors.js'
import type { OutboxRow } from '../../../peer-runtime/store/types.js'
import { parseDuration } from '../duration.js'
import { HomeCommand } from '../home-command.js'
import { resolveRecipient } from './recipient.js'

/** The session id `send` connects with: a session presence, so it never displaces a `listen`. */
export const CLI_SESSION_ID = 'cli'

/** What `send --json` prints on success. */
export interface SendJson {
  mesh: string
  /** The recipient key (hex). */
  to: string
  toName: string | null
  clientMessageId: string
  /** `delivered`: the recipient stored it; `queued`: the coordinator's store holds it for the recipient. */
  state: 'delivered' | 'queued'
}

/** `agentmesh send <to> <text>`: one end-to-end encrypted DM, waited for until delivered or queued. */
export class SendCommand extends HomeCommand {
  static override paths = [['send']]

  static override usage = Command.Usage({
    category: 'Messages',
    description: 'Send a direct message to a peer',
    details: `
      Connects as this home's session \`${CLI_SESSION_ID}\` (a stable session key, attested by the member key;
      it does not displace an \`agentmesh listen\` holding the member key), seals \`{text}\` to the recipient,
      and waits for the outcome: with \`--wait queued\` (the default) until the coordinator stored it for
      an offline recipient or the recipient acknowledged it; with \`--wait delivered\` until the recipient
      acknowledged it. Prints \`delivered\` or \`queued\` and exits 0.

      \`<to>\` is a 64-hex key or a display name from \`agentmesh peers\`. A failure exits 1 with its code; on
      \`--timeout\` (\`MESH_ERR_WAIT_TIMEOUT\`) the sealed message stays in this home's outbox and the next
      \`send\` from it goes on delivering it.
    `,
    examples: [
      ['Send to alice by name', '$0 send --mesh team alice "hello"'],
      [
        'Wait until alice has it, up to a minute',
        '$0 send --mesh team alice "ping" --wait delivered --timeout 60s',
      ],
    ],
  })

  mesh = Option.String('--mesh', { description: "The mesh (default: the home's only one)" })

  wait = Option.String('--wait', 'queued', {
    description: 'queued (default): until the coordinator or the recipient has it; delivered: the recipient',
  })

  timeout = Option.String('--timeout', '30s', { description: 'How long to wait in all (default 30s)' })

  to = Option.String({ name: 'to' })

  text = Option.Rest({ name: 'text', required: 1 })

  override async run(): Promise<number> {
    if (this.wait !== 'queued' && this.wait !== 'delivered') {
      throw new UsageError(`--wait is queued or delivered (got ${JSON.stringify(this.wait)})`)
    }
    const timeoutMs = parseDuration(this.timeout, '--timeout')
    const deadline = AbortSignal.timeout(timeoutMs)
    const mesh = await this.meshOrOnly(this.mesh)
    // A one-shot send gains nothing from P2P: its first message goes through the relay anyway.
    const opened = await this.connect(mesh, { role: { sessionId: CLI_SESSION_ID }, p2p: false, timeoutMs })
    try {
      const { peer } = opened
      const to = await resolveRecipient(peer, this.to, deadline)
      const rows = new Map<string, OutboxRow>()
      let wake = (): void => {}
      peer.on('outbox', (row) => {
        rows.set(row.id, row)
        wake()
      })
      const sent = await peer.send(to.pk, { text: this.text.join(' ') }, { signal: deadline })
      const row = await this.#outcome(sent.clientMessageId, rows, (w) => (wake = w), deadline, peer)
      const state = row.state === 'done' ? 'delivered' : 'queued'
      if (this.json) {
        this.printJson({
          mesh,
          to: to.pk,
          toName: to.displayName ?? null,
          clientMessageId: sent.clientMessageId,
          state,
        } satisfies SendJson)
      } else {
        this.context.stdout.write(
          `${state} to ${to.displayName ?? to.pk.slice(0, 16) + '…'} (${sent.clientMessageId})\n`,
        )
      }
      return 0
    } finally {
      await opened.close()
    }
  }

  /** Waits until the row reaches the outcome `--wait` asks for; throws the row's failure or a timeout. */
  async #outcome(
    id: string,
    rows: Map<string, OutboxRow>,
    onWake: (wake: () => void) => void,
    deadline: AbortSignal,
    peer: { status(id: string): Promise<OutboxRow | undefined> },
  ): Promise<OutboxRow> {
    let row = rows.get(id) ?? (await peer.status(id))
    for (;;) {
      if (row !== undefined) {
        const failed = failure(row)
        if (failed !== undefined) throw failed
        if (row.state === 'done') return row
        if (row.state === 'accepted' && this.wait === 'queued') return row
      }
      if (deadline.aborted) {
        const state = row?.state ?? 'pending'
        throw new MeshError(
          'MESH_ERR_WAIT_TIMEOUT',
          `not ${this.wait === 'queued' ? 'queued or delivered' : 'delivered'} within ${this.timeout} ` +
            `(outbox state ${state}${row?.lastError === undefined ? '' : `, last error ${row.lastError.code}`}); ` +
            'it stays in the outbox and the next send from this home goes on with it',
          {
            details: {
              clientMessageId: id,
              state,
              ...(row?.lastError !== undefined && { lastError: row.lastError }),
            },
          },
        )
      }
      await new Promise<void>((resolve) => {
        const done = (): void => {
          deadline.removeEventListener('abort', done)
          resolve()
        }
        onWake(done)
        deadline.addEventListener('abort', done, { once: true })
      })
      row = rows.get(id) ?? row
    }
  }
}

/** What a recipient state other than delivered or queued means, as a code. */
const REFUSALS: Record<string, MeshErrorCode> = {
  undecryptable: 'MESH_ERR_UNDECRYPTABLE',
  rejected: 'MESH_ERR_HEADER_MISMATCH',
  dropped_revoked: 'MESH_ERR_REVOKED',
  expired: 'MESH_ERR_EXPIRED',
}

/** The row's failure: `dead` with its last error, or a recipient that refused it. */
function failure(row: OutboxRow): MeshError | undefined {
  if (row.state === 'dead' || row.state === 'aborted') {
    const code = row.lastError?.code ?? ''
    return new MeshError(
      isMeshErrorCode(code) ? code : 'MESH_ERR_INTERNAL',
      row.lastError?.message ?? 'given up',
      {
        details: { clientMessageId: row.id, state: row.state },
      },
    )
  }
  for (const [recipient, state] of Object.entries(row.recipients ?? {})) {
    const code = REFUSALS[state]
    if (code !== undefined) {
      return new MeshError(code, `the recipient's answer: ${state}`, {
        details: { clientMessageId: row.id, recipient, state },
      })
    }
  }
  return undefined
}
