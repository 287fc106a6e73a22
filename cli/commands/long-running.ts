/**
 * The one way a long-running command (`listen`, `daemon up`, and every later one that follows a stream)
 * rides out outages, so none of them needs a supervisor:
 *
 * - it holds the process open for the command's whole life with a ref'd handle: the runtime's timers are
 *   unref'd (protocol/clock.ts), so while the coordinator is down nothing else would keep Node running;
 * - it tells the user about outages on stderr, once when one begins and at most every `repeatMs` while
 *   it lasts (`agentmesh: coordinator unreachable, retrying in 2.1 s`), and `agentmesh: reconnected`
 *   when it ends;
 * - it ends the command on SIGINT or SIGTERM (exit 0 after a clean close), or on a stop that retrying
 *   cannot fix (revoked, kicked, replaced, not a member, mesh gone, unsupported version), which the
 *   command rethrows from `finish()` and `exitCodeOf` maps to its exit code.
 */
import type { ReconnectPolicy, RetryInfo } from '../../peer-runtime/connection.js'
import type { Peer } from '../../peer-runtime/peer.js'
import { MeshError } from '../../protocol/errors.js'
import { connectionStopped } from './exit-codes.js'

/** Least time between two "unreachable" lines of one outage. */
export const REPEAT_MS = 10_000

export interface LongRunningInit {
  /** Writes one line for people on stderr (`agentmesh: …`). */
  note: (text: string) => void
  /** Least time between two lines about one outage. Default `REPEAT_MS`. */
  repeatMs?: number
  /** Wall time for the throttle (tests pin it). Default `Date.now`. */
  now?: () => number
}

interface Outage {
  /** When the last line about it was written. */
  saidAt: number
}

/** See the module comment. One per command run; `dispose()` it in a `finally`. */
export class LongRunning {
  readonly #init: LongRunningInit
  readonly #abort = new AbortController()
  readonly #hold: ReturnType<typeof setInterval>
  readonly #signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM']
  readonly #onSignal = (): void => {
    this.#interrupted = true
    this.#abort.abort(new MeshError('MESH_ERR_SHUTTING_DOWN', 'stopped by a signal'))
  }
  readonly #outages = new Map<string, Outage>()
  #interrupted = false
  #failure: MeshError | undefined
  #disposed = false

  constructor(init: LongRunningInit) {
    this.#init = init
    // Ref'd on purpose, for the command's life (see the module comment).
    this.#hold = setInterval(() => undefined, 1 << 30)
    // Once each: a second signal while closing falls to Node's default and ends the process at once.
    for (const s of this.#signals) process.once(s, this.#onSignal)
  }

  /** Aborts when the command should end: a signal, or a stop that retrying cannot fix. */
  get signal(): AbortSignal {
    return this.#abort.signal
  }

  /** True once SIGINT or SIGTERM came. */
  get interrupted(): boolean {
    return this.#interrupted
  }

  /** The reconnect policy to hand the runtime: forever (its default), each wait reported here. */
  reconnect(label = ''): Partial<ReconnectPolicy> {
    return { onRetry: (info) => this.retrying(info, label) }
  }

  /** Reports `peer`'s outages under `label` ("mesh team: ") and ends the command if it stops for good. */
  watch(peer: Peer, label = ''): void {
    peer.on('connected', () => this.reconnected(label))
    peer.on('stopped', (err) => {
      if (err !== undefined) this.fail(err)
    })
  }

  /** A wait before the next dial: says so when an outage begins, then at most every `repeatMs`. */
  retrying(info: Pick<RetryInfo, 'delayMs'>, label = '', what = 'coordinator'): void {
    if (this.#abort.signal.aborted) return
    const now = (this.#init.now ?? Date.now)()
    const outage = this.#outages.get(label)
    if (outage !== undefined && now - outage.saidAt < (this.#init.repeatMs ?? REPEAT_MS)) return
    this.#outages.set(label, { saidAt: now })
    this.#init.note(`${label}${what} unreachable, retrying in ${(info.delayMs / 1000).toFixed(1)} s`)
  }

  /** A connection is back: says so when an outage had been reported (and then returns true). */
  reconnected(label = ''): boolean {
    if (!this.#outages.delete(label) || this.#abort.signal.aborted) return false
    this.#init.note(`${label}reconnected`)
    return true
  }

  /** Ends the command with `err` (what stopped the connection): `finish()` rethrows it. */
  fail(err: MeshError): void {
    if (this.#abort.signal.aborted) return
    this.#failure = connectionStopped(err)
    this.#abort.abort(err)
  }

  /** Resolves once `signal` aborted. */
  async wait(): Promise<void> {
    if (this.#abort.signal.aborted) return
    await new Promise<void>((resolve) => this.#abort.signal.addEventListener('abort', () => resolve()))
  }

  /** After the command closed what it held: 0, or throws the stop that ended it. */
  finish(): number {
    this.dispose()
    if (this.#failure !== undefined) throw this.#failure
    return 0
  }

  /** Releases the handle and the signal listeners. Idempotent. */
  dispose(): void {
    if (this.#disposed) return
    this.#disposed = true
    clearInterval(this.#hold)
    for (const s of this.#signals) process.removeListener(s, this.#onSignal)
  }
}
