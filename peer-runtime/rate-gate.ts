/**
 * The runtime's rate gate (issue 21): one token bucket per coordinator and member, which every relay
 * `send` frame passes before it goes on the wire, so a backlog is paced under the member's bucket on
 * the coordinator instead of probing it row by row.
 *
 * - Paced from what the coordinator announced in `hello_ack.limits.rate.member`, with a safety margin:
 *   `RATE_MARGIN` of the steady rates, and a burst short of the announced one by a tenth or by
 *   `RATE_JITTER_MS` of the steady rate (whichever is more), so sends the coordinator gets to late and
 *   then all at once still find its bucket holding tokens. A gate
 *   without announced limits (an older coordinator) lets everything through, as before.
 * - First come, first served: a send waits behind those that came before it.
 * - When a refusal comes anyway (another process of the member spends the same bucket), `pause` stops
 *   the gate for everyone for the refusal's `retryAfterMs` and empties it, instead of each row waiting
 *   out its own.
 * - `acquireRateGate` keeps one gate per (coordinator URL, mesh, member key) in the process: the
 *   daemon's presences of one member share the member's bucket on the coordinator, so they share the
 *   gate too. It is forgotten when its last user releases it.
 *
 * Platform neutral; every wait is on the injected clock.
 */
import { systemClock, type Clock, type ClockTimer } from '../protocol/clock.js'
import { MeshError } from '../protocol/errors.js'
import type { RateBucket } from '../protocol/frames.js'

/** The share of the announced steady rates the gate paces at. */
export const RATE_MARGIN = 0.97

/** What a gate has done since it was made (shared by every user of a shared gate). */
export interface RateGateStats {
  /** Sends let through. */
  passed: number
  /** Of those, how many had to wait (for tokens or a pause). */
  waited: number
  /** Clock time spent waiting, summed over the sends that waited. */
  waitedMs: number
  /** `pause` calls (refusals that came anyway). */
  pauses: number
  /** Sends waiting now. */
  queued: number
}

/** The pace a gate keeps: the announced bucket less the margin. */
export interface RatePace {
  messageBurst: number
  messagesPerSecond: number
  byteBurst: number
  bytesPerSecond: number
}

interface Waiter {
  bytes: number
  since: number
  resolve: () => void
  reject: (err: unknown) => void
  signal: AbortSignal | undefined
  onAbort: () => void
}

/**
 * How much of the coordinator's bucket the gate never counts on, in time: its sends are checked when the
 * coordinator gets to them, which can be this much later for some than for others (event loops, store
 * lookups before the limiter), and a bunch arriving together must still find tokens.
 */
export const RATE_JITTER_MS = 100

/**
 * The pace for an announced bucket: `margin` of its rates, and a burst short of the announced one by a
 * tenth or by `RATE_JITTER_MS` of the steady rate, whichever is more (always leaving at least 1).
 */
export function paceFor(bucket: RateBucket, margin = RATE_MARGIN): RatePace {
  const short = (burst: number, perSecond: number): number => {
    const reserve = Math.max(1, Math.ceil(burst / 10), Math.ceil((perSecond * RATE_JITTER_MS) / 1000))
    return Math.max(1, burst - reserve)
  }
  return {
    messageBurst: short(bucket.messageBurst, bucket.messagesPerSecond),
    messagesPerSecond: bucket.messagesPerSecond * margin,
    byteBurst: short(bucket.byteBurst, bucket.bytesPerSecond),
    bytesPerSecond: bucket.bytesPerSecond * margin,
  }
}

/** See the module comment. */
export class RateGate {
  readonly #clock: Clock
  readonly #margin: number
  #pace: RatePace | undefined
  #messages = 0
  #bytes = 0
  /** When the buckets were last refilled; in the future during a pause (nothing refills until then). */
  #at: number
  #pausedUntil = 0
  readonly #queue: Waiter[] = []
  #timer: ClockTimer | undefined
  #timerAt: number | undefined
  readonly #stats: Omit<RateGateStats, 'queued'> = { passed: 0, waited: 0, waitedMs: 0, pauses: 0 }

  constructor(o: { clock?: Clock; margin?: number } = {}) {
    this.#clock = o.clock ?? systemClock
    this.#margin = o.margin ?? RATE_MARGIN
    this.#at = this.#clock.now()
  }

  /** The pace in force, or undefined while nothing was announced. */
  get pace(): RatePace | undefined {
    return this.#pace
  }

