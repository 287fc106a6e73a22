/**
 * The clock seam. Every timestamp and every timer in the coordinator and the runtimes comes from a
 * `Clock`, so tests drive leases, claims and expiries by advancing a `ManualClock` instead of sleeping.
 */

/** A timer handle returned by `Clock.setTimeout`. */
export interface ClockTimer {
  /** Stops the timer; calling it again, or after the timer fired, does nothing. */
  cancel(): void
}

/** Wall time in milliseconds since the epoch, and timers on that time. */
export interface Clock {
  now(): number
  /** Runs `fn` once after `ms`. The timer never keeps a process alive on its own. */
  setTimeout(fn: () => void, ms: number): ClockTimer
}

/** The real clock: `Date.now()` and unref'd timers. */
export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout(fn, ms) {
    const handle = setTimeout(fn, ms)
    // Browsers return a number; Node a Timeout that would hold the event loop open.
    if (typeof handle === 'object' && handle !== null && 'unref' in handle) handle.unref()
    return { cancel: () => clearTimeout(handle) }
  },
}

// A macrotask turn (setTimeout exists in browsers and Node alike), so pending I/O callbacks run too.
const tick = (): Promise<void> => new Promise((resolve) => globalThis.setTimeout(resolve, 0))

interface PendingTimer {
  at: number
  seq: number
  fn: () => void
  cancelled: boolean
}

/**
 * A clock that moves only when told. `advance(ms)` runs every timer that falls due, in time order (ties in
 * the order they were set), with `now()` reading each timer's due time while it runs.
 */
export class ManualClock implements Clock {
  #now: number
  #seq = 0
  #timers: PendingTimer[] = []

  constructor(start = Date.UTC(2026, 0, 1)) {
    this.#now = start
  }

  now(): number {
    return this.#now
  }

  setTimeout(fn: () => void, ms: number): ClockTimer {
    const timer: PendingTimer = { at: this.#now + Math.max(0, ms), seq: this.#seq++, fn, cancelled: false }
    this.#timers.push(timer)
    return {
      cancel: () => {
        timer.cancelled = true
      },
    }
  }

  /** How many timers are waiting. */
  get pending(): number {
    return this.#timers.filter((t) => !t.cancelled).length
  }

  /**
   * Moves time forward by `ms`, firing due timers. Between timers it yields to the event loop so that
   * promise chains a timer starts (store writes, socket sends) settle before the next one fires.
   */
  async advance(ms: number): Promise<void> {
    const until = this.#now + ms
    for (;;) {
      await tick()
      const next = this.#nextDue(until)
      if (next === undefined) break
      this.#timers.splice(this.#timers.indexOf(next), 1)
      this.#now = Math.max(this.#now, next.at)
      next.fn()
    }
    this.#now = until
    await tick()
  }

  #nextDue(until: number): PendingTimer | undefined {
    this.#timers = this.#timers.filter((t) => !t.cancelled)
    let best: PendingTimer | undefined
    for (const t of this.#timers) {
      if (t.at > until) continue
      if (best === undefined || t.at < best.at || (t.at === best.at && t.seq < best.seq)) best = t
    }
    return best
  }
}
