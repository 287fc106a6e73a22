/**
 * A tiny typed event emitter for sessions and a `waitFor` to await one event. Platform-neutral (no
 * node:events), so browser adapters share it.
 */
import type { TypedEmitter } from './types.js'

type Listener = (...args: never[]) => void
type EventMap<E> = { [K in keyof E]: (...args: never[]) => void }

/** Holds listeners per event and calls them in order; a listener that throws does not stop the rest. */
export class Emitter<E extends EventMap<E>> implements TypedEmitter<E> {
  #listeners = new Map<keyof E, { fn: Listener; once: boolean }[]>()

  on<K extends keyof E>(event: K, listener: E[K]): this {
    this.#add(event, listener, false)
    return this
  }

  once<K extends keyof E>(event: K, listener: E[K]): this {
    this.#add(event, listener, true)
    return this
  }

  off<K extends keyof E>(event: K, listener: E[K]): this {
    const list = this.#listeners.get(event)
    const at = list?.findIndex((entry) => entry.fn === listener) ?? -1
    if (list !== undefined && at >= 0) list.splice(at, 1)
    return this
  }

  /** How many listeners `event` has. */
  listenerCount(event: keyof E): number {
    return this.#listeners.get(event)?.length ?? 0
  }

  /**
   * Calls each listener of `event` with `args`. A throwing listener is reported as an uncaught error on a
   * microtask rather than thrown here, so one bad listener cannot cut a delivery loop short.
   */
  emit<K extends keyof E>(event: K, ...args: Parameters<E[K]>): void {
    const list = this.#listeners.get(event)
    if (list === undefined || list.length === 0) return
    for (const entry of [...list]) {
      if (entry.once) this.off(event, entry.fn as E[K])
      try {
        ;(entry.fn as (...a: Parameters<E[K]>) => void)(...args)
      } catch (err) {
        queueMicrotask(() => {
          throw err
        })
      }
    }
  }

  /** Drops every listener (after a session closed for good). */
  removeAllListeners(): void {
    this.#listeners.clear()
  }

  #add(event: keyof E, fn: Listener, once: boolean): void {
    const list = this.#listeners.get(event)
    if (list === undefined) this.#listeners.set(event, [{ fn, once }])
    else list.push({ fn, once })
  }
}

/** Options of `waitFor`. */
export interface WaitForOptions<A extends unknown[]> {
  /** Required: an aborted wait rejects with the signal's reason and removes its listener. */
  signal: AbortSignal
  /** Resolve only on an event whose arguments pass this test. */
  filter?: (...args: A) => boolean
}

/**
 * Resolves with the arguments of the next `event` from `emitter` (that passes `filter`); rejects with
 * `signal.reason` when the signal aborts first. Use it instead of sleeping: `await waitFor(session,
 * 'drain', { signal: AbortSignal.timeout(5_000) })`.
 */
export function waitFor<E extends EventMap<E>, K extends keyof E>(
  emitter: TypedEmitter<E>,
  event: K,
  { signal, filter }: WaitForOptions<Parameters<E[K]>>,
): Promise<Parameters<E[K]>> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(signal.reason as Error)
      return
    }
    const onAbort = (): void => {
      emitter.off(event, listener)
      reject(signal.reason as Error)
    }
    const listener = ((...args: Parameters<E[K]>): void => {
      if (filter !== undefined && !filter(...args)) return
      emitter.off(event, listener)
      signal.removeEventListener('abort', onAbort)
      resolve(args)
    }) as unknown as E[K]
    emitter.on(event, listener)
    signal.addEventListener('abort', onAbort, { once: true })
  })
}