  get stats(): RateGateStats {
    return { ...this.#stats, queued: this.#queue.length }
  }

  /**
   * Takes the pace from a `hello_ack` (every hello: limits may change); undefined lets sends through
   * unpaced. The first announcement starts with a full (margined) burst; later ones keep what is left.
   */
  configure(bucket: RateBucket | undefined): void {
    this.#refill(this.#clock.now())
    const first = this.#pace === undefined
    this.#pace = bucket === undefined ? undefined : paceFor(bucket, this.#margin)
    if (this.#pace !== undefined) {
      this.#messages = first ? this.#pace.messageBurst : Math.min(this.#messages, this.#pace.messageBurst)
      this.#bytes = first ? this.#pace.byteBurst : Math.min(this.#bytes, this.#pace.byteBurst)
    }
    this.#pump()
  }

  /**
   * Resolves when a send of `bytes` may go on the wire, having taken one message and `bytes` (at most
   * the byte burst) from the buckets. Rejects with the signal's reason when it aborts first.
   */
  take(bytes: number, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted === true) return Promise.reject(signal.reason as Error)
    const now = this.#clock.now()
    if (this.#queue.length === 0 && this.#tryTake(bytes, now)) {
      this.#stats.passed++
      return Promise.resolve()
    }
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        bytes,
        since: now,
        resolve,
        reject,
        signal,
        onAbort: () => {
          const i = this.#queue.indexOf(waiter)
          if (i < 0) return
          this.#queue.splice(i, 1)
          reject(signal?.reason as Error)
          if (i === 0) this.#pump()
        },
      }
      this.#queue.push(waiter)
      signal?.addEventListener('abort', waiter.onAbort, { once: true })
      if (this.#queue.length === 1) this.#pump()
    })
  }

  /**
   * The coordinator refused a send with `MESH_ERR_RATE_LIMITED {retryAfterMs}`: nobody passes for
   * `ms`, and the message bucket starts empty after it (the coordinator's has about one message then).
   */
  pause(ms: number): void {
    const now = this.#clock.now()
    this.#stats.pauses++
    this.#refill(now)
    this.#pausedUntil = Math.max(this.#pausedUntil, now + Math.max(0, ms))
    this.#messages = Math.min(this.#messages, 0)
    this.#at = Math.max(this.#at, this.#pausedUntil)
    this.#pump()
  }

  /** Rejects every waiting send with `err` and cancels the timer (the last user closed). */
  close(err: Error): void {
    this.#disarm()
    for (const waiter of this.#queue.splice(0)) {
      waiter.signal?.removeEventListener('abort', waiter.onAbort)
      waiter.reject(err)
    }
  }

  #refill(now: number): void {
    if (now <= this.#at) return
    const pace = this.#pace
    if (pace !== undefined) {
      const seconds = (now - this.#at) / 1000
      this.#messages = Math.min(pace.messageBurst, this.#messages + seconds * pace.messagesPerSecond)
      this.#bytes = Math.min(pace.byteBurst, this.#bytes + seconds * pace.bytesPerSecond)
    }
    this.#at = now
  }

  /** Takes from the buckets if they hold enough now; false leaves them as they were. */
  #tryTake(bytes: number, now: number): boolean {
    if (now < this.#pausedUntil) return false
    const pace = this.#pace
    if (pace === undefined) return true
    this.#refill(now)
    const needBytes = Math.min(bytes, pace.byteBurst)
    if (this.#messages < 1 || this.#bytes < needBytes) return false
    this.#messages -= 1
    this.#bytes -= bytes // a message larger than the burst leaves the bucket in debt, as the coordinator's
    return true
  }

  /** How long until the head of the queue can pass (0: now). */
  #waitFor(bytes: number, now: number): number {
    if (now < this.#pausedUntil) return this.#pausedUntil - now
    const pace = this.#pace
    if (pace === undefined) return 0
    const base = Math.max(0, this.#at - now)
    const needMessages = 1 - this.#messages
    const needBytes = Math.min(bytes, pace.byteBurst) - this.#bytes
    return (
      base +
      Math.max(
        needMessages > 0 ? (needMessages / pace.messagesPerSecond) * 1000 : 0,
        needBytes > 0 ? (needBytes / pace.bytesPerSecond) * 1000 : 0,
      )
    )
  }

  /** Lets through what can pass now, in order, then sleeps until the head can. */
  #pump(): void {
    const now = this.#clock.now()
    while (this.#queue.length > 0) {
      const head = this.#queue[0]!
      if (!this.#tryTake(head.bytes, now)) {
        this.#arm(now + Math.max(1, Math.ceil(this.#waitFor(head.bytes, now))))
        return
      }
      this.#queue.shift()
      head.signal?.removeEventListener('abort', head.onAbort)
      this.#stats.passed++
      this.#stats.waited++
      this.#stats.waitedMs += now - head.since
      head.resolve()
    }
    this.#disarm()
  }

  #arm(at: number): void {
    if (this.#timer !== undefined && this.#timerAt === at) return
    this.#disarm()
    this.#timerAt = at
    this.#timer = this.#clock.setTimeout(
      () => {
        this.#timer = undefined
        this.#timerAt = undefined
        this.#pump()
      },
      Math.max(0, at - this.#clock.now()),
    )
  }

  #disarm(): void {
    this.#timer?.cancel()
    this.#timer = undefined
    this.#timerAt = undefined
  }
}

/** A user's hold on a shared gate; `release()` once, when the user closes. */
export interface RateGateLease {
  readonly gate: RateGate
  release(): void
}

const shared = new Map<string, { gate: RateGate; users: number }>()

/**
 * The process's gate for one member on one coordinator (`url`, `mesh`, member key in hex), made on
 * first use with `clock`; forgotten, and its waiting sends rejected, when the last user releases it.
 */
export function acquireRateGate(
  key: { url: string; mesh: string; memberHex: string },
  o: { clock?: Clock } = {},
): RateGateLease {
  const id = `${key.url}\n${key.mesh}\n${key.memberHex}`
  let entry = shared.get(id)
  if (entry === undefined) {
    entry = { gate: new RateGate(o), users: 0 }
    shared.set(id, entry)
  }
  entry.users++
  const held = entry
  let released = false
  return {
    gate: held.gate,
    release: () => {
      if (released) return
      released = true
      if (--held.users > 0) return
      if (shared.get(id) === held) shared.delete(id)
      held.gate.close(new MeshError('MESH_ERR_TRANSPORT_CLOSED', 'the peer is closed'))
    },
  }
}

/** Gates held in this process now (tests check that closing peers releases them). */
export function sharedRateGates(): number {
  return shared.size
}
