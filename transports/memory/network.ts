/**
 * The in-process "network" memory transports meet on: endpoints register under the hex of their key,
 * and the network counts what is live (endpoints, sessions, timers) so tests can prove teardown left
 * nothing behind.
 */
import { toHex } from '../../protocol/encoding.js'

/** What the network needs of an endpoint to hand it a session (implemented by `MemoryTransport`). */
export interface MemoryEndpoint {
  /** False once the endpoint's transport closed. */
  readonly accepting: boolean
}

/** Endpoints by key. One `MemoryNetwork` per test (or per simulated world); pass it to `memoryTransport`. */
export class MemoryNetwork {
  #endpoints = new Map<string, MemoryEndpoint>()
  #sessions = 0
  #timers = 0

  /** Registers `endpoint` under `pk`; a key is held by one endpoint at a time. */
  register(pk: Uint8Array, endpoint: MemoryEndpoint): void {
    const key = toHex(pk)
    if (this.#endpoints.has(key))
      throw new Error(`memory network: key ${key.slice(0, 16)}… is already in use`)
    this.#endpoints.set(key, endpoint)
  }

  /** Removes `endpoint` (only if it still holds `pk`). */
  unregister(pk: Uint8Array, endpoint: MemoryEndpoint): void {
    const key = toHex(pk)
    if (this.#endpoints.get(key) === endpoint) this.#endpoints.delete(key)
  }

  /** The endpoint holding `pk`, if one does and still accepts sessions. */
  lookup(pk: Uint8Array): MemoryEndpoint | undefined {
    const endpoint = this.#endpoints.get(toHex(pk))
    return endpoint?.accepting === true ? endpoint : undefined
  }

  /** Endpoints, open sessions and pending timers on this network: 0 after a clean teardown. */
  get handles(): number {
    return this.#endpoints.size + this.#sessions + this.#timers
  }

  /** @internal Bookkeeping for `handles`, called by sessions and transports. */
  track(kind: 'session' | 'timer', delta: 1 | -1): void {
    if (kind === 'session') this.#sessions += delta
    else this.#timers += delta
  }
}
