import { Command, Option, UsageError } from 'clipanion'
import { isMeshErrorCode, MeshError, type MeshErrorCode } from '../../../protocol/errors.js'
import type { DeliveryJson } from '../../../peer-runtime/node/daemon/ipc-json.js'
import type { OutboxVia } from '../../../peer-runtime/store/types.js'
import { parseDuration } from '../duration.js'
import { HomeCommand } from '../home-command.js'
import { CLI_SESSION_ID, isGroupTarget, type MeshLink } from '../link/mesh-link.js'
import { resolvePeer } from '../peer/resolve.js'

/** What `send --json` prints on success. */
export interface SendJson {
  mesh: string
  /** The recipient key (hex), or the group target (`@name`, `*`). */
  to: string
  toName: string | null
  clientMessageId: string
  /** `delivered`: the recipient stored it; `queued`: the coordinator's store holds it for the recipient. */
  state: 'delivered' | 'queued'
  /**
   * The transport that got it there, as the outbox row records it (`OutboxRow.via`): `p2p` (the P2P data
   * channel, acked by the recipient) or `relay` (the coordinator pushed it, or holds it: always so when
   * `queued`, and for a group). Null only for a row that does not record it.
   */
  transport: OutboxVia | null
  /** How this command reached the mesh. */
  via: 'daemon' | 'direct'
  /** Per recipient key: delivered, queued, … (one entry for a DM, one per member for a group). */
  recipients: Record<string, string>
}

/** `agentmesh send <to> <text>`: one end-to-end encrypted message, waited for until delivered or queued. */
export class SendCommand extends HomeCommand {
  static override paths = [['send']]

  static override usage = Command.Usage({
    category: 'Messages',
    description: 'Send a message to a peer, a group or the whole mesh',
    details: `
      Seals \`{text}\` to the recipient and waits for the outcome, then prints it with the message id:
      \`delivered (p2p)\` (the recipient stored and acknowledged it over a peer-to-peer data channel),
      \`delivered (relay)\` (the same, through the coordinator), \`queued — recipient offline\` (the
      coordinator stored it and delivers it when the recipient connects), or with \`--wait\` only once the
      recipient acknowledged it. \`--json\` says the same in \`state\` and \`transport\`. Exits 0.

      \`<to>\` is a display name (\`agentmesh peer list\`), a 64-hex key, a unique key prefix (4 hex
      characters or more), \`@group\` or \`*\` (every member). A name that matches nobody or several
      members is refused with the candidates listed (exit 6); nothing is sent. \`#topic\` targets are not
      supported by the runtime yet.

      When the home's daemon runs, the message goes through it (its session \`${CLI_SESSION_ID}\`; the daemon
      sends peer to peer once a session to the recipient is up, so a first message goes by relay); else
      this command connects as the home's session \`${CLI_SESSION_ID}\` itself, through the relay. It says
      which on stderr. On \`--timeout\` (\`MESH_ERR_WAIT_TIMEOUT\`) the message stays in the outbox and goes on.
    `,
    examples: [
      ['Send to alice by name', '$0 send --mesh team alice "hello"'],
      ['Wait until alice has it, up to a minute', '$0 send alice "ping" --wait --timeout 60s'],
      ['Send to every member of the mesh', '$0 send "*" "standup in 5"'],
    ],
  })

  mesh = Option.String('--mesh', { description: "The mesh (default: the home's only one)" })

  wait = Option.String('--wait', false, {
    tolerateBoolean: true,
    description: "Wait for the recipient's ack (default: until the coordinator or the recipient has it)",
  })

  timeout = Option.String('--timeout', '30s', { description: 'How long to wait in all (default 30s)' })

  to = Option.String({ name: 'to' })

  text = Option.Rest({ name: 'text', required: 1 })

