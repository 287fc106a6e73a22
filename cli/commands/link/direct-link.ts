import { fromHex } from '../../../protocol/encoding.js'
import { MeshError } from '../../../protocol/errors.js'
import { ulidFactory } from '../../../protocol/ulid.js'
import { deliveryJson, type DeliveryJson } from '../../../peer-runtime/node/daemon/ipc-json.js'
import type { RpcAnswerJson } from '../../../peer-runtime/node/daemon/ipc-rpc.js'
import type { MeshPeer } from '../../../peer-runtime/node/home-peer.js'
import { rpcEndpoint, RpcRemoteError } from '../../../peer-runtime/rpc.js'
import type { OutboxRow } from '../../../peer-runtime/store/types.js'
import { knownPeerEntry, type PeerEntry } from '../peer/resolve.js'
import type { MeshLink, RpcRequest } from './mesh-link.js'

const nextRpcId = ulidFactory()

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

  async rpc(r: RpcRequest, signal: AbortSignal): Promise<RpcAnswerJson> {
    const to = fromHex(r.to)
    if (to === null || to.length !== 32) {
      throw new MeshError('MESH_ERR_MALFORMED_KEY', 'a callee is a 32-byte key (64 hex characters)')
    }
    const id = nextRpcId()
    try {
      const result = await rpcEndpoint(this.#opened.peer).call(to, r.params, {
        id,
        timeoutMs: r.timeoutMs,
        signal,
        ...(r.method !== undefined && { method: r.method }),
      })
      return { id, result: result ?? null }
    } catch (err) {
      if (!(err instanceof RpcRemoteError)) throw err
      // As the daemon's POST /v1/rpc reports it: the callee's code, marked remote.
      throw new MeshError(err.code, err.message, {
        details: { ...err.details, remote: true, remoteCode: err.remoteCode, id },
      })
    }
  }

  close(): Promise<void> {
    return this.#opened.close()
  }
}
