import { Command, Option } from 'clipanion'
import { shortKey, toHex } from '../../../protocol/encoding.js'
import type { MeshError } from '../../../protocol/errors.js'
import type { InboundMessage } from '../../../peer-runtime/inbox.js'
import type { Peer } from '../../../peer-runtime/peer.js'
import { parseDuration, parsePositiveInt } from '../duration.js'
import { HomeCommand } from '../home-command.js'

/** One line of `listen --json`: a stable contract. */
export interface ListenJson {
  /** The sender's key (hex): a member key, or a session key of a member. */
  from: string
  /** The sender's display name as the mesh knows it, else null. */
  fromName: string | null
  clientMessageId: string
  /** The opened payload (`{text}` from `agentmesh send`); null when it did not open. */
  payload: unknown
  /** `relay` or `p2p`. */
  via: string
  /** False for a plaintext `{to, text}` post (POST /v1/send), which the coordinator could read. */
  e2e: boolean
}

/** `agentmesh listen`: prints the DMs to this home's member key as they arrive. */
export class ListenCommand extends HomeCommand {
  static override paths = [['listen']]

  static override usage = Command.Usage({
    category: 'Messages',
    description: 'Print direct messages to this member as they arrive',
    details: `
      Connects as this member's control-plane presence (the member key: DMs sent to the member, by key or
      by name, arrive here) and prints every message as it arrives, first those that were queued while
      it was offline: \`name: text\`, or with \`--json\` one JSON line per message
      \`{from, fromName, clientMessageId, payload, via, e2e}\`. Each message is stored and acknowledged
      before it is printed, so a redelivery is never printed twice.

      Runs until \`--count\` messages were printed, or until SIGINT or SIGTERM; either way it closes its
      connection cleanly and exits 0. One presence per key: a second \`listen\` on the same home and mesh
      replaces the first one, which then exits 1 with \`MESH_ERR_SESSION_REPLACED\`.
    `,
    examples: [
      ['Listen on mesh "team"', '$0 listen --mesh team'],
      ['Wait for one message and print it as JSON', '$0 listen --mesh team --count 1 --json'],
    ],
  })

  mesh = Option.String('--mesh', { description: "The mesh (default: the home's only one)" })

  count = Option.String('--count', { description: 'Exit after this many messages' })

  timeout = Option.String('--connect-timeout', '30s', {
    description: 'How long the first connection may take (default 30s)',
  })

  override async run(): Promise<number> {
    const limit = this.count === undefined ? Infinity : parsePositiveInt(this.count, '--count')
    const timeoutMs = parseDuration(this.timeout, '--connect-timeout')
    const mesh = await this.meshOrOnly(this.mesh)

    const stop = new AbortController()
    const onSignal = (): void => stop.abort()
    const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM']
    for (const s of signals) process.once(s, onSignal)
    let stoppedWith: MeshError | undefined
    try {
      const opened = await this.connect(mesh, { role: 'control-plane', timeoutMs })
      const { peer } = opened
      try {
        peer.on('stopped', (err) => {
          stoppedWith = err
          stop.abort()
        })
        const who = opened.config.displayName === undefined ? '' : ` as ${opened.config.displayName}`
        this.note(`listening on mesh ${mesh}${who} (key ${opened.config.memberPk.slice(0, 16)}…)`)
        const names = new Names(peer)
        let printed = 0
        if (printed < limit) {
          for await (const m of peer.messages({ signal: stop.signal })) {
            this.#print(m, await names.of(m.from))
            if (++printed >= limit) break
          }
        }
      } finally {
        await opened.close()
      }
    } finally {
      for (const s of signals) process.removeListener(s, onSignal)
    }
    if (stoppedWith !== undefined) throw stoppedWith
    return 0
  }

  #print(m: InboundMessage, fromName: string | undefined): void {
    if (this.json) {
      this.printJson({
        from: toHex(m.from),
        fromName: fromName ?? null,
        clientMessageId: m.clientMessageId,
        payload: m.payload,
        via: m.via,
        e2e: m.e2e,
      } satisfies ListenJson)
      return
    }
    const name = fromName ?? shortKey(m.from)
    const p = m.payload as { text?: unknown } | null
    const body =
      m.status !== 'ok' && m.status !== 'duplicate'
        ? `[${m.status}: the message did not open]`
        : typeof p?.text === 'string'
          ? p.text
          : JSON.stringify(m.payload)
    this.context.stdout.write(`${name}: ${body}${m.e2e ? '' : ' (not end-to-end encrypted)'}\n`)
  }
}

/** Display names of senders, asked of the coordinator (as verified peers) when a key is new. */
class Names {
  readonly #peer: Peer
  readonly #known = new Map<string, string>()

  constructor(peer: Peer) {
    this.#peer = peer
  }

  async of(pk: Uint8Array): Promise<string | undefined> {
    const hex = toHex(pk)
    if (!this.#known.has(hex) && this.#peer.connected) {
      try {
        const peers = await this.#peer.listPeers({
          includeDaemons: true,
          includeOffline: true,
          signal: AbortSignal.timeout(5000),
        })
        for (const p of peers) if (p.displayName !== undefined) this.#known.set(toHex(p.pk), p.displayName)
      } catch {
        // The name is a nicety: print the key instead.
      }
    }
    return this.#known.get(hex)
  }
}
