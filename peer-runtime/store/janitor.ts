/**
 * The store's janitor: every hour it deletes what the runtime no longer needs, so a daemon's store
 * does not grow forever.
 *
 * - outbox rows that are `done`, `aborted` or `dead`, 7 days after their last change (an idempotent
 *   IPC repeat of the id, `message_status` and the dead-letter listing keep working for that week);
 * - inbox rows received more than 7 days ago: the dedupe memory DESIGN.md §5 asks for is at least 7
 *   days, the coordinator's queue TTL (a copy still queued there is older than that and gone too);
 * - rpc answers past their `expiresAt`.
 *
 * Each kind is deleted in chunks of at most 1,000 rows, one statement each, with a turn of the event
 * loop between chunks: better-sqlite3 is synchronous, and one statement deleting a million rows would
 * hold the thread (and the database's write lock) for seconds. Platform neutral; the clock is injected.
 */
import type { Clock, ClockTimer } from '../../protocol/clock.js'
import type { RuntimeStore } from './types.js'

const HOUR_MS = 3_600_000
const DAY_MS = 24 * HOUR_MS

/** Options of `StoreJanitor`. */
export interface StoreJanitorOptions {
  store: RuntimeStore
  clock: Clock
  /** Between two passes (default 1 h). */
  intervalMs?: number
  /** Before the first pass (default 1 min: not during start, but soon, for a runtime restarted often). */
  firstPassMs?: number
  /** Rows per statement (default 1,000). */
  chunk?: number
  /** How long finished outbox rows are kept after their last change (default 7 days). */
  outboxRetentionMs?: number
  /** How long inbox rows are kept after they arrived (default 7 days; less is refused). */
  inboxRetentionMs?: number
  /** A pass that failed (the next one still runs). */
  onError?: (err: unknown) => void
}

/** What one pass deleted. */
export interface PruneCounts {
  outbox: number
  inbox: number
  rpcAnswers: number
}

/** The shortest inbox retention allowed: the dedupe memory DESIGN.md §5 promises. */
export const MIN_INBOX_RETENTION_MS = 7 * DAY_MS

// A macrotask turn between chunks, so I/O waiting behind a synchronous driver gets in. Not a timing:
// it is not taken from the clock (a ManualClock would never fire it).
const turn = (): Promise<void> => new Promise((resolve) => globalThis.setTimeout(resolve, 0))

/** Runs the store's pruning every `intervalMs` between `start()` and `stop()`. */
export class StoreJanitor {
  readonly #o: Required<Omit<StoreJanitorOptions, 'onError'>> & Pick<StoreJanitorOptions, 'onError'>
  #timer: ClockTimer | undefined
  #running: Promise<unknown> | undefined
  #stopped = true
  /** Set by `stop()`: a pass in progress ends at its next chunk. */
  #halted = false

  constructor(o: StoreJanitorOptions) {
    const inboxRetentionMs = o.inboxRetentionMs ?? MIN_INBOX_RETENTION_MS
    if (inboxRetentionMs < MIN_INBOX_RETENTION_MS) {
      throw new RangeError(`inboxRetentionMs is at least ${MIN_INBOX_RETENTION_MS} (7 days of dedupe)`)
    }
    const chunk = o.chunk ?? 1_000
    if (!Number.isSafeInteger(chunk) || chunk < 1) throw new RangeError('chunk is a positive integer')
    this.#o = {
      store: o.store,
      clock: o.clock,
      intervalMs: o.intervalMs ?? HOUR_MS,
      firstPassMs: o.firstPassMs ?? 60_000,
      chunk,
      outboxRetentionMs: o.outboxRetentionMs ?? 7 * DAY_MS,
      inboxRetentionMs,
      ...(o.onError !== undefined && { onError: o.onError }),
    }
  }

  /** Schedules the passes (the first after `firstPassMs`). Idempotent. */
  start(): void {
    if (!this.#stopped) return
    this.#stopped = false
    this.#halted = false
    this.#schedule(this.#o.firstPassMs)
  }

  /** Cancels the next pass and waits for a running one to end (it stops at its next chunk). */
  async stop(): Promise<void> {
    this.#stopped = true
    this.#halted = true
    this.#timer?.cancel()
    this.#timer = undefined
    await this.#running
  }

  /**
   * One pass now: every kind, chunk by chunk, until a chunk comes back short. Resolves with what it
   * deleted. Used by the timer; callable directly (an operator's `prune`, tests).
   */
  async pruneOnce(): Promise<PruneCounts> {
    const now = this.#o.clock.now()
    const counts: PruneCounts = { outbox: 0, inbox: 0, rpcAnswers: 0 }
    const { store, outboxRetentionMs, inboxRetentionMs } = this.#o
    counts.outbox = await this.#chunked((limit) => store.pruneOutbox(now - outboxRetentionMs, limit))
    counts.inbox = await this.#chunked((limit) => store.pruneInbox(now - inboxRetentionMs, limit))
    counts.rpcAnswers = await this.#chunked((limit) => store.pruneRpcAnswers(now, limit))
    return counts
  }

  async #chunked(prune: (limit: number) => Promise<number>): Promise<number> {
    let total = 0
    for (;;) {
      const deleted = await prune(this.#o.chunk)
      total += deleted
      if (deleted < this.#o.chunk) return total
      await turn()
      // `stop()` came between chunks: the rest waits for the next pass.
      if (this.#halted) return total
    }
  }

  #schedule(ms: number): void {
    this.#timer = this.#o.clock.setTimeout(() => {
      this.#timer = undefined
      const run = this.pruneOnce().then(
        () => undefined,
        (err: unknown) => this.#o.onError?.(err),
      )
      this.#running = run
      void run.finally(() => {
        if (this.#running === run) this.#running = undefined
        if (!this.#stopped) this.#schedule(this.#o.intervalMs)
      })
    }, ms)
  }
}
