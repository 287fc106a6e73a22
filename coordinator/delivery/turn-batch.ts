/**
 * The requests of one event-loop turn, run together: the store statement per request was the cost
 * (dedupe lookups, deletes of acked rows, receipt outcomes), one statement per turn is not. `add` files a
 * request under its key (requests with one key share an entry); after the turn (`setImmediate`) `run`
 * gets the entries in chunks of at most `maxPerRun` and settles their waiters. A chunk whose `run` throws
 * rejects every waiter of it that `run` did not settle.
 */

/** One caller waiting for its entry's result. */
export interface Waiter<R> {
  resolve: (value: R) => void
  reject: (err: unknown) => void
}

/** What an entry must hold: the callers waiting for it. */
export interface Entry<R> {
  waiters: Waiter<R>[]
}

export class TurnBatch<E extends Entry<R>, R> {
  readonly #maxPerRun: number
  readonly #run: (chunk: E[]) => Promise<void>
  #wanted = new Map<string, E>()
  #scheduled = false

  constructor(maxPerRun: number, run: (chunk: E[]) => Promise<void>) {
    this.#maxPerRun = maxPerRun
    this.#run = run
  }

  /** Files a request under `key` (`make` builds its entry when it is the first; `join` adds to it). */
  add(key: string, make: () => E, join?: (entry: E) => void): Promise<R> {
    return new Promise((resolve, reject) => {
      let entry = this.#wanted.get(key)
      if (entry === undefined) this.#wanted.set(key, (entry = make()))
      join?.(entry)
      entry.waiters.push({ resolve, reject })
      if (!this.#scheduled) {
        this.#scheduled = true
        setImmediate(() => void this.#flush())
      }
    })
  }

  async #flush(): Promise<void> {
    this.#scheduled = false
    const batch = [...this.#wanted.values()]
    this.#wanted = new Map()
    for (let i = 0; i < batch.length; i += this.#maxPerRun) {
      const chunk = batch.slice(i, i + this.#maxPerRun)
      try {
        await this.#run(chunk)
      } catch (err) {
        for (const entry of chunk) for (const w of entry.waiters) w.reject(err)
      }
    }
  }
}
