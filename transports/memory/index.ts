/**
 * The `memory` adapter: the in-process reference implementation of `PeerTransport`, first to pass
 * `transportCompliance`. Endpoints meet on a `MemoryNetwork` by key; knobs add latency (on the injected
 * clock) and loss. With `lossRate > 0` delivered frames still keep their order, but some never arrive, so
 * the adapter then promises `ordered: false` (order without completeness is not what `ordered` means).
 */
import { systemClock, type Clock } from '../../protocol/clock.js'
import { MeshError } from '../../protocol/errors.js'
import { MAX_FRAME_BYTES } from '../../protocol/limits.js'
import type { PeerRef, PeerTransport, TransportCapabilities, TransportSession } from '../types.js'
import type { MemoryEndpoint, MemoryNetwork } from './network.js'
import { MemorySession, type MemoryLink } from './session.js'

export { MemoryNetwork } from './network.js'
export type { MemorySession } from './session.js'

/** How the simulated link behaves. */
export interface MemoryTransportInit {
  network: MemoryNetwork
  /** One-way delay of every batch of frames, and half of `open`'s handshake. Default 0. */
  latencyMs?: number
  /** Chance (0 to 1) that each frame is dropped on the wire. Default 0. */
  lossRate?: number
  /** Send buffer per session; `send` returns false when a frame would overflow it. Default 1 MiB. */
  bufferBytes?: number
  /** The largest frame `send` takes. Default `MAX_FRAME_BYTES` (72 KiB). */
  maxFrameBytes?: number
  /** The loss dice, in [0, 1). Default `Math.random`. */
  random?: () => number
}

/** What the runtime hands in: who this endpoint is, and the clock latency runs on. */
export interface MemoryTransportComponents {
  self: PeerRef
  clock?: Clock
}

export const DEFAULT_MEMORY_BUFFER_BYTES = 1024 * 1024

/** `memoryTransport(init)(components)`: wires a `MemoryTransport` (CONVENTIONS §3). */
export function memoryTransport(
  init: MemoryTransportInit,
): (components: MemoryTransportComponents) => MemoryTransport {
  const lossRate = init.lossRate ?? 0
  if (!(lossRate >= 0 && lossRate <= 1)) throw new RangeError(`lossRate must be in [0, 1], got ${lossRate}`)
  return (components) =>
    new MemoryTransport(components.self, {
      network: init.network,
      clock: components.clock ?? systemClock,
      latencyMs: Math.max(0, init.latencyMs ?? 0),
      lossRate,
      bufferBytes: init.bufferBytes ?? DEFAULT_MEMORY_BUFFER_BYTES,
      maxFrameBytes: init.maxFrameBytes ?? MAX_FRAME_BYTES,
      random: init.random ?? Math.random,
    })
}

interface MemoryTransportOptions extends Omit<MemoryLink, 'after'> {
  clock: Clock
}

/** An endpoint on a `MemoryNetwork`: dials peers' keys and accepts the sessions they open. */
export class MemoryTransport implements PeerTransport, MemoryEndpoint {
  readonly kind = 'memory'
  readonly capabilities: TransportCapabilities
  readonly self: PeerRef
  #link: MemoryLink
  #clock: Clock
  #sessions = new Set<MemorySession>()
  #listeners: ((session: TransportSession) => void)[] = []
  #pendingOpens = new Set<(err: Error) => void>()
  #closed = false

  constructor(self: PeerRef, options: MemoryTransportOptions) {
    this.self = self
    this.#clock = options.clock
    this.#link = { ...options, after: (ms, fn) => this.#after(ms, fn) }
    this.capabilities = { p2p: true, ordered: options.lossRate === 0, maxFrameBytes: options.maxFrameBytes }
    options.network.register(self.pk, this)
  }

  get accepting(): boolean {
    return !this.#closed
  }

  /** Sessions this endpoint holds (opened or accepted) that have not closed. */
  get sessionCount(): number {
    return this.#sessions.size
  }

  open(peer: PeerRef, { signal }: { signal: AbortSignal }): Promise<TransportSession> {
    if (signal.aborted) return Promise.reject(signal.reason as Error)
    if (this.#closed) return Promise.reject(closedError('open on a closed memory transport'))
    return new Promise((resolve, reject) => {
      const settled = (): void => {
        this.#pendingOpens.delete(fail)
        signal.removeEventListener('abort', onAbort)
        cancel()
      }
      const fail = (err: Error): void => {
        settled()
        reject(err)
      }
      const onAbort = (): void => fail(signal.reason as Error)
      // A round trip before both ends exist, so an abort mid-open leaves nothing on either side.
      const cancel = this.#after(2 * this.#link.latencyMs, () => {
        const remote = this.#link.network.lookup(peer.pk)
        if (!(remote instanceof MemoryTransport)) {
          fail(
            new MeshError('MESH_ERR_PEER_UNREACHABLE', 'no memory endpoint holds this key', {
              details: { mesh: peer.mesh },
            }),
          )
          return
        }
        const local = this.#hold(new MemorySession(peer, this.#link, (s) => this.#sessions.delete(s)))
        const accepted = remote.#hold(
          new MemorySession(this.self, remote.#link, (s) => remote.#sessions.delete(s)),
        )
        MemorySession.pair(local, accepted)
        settled()
        resolve(local)
        for (const listener of remote.#listeners) listener(accepted)
      })
      this.#pendingOpens.add(fail)
      signal.addEventListener('abort', onAbort, { once: true })
    })
  }

  onSession(listener: (session: TransportSession) => void): void {
    this.#listeners.push(listener)
  }

  /** Fails pending opens, closes every session cleanly and leaves the network. Idempotent. */
  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true
      this.#link.network.unregister(this.self.pk, this)
      for (const fail of [...this.#pendingOpens]) fail(closedError('the memory transport closed'))
    }
    await Promise.all([...this.#sessions].map((session) => session.close('transport closed')))
  }

  #hold(session: MemorySession): MemorySession {
    this.#sessions.add(session)
    return session
  }

  /** A timer the network counts while it is pending. 0 ms means the next macrotask, not the clock. */
  #after(ms: number, fn: () => void): () => void {
    const network = this.#link.network
    let pending = true
    const done = (): void => {
      if (!pending) return
      pending = false
      network.track('timer', -1)
    }
    network.track('timer', 1)
    const run = (): void => {
      if (!pending) return
      done()
      fn()
    }
    if (ms > 0) {
      const timer = this.#clock.setTimeout(run, ms)
      return () => {
        timer.cancel()
        done()
      }
    }
    const handle = globalThis.setTimeout(run, 0)
    return () => {
      globalThis.clearTimeout(handle)
      done()
    }
  }
}

function closedError(message: string): MeshError {
  return new MeshError('MESH_ERR_TRANSPORT_CLOSED', message)
}
