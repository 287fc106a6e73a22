import { deliveryJson, type DeliveryJson } from '../../../peer-runtime/node/daemon/ipc-json.js'
import type { MeshPeer } from '../../../peer-runtime/node/home-peer.js'
import type { OutboxRow } from '../../../peer-runtime/store/types.js'
import { knownPeerEntry, type PeerEntry } from '../peer/resolve.js'
import type { MeshLink } from './mesh-link.js'

/**
 * The path without a daemon: this process's own `Peer` of the session `cli`, connected (and relay-only:
 * a one-shot command's first message goes through the relay anyway, before any P2P session could be up).
 */
export class DirectLink implements MeshLink {
  readonly via = 'direct'
  readonly mesh: string
  readonly #opened: MeshPeer
  readonly #rows = new Map<string, OutboxRow>()
  readonly #wakes = new Set<() => void>()

  constructor(opened: MeshPeer) {
    this.#opened = opened
    this.mesh = opened.config.mesh
    opened.peer.on('outbox', (row) => {
      this.#rows.set(row.id, row)
      for (const wake of [...this.#wakes]) wake()
    })
  }

  async peers(o: { offline: boolean; signal: AbortSignal }): Promise<PeerEntry[]> {
    const found = await this.#opened.peer.listPeers({
      includeDaemons: true,
      includeOffline: o.offline,
      signal: o.signal,
    })
    return found.map(knownPeerEntry)
  }

  async send(to: string, text: string, signal: AbortSignal): Promise<string> {
    return (await this.#opened.peer.send(to, { text }, { signal })).clientMessageId
  }

  async sendGroup(target: string, text: string, signal: AbortSignal): Promise<string> {
    return (await this.#opened.peer.sendGroup(target, { text }, { signal })).clientMessageId
  }

  async status(id: string): Promise<DeliveryJson | undefined> {
    const row = this.#rows.get(id) ?? (await this.#opened.peer.status(id))
    return row === undefined ? undefined : deliveryJson(row)
  }

  async watch(
    id: string,
    until: (row: DeliveryJson) => boolean,
    signal: AbortSignal,
  ): Promise<DeliveryJson | undefined> {
    let row = await this.status(id)
    while (!(row !== undefined && until(row)) && !signal.aborted) {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          this.#wakes.delete(done)
          signal.removeEventListener('abort', done)
          resolve()
        }
        this.#wakes.add(done)
        signal.addEventListener('abort', done, { once: true })
      })
      const seen = this.#rows.get(id)
      if (seen !== undefined) row = deliveryJson(seen)
    }
    return row
  }

  close(): Promise<void> {
    return this.#opened.close()
  }
}
