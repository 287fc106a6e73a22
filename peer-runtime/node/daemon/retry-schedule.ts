/**
 * When the daemon tries again to open what failed at start (a mesh whose config or store would not open,
 * a registration whose key or store would not): exponential from `baseMs`, doubling to `capMs`, with
 * jitter in the upper half so many failing registrations do not retry in lockstep. Timers come from the
 * injected clock.
 */
import type { Clock, ClockTimer } from '../../../protocol/clock.js'

/** Timings of the background retries (tests shorten them). */
export interface RetryTimings {
  /** The first delay. Default 1 s. */
  baseMs: number
  /** The largest delay. Default 60 s. */
  capMs: number
}

export const DEFAULT_RETRY_TIMINGS: RetryTimings = { baseMs: 1_000, capMs: 60_000 }

/** One thing being retried: how often it failed, why last, and when it runs next. */
export class RetrySchedule {
  readonly #clock: Clock
  readonly #timings: RetryTimings
  readonly #random: () => number
  #timer: ClockTimer | undefined
  attempts = 0
  lastError: unknown
  /**
   * Unix ms of the next try, while one is scheduled or running (then it is in the past: status says
   * `retrying in 0.0 s`, not that nothing is planned); cleared by `cancel()`.
   */
  retryAt: number | undefined

  constructor(clock: Clock, timings: Partial<RetryTimings> = {}, random: () => number = Math.random) {
    this.#clock = clock
    this.#timings = { ...DEFAULT_RETRY_TIMINGS, ...timings }
    this.#random = random
  }

  /** Records a failure and runs `fn` after the next delay (replacing a try already scheduled). */
  failed(error: unknown, fn: () => void): number {
    this.cancel()
    this.lastError = error
    const ceiling = Math.min(this.#timings.capMs, this.#timings.baseMs * 2 ** Math.min(this.attempts, 30))
    this.attempts++
    const delay = Math.floor(ceiling / 2 + (this.#random() * ceiling) / 2)
    this.retryAt = this.#clock.now() + delay
    this.#timer = this.#clock.setTimeout(() => {
      this.#timer = undefined
      fn()
    }, delay)
    return delay
  }

  /** Drops the scheduled try, if any. */
  cancel(): void {
    this.#timer?.cancel()
    this.#timer = undefined
    this.retryAt = undefined
  }
}