  override async run(): Promise<number> {
    const untilAck = this.#untilAck()
    if (this.to.startsWith('#')) {
      throw new UsageError(
        `${this.to}: topics are not supported by the runtime yet; send to a peer, @group or *`,
      )
    }
    const timeoutMs = parseDuration(this.timeout, '--timeout')
    const deadline = AbortSignal.timeout(timeoutMs)
    const mesh = await this.meshOrOnly(this.mesh)
    const link = await this.openLink(mesh, timeoutMs)
    try {
      const text = this.text.join(' ')
      let to: string
      let toName: string | undefined
      let id: string
      if (isGroupTarget(this.to)) {
        to = this.to
        id = await link.sendGroup(this.to, text, deadline)
      } else {
        const resolved = resolvePeer(await link.peers({ offline: true, signal: deadline }), this.to)
        to = resolved.pk
        toName = resolved.displayName
        id = await link.send(to, text, deadline)
      }
      const row = await this.#outcome(link, id, untilAck, deadline)
      const state = row.state === 'done' ? 'delivered' : 'queued'
      const transport = row.via ?? null
      if (this.json) {
        this.printJson({
          mesh,
          to,
          toName: toName ?? null,
          clientMessageId: id,
          state,
          transport,
          via: link.via,
          recipients: row.recipients,
        } satisfies SendJson)
      } else {
        const who = toName ?? (isGroupTarget(to) ? to : to.slice(0, 16) + '…')
        this.context.stdout.write(`${describeOutcome(row, state, transport)}: ${who}, id ${id}\n`)
      }
      return 0
    } finally {
      await link.close()
    }
  }

  /** `--wait` (or `--wait=delivered`): until the recipient's ack; `--wait=queued` or none: queued is enough. */
  #untilAck(): boolean {
    const w = this.wait
    if (w === false || w === 'queued') return false
    if (w === true || w === 'delivered') {
      const last = this.text.at(-1)
      if (w === true && (last === 'delivered' || last === 'queued')) {
        // The old `--wait delivered` form would now send "… delivered" as text: refuse instead.
        throw new UsageError(
          `--wait takes no value (write --wait, or --wait=${last}); to send a text ending in "${last}", put --wait before the peer`,
        )
      }
      return true
    }
    throw new UsageError(`--wait takes no value, or =queued or =delivered (got ${JSON.stringify(w)})`)
  }

  /** Waits until the row reaches the outcome asked for; throws the row's failure or a timeout. */
  async #outcome(
    link: MeshLink,
    id: string,
    untilAck: boolean,
    deadline: AbortSignal,
  ): Promise<DeliveryJson> {
    const reached = (row: DeliveryJson): boolean =>
      failure(row) !== undefined || row.state === 'done' || (row.state === 'accepted' && !untilAck)
    const row = await link.watch(id, reached, deadline)
    const failed = row === undefined ? undefined : failure(row)
    if (failed !== undefined) throw failed
    if (row !== undefined && reached(row)) return row
    const state = row?.state ?? 'pending'
    throw new MeshError(
      'MESH_ERR_WAIT_TIMEOUT',
      `not ${untilAck ? 'delivered' : 'queued or delivered'} within ${this.timeout} ` +
        `(outbox state ${state}${row?.lastError === undefined ? '' : `, last error ${row.lastError.code}`}); ` +
        'it stays in the outbox and goes on being delivered',
      {
        details: {
          clientMessageId: id,
          state,
          ...(row?.lastError !== undefined && { lastError: row.lastError }),
        },
      },
    )
  }
}

/** `delivered (p2p)`, `delivered (relay)`, `queued — recipient offline`, or for a group the count of each. */
function describeOutcome(row: DeliveryJson, state: 'delivered' | 'queued', transport: string | null): string {
  const how = transport === null ? '' : ` (${transport})`
  const states = Object.values(row.recipients)
  if (isGroupTarget(row.to)) {
    const delivered = states.filter((s) => s === 'delivered').length
    const queued = states.filter((s) => s === 'queued').length
    return `sent${how}: ${delivered} delivered, ${queued} queued — recipient offline`
  }
  return state === 'delivered' ? `delivered${how}` : 'queued — recipient offline'
}

/** What a recipient state other than delivered or queued means, as a code. */
const REFUSALS: Record<string, MeshErrorCode> = {
  undecryptable: 'MESH_ERR_UNDECRYPTABLE',
  rejected: 'MESH_ERR_HEADER_MISMATCH',
  dropped_revoked: 'MESH_ERR_REVOKED',
  expired: 'MESH_ERR_EXPIRED',
}

/** The row's failure: `dead` with its last error, or a recipient that refused it. */
function failure(row: DeliveryJson): MeshError | undefined {
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
  for (const [recipient, state] of Object.entries(row.recipients)) {
    const code = REFUSALS[state]
    if (code !== undefined) {
      return new MeshError(code, `the recipient's answer: ${state}`, {
        details: { clientMessageId: row.id, recipient, state },
      })
    }
  }
  return undefined
}
