/**
 * The outbox scheduler (DESIGN.md §5): takes sealed envelopes that are already stored, hands due rows to
 * a `dispatch` function (the runtime's transport choice), and moves each row through
 * `pending → inflight → accepted → done | dead` by what dispatch answers.
 *
 * - Many rows are in flight at once (`concurrency`, default 256); due rows are claimed in batches with
 *   one store write per batch (`RuntimeStore.claimDue`), never one dispatch awaited before the next.
 * - An attempt counts only when the coordinator refused retryably (`retry`, `counted: true`); 25 of
 *   those and the row is `dead` (`MESH_ERR_TOO_MANY_ATTEMPTS`). Waits while disconnected or rate limited
 *   (`counted: false`) use no attempt and back off on their own doubling, so an outage of any length
 *   polls at most every 30 s and leaves no row dead by attempts. Age always applies: a row 6 days old is
 *   `dead` (`MESH_ERR_OUTBOX_EXPIRED`).
 * - Backoff is full jitter (a random delay below `min(cap, base · 2^(n-1))`); `retryAfterMs`, when the
 *   refusal gave one, is the delay instead.
 * - Every timer comes from the injected clock, so tests drive a six-day life with a `ManualClock`.
 * - Backpressure (DESIGN.md §5, CONVENTIONS 5): `depth` counts rows `pending` or `inflight` (and rows
 *   given to `enqueue` but not stored yet), kept as a counter from the transitions this outbox makes,
 *   never queried per call. Above `maxDepth` an `enqueue` is refused with `MESH_ERR_OUTBOX_FULL`; one
 *   with `waitForRoom` waits until the depth is below `highWaterMark`; `drain` is emitted when the depth
 *   falls below `lowWaterMark` after it reached the high-water mark.
 *
 * Platform-neutral. One Outbox per store: it assumes no other writer moves its rows.
 */
import { systemClock, type Clock, type ClockTimer } from '../protocol/clock.js'
import { isDirectChannel } from '../protocol/envelope.js'
import { MeshError, type MeshErrorCode } from '../protocol/errors.js'
import { Emitter } from '../transports/emitter.js'
import type {
  NewOutboxRow,
  OutboxPatch,
  OutboxRow,
  OutboxVia,
  RecipientState,
  RowError,
  RuntimeStore,
} from './store/types.js'

/**
 * What one dispatch of a row came to. `via` on `done` and `accepted` is the transport that answered
 * (`p2p` for a P2P ack, `relay` for the coordinator's `send_ack`), stored on the row as `OutboxRow.via`;
 * absent, the row keeps the one it had.
 */
export type DispatchResult =
  /** A receiver acked (a P2P ack, `send_ack{delivered}`). */
  | { kind: 'done'; recipients?: Record<string, RecipientState>; via?: OutboxVia }
  /** The coordinator answered `queued` (or partly queued): no more retransmission; receipts may follow. */
  | { kind: 'accepted'; recipients?: Record<string, RecipientState>; via?: OutboxVia }
  /**
   * Try again later. `counted: true` for a retryable coordinator refusal (counts toward `maxAttempts`);
   * `counted: false` while disconnected, or after `MESH_ERR_RATE_LIMITED` (waits without an attempt).
   */
  | { kind: 'retry'; error: RowError; counted: boolean; retryAfterMs?: number }
  /** A permanent refusal, or no valid target: give up now. */
  | { kind: 'dead'; error: RowError }

/** How `Outbox` is wired and tuned (DESIGN.md §6 gives the defaults). */
export interface OutboxInit {
  store: RuntimeStore
  clock?: Clock
  /**
   * Sends one row's envelope. It must settle promptly once `signal` aborts (on `stop()`); a dispatch
   * still running then is abandoned and its row goes back to `pending`. A throw counts as an uncounted
   * retry with `MESH_ERR_INTERNAL` in `lastError`.
   */
  dispatch: (row: OutboxRow, signal: AbortSignal) => Promise<DispatchResult>
  /** Rows in flight at once. Default 256. */
  concurrency?: number
  /** Counted attempts before a row is `dead`. Default 25. */
  maxAttempts?: number
  /** Age (from `createdAt`) at which an undelivered row is `dead`. Default 6 days. */
  maxAgeMs?: number
  /** The first backoff ceiling; it doubles per attempt. Default 500 ms. */
  backoffBaseMs?: number
  /** The largest backoff ceiling. Default 30 s. */
  backoffCapMs?: number
  /** Uniform in [0, 1); injected by tests. Default `Math.random`. */
  random?: () => number
  /** Depth at which `waitForRoom` enqueues wait and `drain` is armed. Default 1,000 (`OUTBOX_WATER`). */
  highWaterMark?: number
  /** Depth below which `drain` is emitted once the high-water mark was reached. Default half the high. */
  lowWaterMark?: number
  /** Depth at which an `enqueue` without `waitForRoom` is refused (`MESH_ERR_OUTBOX_FULL`). Default 10,000. */
  maxDepth?: number
  /**
   * The `retryAfterMs` an `MESH_ERR_OUTBOX_FULL` carries, given how many rows must leave before the
   * depth is back at the high-water mark (the runtime estimates it from the coordinator's announced
   * rate). Default 1 s.
   */
  retryAfterMs?: (excess: number) => number
}

/** How `enqueue` treats a full outbox. */
export interface EnqueueOptions {
  /** Wait until the depth is below the high-water mark instead of failing above `maxDepth`. */
  waitForRoom?: boolean
  /** Ends a `waitForRoom` wait (rejects with the signal's reason); a stored row is not undone. */
  signal?: AbortSignal
}

/**
 * Default water marks. 1,000 rows is about 10 s of sending at the coordinator's default member rate
 * (100/s) and four dispatch windows of 256: a caller that waits for room has that much queued ahead of
 * it, enough to keep the link busy and little enough to answer quickly. The low mark is half of it, so
 * `drain` wakes writers in batches rather than per row (as the relay session does). 10,000 matches the
 * coordinator's per-recipient queue quota: more than that would be minutes of sending at the default
 * rate, held in the sender's own store.
 */
export const OUTBOX_WATER = { highWaterMark: 1_000, maxDepth: 10_000 } as const

/** The events of an `Outbox`. */
export interface OutboxEvents {
  /** A row as it is after a change (stored, claimed, retried, accepted, done, dead, requeued). */
  state: (row: OutboxRow) => void
  /** A store write failed in the background (the row stays as the store last had it). */
  error: (err: Error) => void
  /** The depth fell below the low-water mark after it had reached the high-water mark. */
  drain: () => void
}

const DAY_MS = 86_400_000
/** Counted refusals that say the coordinator was going down or could not store yet (see `#retry`). */
const OUTAGE_CODES: ReadonlySet<string> = new Set<MeshErrorCode>([
  'MESH_ERR_SHUTTING_DOWN',
  'MESH_ERR_STORE_UNAVAILABLE',
  'MESH_ERR_INTERNAL',
])
const MAX_TIMER_MS = 3_600_000
const FINAL_STATES: ReadonlySet<RecipientState> = new Set<RecipientState>([
  'delivered',
  'undecryptable',
  'rejected',
  'dropped_revoked',
  'expired',
])

/** One row being dispatched. `row` follows receipts that arrive meanwhile. */
interface Flight {
  row: OutboxRow
  controller: AbortController
  /** `wake()`s before this dispatch began (see #retry). */
  wakes: number
}

const ABORTED = Symbol('aborted')

/** States that count toward `depth`. */
function live(state: OutboxRow['state'] | undefined): number {
  return state === 'pending' || state === 'inflight' ? 1 : 0
}

/** Schedules the outbox's rows onto `dispatch`. */
export class Outbox extends Emitter<OutboxEvents> {
  readonly #store: RuntimeStore
  readonly #clock: Clock
  readonly #dispatch: OutboxInit['dispatch']
  readonly #concurrency: number
  readonly #refillAt: number
  readonly #maxAttempts: number
  readonly #maxAgeMs: number
  readonly #baseMs: number
  readonly #capMs: number
  readonly #random: () => number
  readonly #highWater: number
  readonly #lowWater: number
  readonly #maxDepth: number
  readonly #fullRetryAfterMs: (excess: number) => number

  /** Rows pending or inflight, plus those `enqueue` holds a place for (see the module comment). */
  #depth = 0
  /** The depth reached the high-water mark since the last `drain`. */
  #aboveHigh = false
  /** `waitForRoom` enqueues, first come first served. */
  readonly #roomWaiters: { grant: () => void }[] = []
  #running = false
  readonly #flights = new Map<string, Flight>()
  /** Rows `enqueue` was given this turn, stored together by `#insertBatch`. */
  readonly #toInsert: {
    row: NewOutboxRow
    resolve: (row: OutboxRow) => void
    reject: (err: unknown) => void
  }[] = []
  #inserting = 0
  /** Rows in the batches being stored now (counted in `depth` already). */
  #insertingRows = 0
  /** The settling of every flight, so `stop()` can wait for rows to be written back. */
  readonly #settling = new Set<Promise<void>>()
  /** Uncounted retries in a row, per row: their own doubling. */
  readonly #uncounted = new Map<string, number>()
  /** Rows waiting after an uncounted retry without `retryAfterMs` (disconnected): `wake()` frees them. */
  readonly #waitingLink = new Set<string>()
  /** How many times `wake()` was called: a dispatch that fails for the link after one needs no wait. */
  #wakes = 0
  /** Per-row chains, so a receipt and a dispatch result never interleave their read-modify-writes. */
  readonly #locks = new Map<string, Promise<void>>()
  /** The loop's run, for `stop()` to wait on; `#pumpActive` says whether it is still going. */
  #pumping: Promise<void> | undefined
  #pumpActive = false
  #again = false
  #claiming = 0
  #timer: ClockTimer | undefined
  #timerAt: number | undefined
  /** Bumped whenever the outbox may have become idle; `idle()` waits for a change. */
  #version = 0
  readonly #versionWaiters = new Set<() => void>()

  constructor(init: OutboxInit) {
    super()
    this.#store = init.store
    this.#clock = init.clock ?? systemClock
    this.#dispatch = init.dispatch
    this.#concurrency = Math.max(1, init.concurrency ?? 256)
    this.#refillAt = Math.max(1, Math.floor(this.#concurrency / 8))
    this.#maxAttempts = Math.max(1, init.maxAttempts ?? 25)
    this.#maxAgeMs = init.maxAgeMs ?? 6 * DAY_MS
    this.#baseMs = init.backoffBaseMs ?? 500
    this.#capMs = init.backoffCapMs ?? 30_000
    this.#random = init.random ?? Math.random
    this.#maxDepth = Math.max(1, init.maxDepth ?? OUTBOX_WATER.maxDepth)
    this.#highWater = Math.min(this.#maxDepth, Math.max(1, init.highWaterMark ?? OUTBOX_WATER.highWaterMark))
    this.#lowWater = Math.min(
      this.#highWater,
      Math.max(1, init.lowWaterMark ?? Math.ceil(this.#highWater / 2)),
    )
    this.#fullRetryAfterMs = init.retryAfterMs ?? (() => 1_000)
  }

  /** Rows `pending` or `inflight` (waiting, due or being dispatched), and rows being stored now. */
  get depth(): number {
    return this.#depth
  }

  /** The water marks in force. */
  get water(): { highWaterMark: number; lowWaterMark: number; maxDepth: number } {
    return { highWaterMark: this.#highWater, lowWaterMark: this.#lowWater, maxDepth: this.#maxDepth }
  }

  /** How many rows are being dispatched now. */
  get inflight(): number {
    return this.#flights.size
  }

  /** Puts rows a previous run left `inflight` back to `pending`, then starts dispatching. */
  async start(): Promise<void> {
    if (this.#running) return
    await this.#store.recoverInflight(this.#clock.now())
    // Counted once: from here on the counter follows the transitions this outbox makes.
    const stored = await this.#store.listOutbox(['pending', 'inflight'], Number.MAX_SAFE_INTEGER)
    // Rows that a previous run left waiting out a backoff grown through an outage wait for the link, as
    // they did there: the first hello frees them (`wake`), instead of the backoff (up to 30 s) it stored.
    for (const row of stored) {
      const code = row.lastError?.code
      if (
        row.state === 'pending' &&
        code !== undefined &&
        (code === 'MESH_ERR_DISCONNECTED' || OUTAGE_CODES.has(code))
      )
        this.#waitingLink.add(row.id)
    }
    this.#depth = 0
    this.#add(stored.length + this.#toInsert.length + this.#insertingRows)
    this.#running = true
    this.#kick()
  }

  /**
   * Stores a new row (`pending`) and wakes the loop; resolves once the row is stored. An id already
   * stored resolves with that row unchanged (the caller's retry of the same send). Rows enqueued in the
   * same turn of the event loop are stored in one transaction (one commit, one sync at most).
   *
   * At `maxDepth` it rejects with `MESH_ERR_OUTBOX_FULL {outboxDepth, maxDepth, retryAfterMs}` and stores
   * nothing; with `waitForRoom` it waits (first come, first served) until the depth is below the
   * high-water mark instead.
   */
  enqueue(row: NewOutboxRow, o: EnqueueOptions = {}): Promise<OutboxRow> {
    if (o.waitForRoom === true && (this.#roomWaiters.length > 0 || this.#depth >= this.#highWater)) {
      return this.#room(o.signal).then(() => this.#put(row))
    }
    if (o.waitForRoom !== true && this.#depth >= this.#maxDepth) return Promise.reject(this.#full())
    this.#add(1)
    return this.#put(row)
  }

  /** Queues a row whose place in `depth` is already counted. */
  #put(row: NewOutboxRow): Promise<OutboxRow> {
    return new Promise((resolve, reject) => {
      this.#toInsert.push({ row, resolve, reject })
      if (this.#toInsert.length === 1) queueMicrotask(() => void this.#insertBatch())
    })
  }

  #full(): MeshError {
    const excess = this.#depth - this.#highWater + 1
    const retryAfterMs = Math.max(1, Math.ceil(this.#fullRetryAfterMs(excess)))
    return new MeshError(
      'MESH_ERR_OUTBOX_FULL',
      `the outbox holds ${this.#depth} undelivered messages (at most ${this.#maxDepth}); retry in ${retryAfterMs} ms`,
      { details: { outboxDepth: this.#depth, maxDepth: this.#maxDepth, retryAfterMs } },
    )
  }

  /** Resolves with a place counted in `depth` once the depth is below the high-water mark. */
  #room(signal: AbortSignal | undefined): Promise<void> {
    if (signal?.aborted === true) return Promise.reject(signal.reason as Error)
    return new Promise((resolve, reject) => {
      const onAbort = (): void => {
        const i = this.#roomWaiters.indexOf(waiter)
        if (i >= 0) this.#roomWaiters.splice(i, 1)
        reject(signal?.reason as Error)
      }
      const waiter = {
        grant: () => {
          signal?.removeEventListener('abort', onAbort)
          resolve()
        },
      }
      this.#roomWaiters.push(waiter)
      signal?.addEventListener('abort', onAbort, { once: true })
    })
  }

  /** Moves the depth by `delta`, hands out room below the high-water mark, and emits `drain`. */
  #add(delta: number): void {
    if (delta === 0) return
    this.#depth = Math.max(0, this.#depth + delta)
    while (this.#roomWaiters.length > 0 && this.#depth < this.#highWater) {
      this.#depth++ // the waiter's row, counted before it runs so the next waiter sees it
      this.#roomWaiters.shift()!.grant()
    }
    if (this.#depth >= this.#highWater) this.#aboveHigh = true
    else if (this.#aboveHigh && this.#depth < this.#lowWater) {
      this.#aboveHigh = false
      this.emit('drain')
    }
  }

  /** A row went from `before` to `after` (undefined: not stored): keeps `depth` in step. */
  #moved(before: OutboxRow['state'] | undefined, after: OutboxRow['state'] | undefined): void {
    this.#add(live(after) - live(before))
  }

  async #insertBatch(): Promise<void> {
    const batch = this.#toInsert.splice(0)
    this.#inserting++
    this.#insertingRows += batch.length
    try {
      const results = await this.#store.insertOutboxMany(batch.map((entry) => entry.row))
      // A row already stored (the caller's retry) was counted by its own enqueue, if still live.
      this.#add(-results.filter((result) => !result.inserted).length)
      results.forEach(({ inserted, row }, i) => {
        if (inserted) this.emit('state', row)
        batch[i]?.resolve(row)
      })
      if (results.some((result) => result.inserted)) this.#kick()
    } catch (err) {
      this.#add(-batch.length)
      for (const entry of batch) entry.reject(err)
    } finally {
      this.#inserting--
      this.#insertingRows -= batch.length
    }
  }

  /**
   * Makes rows that wait after a disconnect (an uncounted retry without `retryAfterMs`), or after a
   * coordinator that was shutting down or could not store, due now and restarts their backoff: call it
   * when the coordinator connection is back. Rate-limited rows keep their `retryAfterMs`.
   */
  wake(): void {
    this.#wakes++
    const ids = [...this.#waitingLink]
    this.#waitingLink.clear()
    for (const id of ids) this.#uncounted.delete(id)
    if (ids.length === 0) {
      this.#kick()
      return
    }
    const freeing = (async () => {
      const now = this.#clock.now()
      // All at once, so the store commits them together (one after the other was a commit each, about a
      // second for a thousand rows waiting out an outage).
      const rows = await Promise.all(
        ids.map((id) =>
          this.#locked(id, () =>
            this.#store.updateOutbox(id, { nextAttemptAt: now, updatedAt: now }, ['pending']),
          ),
        ),
      )
      for (const row of rows) if (row !== undefined) this.emit('state', row)
      this.#kick()
    })()
    freeing.catch((err: unknown) => this.#fail(err))
  }

  /**
   * Records a recipient's outcome (a `delivery_receipt`, a late ack). An `accepted` row whose every known
   * recipient is final becomes `done`, and so does a waiting direct (`dm`, `rpc`, `stream`) row. A final
   * outcome is never replaced by `queued`. A row a receipt finishes was carried by the coordinator (it
   * sends the receipts): its `via` is `relay`. Resolves with the row after the change, or undefined when
   * the row is unknown.
   */
  async receipt(id: string, recipientHex: string, status: RecipientState): Promise<OutboxRow | undefined> {
    return this.#locked(id, async () => {
      const now = this.#clock.now()
      const flight = this.#flights.get(id)
      if (flight !== undefined) {
        // The dispatch result will settle the state; keep the outcome for it, and store it now.
        flight.row.recipients = mergeRecipients(flight.row.recipients, { [recipientHex]: status })
        const row = await this.#store.updateOutbox(
          id,
          { recipients: flight.row.recipients, updatedAt: now },
          ['inflight'],
        )
        if (row !== undefined) this.emit('state', row)
        return row
      }
      const row = await this.#store.getOutbox(id)
      if (row === undefined) return undefined
      const recipients = mergeRecipients(row.recipients, { [recipientHex]: status })
      const finished =
        allFinal(recipients) &&
        (row.state === 'accepted' || (row.state === 'pending' && isDirectChannel(row.channel)))
      const patch: OutboxPatch = { recipients, updatedAt: now }
      if (finished) {
        patch.state = 'done'
        patch.lastError = null
        patch.via = 'relay'
      }
      const updated = await this.#store.updateOutbox(id, patch, [row.state])
      if (updated === undefined) return undefined
      this.#moved(row.state, updated.state)
      if (finished) this.#forget(id)
      this.emit('state', updated)
      this.#bump()
      return updated
    })
  }

  /**
   * Requeues a `dead` row under a fresh id: the old row becomes `aborted` (`requeuedAs`) and `newRow` is
   * stored `pending`. Resolves with the new row, or undefined when `id` is not `dead`.
   */
  async requeue(id: string, newRow: NewOutboxRow): Promise<OutboxRow | undefined> {
    return this.#locked(id, async () => {
      const created = await this.#store.requeueDead(id, newRow, this.#clock.now())
      if (created === undefined) return undefined
      this.#moved(undefined, created.state)
      const old = await this.#store.getOutbox(id)
      if (old !== undefined) this.emit('state', old)
      this.emit('state', created)
      this.#kick()
      return created
    })
  }

  /** The row as stored (for `message_status`). */
  async status(id: string): Promise<OutboxRow | undefined> {
    return this.#store.getOutbox(id)
  }

  /** Resolves when no row is `pending` or `inflight` (rows waiting for a later retry are pending). */
  async idle(signal?: AbortSignal): Promise<void> {
    for (;;) {
      signal?.throwIfAborted()
      const version = this.#version
      if (await this.#isIdle()) return
      await this.#changedSince(version, signal)
    }
  }

  /**
   * Stops dispatching: no new claims, in-flight dispatches are aborted and their rows go back to
   * `pending` (due now, no attempt used). Resolves when those rows are written. `start()` resumes.
   */
  async stop(): Promise<void> {
    this.#running = false
    this.#disarm()
    await this.#pumping
    for (const flight of this.#flights.values()) flight.controller.abort()
    await Promise.all([...this.#settling])
    this.#bump()
  }

  // The loop: claim what is due into free slots, then sleep until the next row is due.

  /** Runs the loop, or has the running loop go round once more. */
  #kick(afterFlight = false): void {
    if (!this.#running) return
    if (this.#pumpActive) {
      this.#again = true
      return
    }
    // Saturated, refill in batches: one claim per `#refillAt` finished flights, not a claim per flight.
    if (afterFlight && this.#concurrency - this.#flights.size < this.#refillAt) return
    this.#pumpActive = true
    this.#pumping = this.#pump()
  }

  async #pump(): Promise<void> {
    try {
      do {
        this.#again = false
        await this.#fill()
      } while (this.#again && this.#running)
    } catch (err) {
      this.#fail(err)
      // A store that failed (disk full, closed under us) is tried again after a pause.
      if (this.#running) this.#arm(this.#clock.now() + this.#baseMs)
    } finally {
      // In the same turn as the last `#again` check, so a kick cannot fall between the two.
      this.#pumpActive = false
    }
  }

  async #fill(): Promise<void> {
    for (;;) {
      if (!this.#running) return
      const room = this.#concurrency - this.#flights.size
      if (room <= 0) {
        this.#disarm() // a finishing flight kicks the loop
        return
      }
      this.#claiming++
      try {
        const rows = await this.#store.claimDue(this.#clock.now(), room)
        for (const row of rows) this.#launch(row)
        if (rows.length < room) break
      } finally {
        this.#claiming--
        this.#bump() // an idle() that saw the claim running looks again
      }
    }
    const next = await this.#store.nextDue()
    if (next !== undefined && next <= this.#clock.now()) this.#again = true
    else this.#arm(next)
  }

  #arm(at: number | undefined): void {
    if (at === this.#timerAt && this.#timer !== undefined) return
    this.#disarm()
    if (at === undefined || !this.#running) return
    this.#timerAt = at
    this.#timer = this.#clock.setTimeout(
      () => {
        this.#timer = undefined
        this.#timerAt = undefined
        this.#kick()
      },
      // Capped: Node fires a timer above 2^31 - 1 ms at once; a long wait is re-armed hourly instead.
      Math.min(Math.max(0, at - this.#clock.now()), MAX_TIMER_MS),
    )
  }

  #disarm(): void {
    this.#timer?.cancel()
    this.#timer = undefined
    this.#timerAt = undefined
  }

  /** Starts one claimed (`inflight`) row; does not wait for it. */
  #launch(row: OutboxRow): void {
    const flight: Flight = { row, controller: new AbortController(), wakes: this.#wakes }
    this.#flights.set(row.id, flight)
    this.emit('state', row)
    const settling = this.#fly(flight)
    this.#settling.add(settling)
    void settling.finally(() => this.#settling.delete(settling))
  }

  async #fly(flight: Flight): Promise<void> {
    const { row, controller } = flight
    try {
      let result: DispatchResult | typeof ABORTED
      if (!this.#running) result = ABORTED
      else if (this.#expired(row, this.#clock.now())) result = this.#expiry(row.lastError)
      else {
        try {
          result = await untilAborted(this.#dispatch(row, controller.signal), controller.signal)
        } catch (err) {
          result = controller.signal.aborted
            ? ABORTED
            : {
                kind: 'retry',
                counted: false,
                error: { code: 'MESH_ERR_INTERNAL', message: `dispatch threw: ${String(err)}` },
              }
        }
      }
      await this.#locked(row.id, () => this.#settle(flight, result))
    } catch (err) {
      // Only when stopped mid-write: the row stays inflight in the store; the next start() recovers it.
      this.#fail(err)
    } finally {
      this.#flights.delete(row.id)
      this.#bump()
      this.#kick(true)
    }
  }

  /** Writes the outcome of one dispatch (the row is `inflight` in the store). */
  async #settle(flight: Flight, result: DispatchResult | typeof ABORTED): Promise<void> {
    const { row } = flight
    const now = this.#clock.now()
    let patch: OutboxPatch
    if (result === ABORTED) {
      patch = { state: 'pending', nextAttemptAt: now, updatedAt: now }
    } else if (result.kind === 'done' || result.kind === 'accepted') {
      const recipients = mergeRecipients(row.recipients, result.recipients ?? {})
      const state = result.kind === 'done' || allFinal(recipients) ? 'done' : 'accepted'
      patch = { state, lastError: null, updatedAt: now }
      if (Object.keys(recipients).length > 0) patch.recipients = recipients
      if (result.via !== undefined) patch.via = result.via
    } else if (result.kind === 'dead') {
      patch = { state: 'dead', lastError: result.error, updatedAt: now }
    } else {
      patch = this.#retry(row, result, now, flight.wakes !== this.#wakes)
    }
    if (patch.state !== 'pending') this.#forget(row.id)
    const updated = await this.#write(flight, patch)
    if (updated !== undefined) {
      this.#moved('inflight', updated.state)
      this.emit('state', updated)
    }
  }

  /**
   * Stores a settled row's patch, retrying a failed write (a full disk, a store busy elsewhere) after a
   * full-jitter backoff on the clock until it is stored, so the row reaches its real state in this run
   * instead of sitting `inflight` until the next `start()` sends it again. Each failure is reported as
   * `error`. `stop()` ends the retrying (it aborts the flight): the row is then left `inflight` for the
   * next `start()` to recover, as before.
   */
  async #write(flight: Flight, patch: OutboxPatch): Promise<OutboxRow | undefined> {
    const { signal } = flight.controller
    for (let failures = 1; ; failures++) {
      try {
        return await this.#store.updateOutbox(flight.row.id, patch, ['inflight'])
      } catch (err) {
        if (signal.aborted) throw err
        this.#fail(err)
      }
      await this.#pause(this.#backoff(failures), signal)
      if (signal.aborted) return undefined
    }
  }

  /** Resolves after `ms` on the clock, or at once when `signal` aborts. */
  #pause(ms: number, signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        timer.cancel()
        signal.removeEventListener('abort', done)
        resolve()
      }
      const timer = this.#clock.setTimeout(done, ms)
      signal.addEventListener('abort', done, { once: true })
    })
  }

  /**
   * The patch for a `retry` result: back to `pending` at the backoff, or `dead` by age or attempts.
   * `woken`: the link came back while this dispatch was out, so a failure for want of it retries at once
   * (it missed that `wake()`, and would otherwise sit out a backoff grown through the whole outage).
   */
  #retry(
    row: OutboxRow,
    result: Extract<DispatchResult, { kind: 'retry' }>,
    now: number,
    woken: boolean,
  ): OutboxPatch {
    if (this.#expired(row, now))
      return { state: 'dead', lastError: this.#expiry(result.error).error, updatedAt: now }
    const given =
      result.retryAfterMs !== undefined && Number.isFinite(result.retryAfterMs) && result.retryAfterMs >= 0
        ? result.retryAfterMs
        : undefined
    let attempts = row.attempts
    let delay: number
    if (result.counted) {
      attempts++
      this.#uncounted.delete(row.id)
      // A coordinator that was going down or not yet able to store keeps its attempt, but a new hello
      // (`wake()`) frees the row: its backoff grew through an outage, not through anything of its own.
      if (OUTAGE_CODES.has(result.error.code)) this.#waitingLink.add(row.id)
      else this.#waitingLink.delete(row.id)
      if (attempts >= this.#maxAttempts) {
        return {
          state: 'dead',
          attempts,
          lastError: {
            code: 'MESH_ERR_TOO_MANY_ATTEMPTS' satisfies MeshErrorCode,
            message: `refused ${attempts} times; last: ${result.error.code}: ${result.error.message}`,
          },
          updatedAt: now,
        }
      }
      delay = given ?? this.#backoff(attempts)
    } else {
      const streak = (this.#uncounted.get(row.id) ?? 0) + 1
      this.#uncounted.set(row.id, streak)
      if (given === undefined && woken) {
        this.#uncounted.delete(row.id)
        this.#waitingLink.delete(row.id)
        delay = 0
      } else {
        if (given === undefined) this.#waitingLink.add(row.id)
        else this.#waitingLink.delete(row.id)
        delay = given ?? this.#backoff(streak)
      }
    }
    // Never sleep past the row's expiry: it is declared dead on time.
    const nextAttemptAt = Math.min(now + delay, row.createdAt + this.#maxAgeMs)
    return { state: 'pending', attempts, nextAttemptAt, lastError: result.error, updatedAt: now }
  }

  /** Full jitter: uniform below `min(cap, base · 2^(n-1))` for the n-th retry. */
  #backoff(n: number): number {
    const ceiling = Math.min(this.#capMs, this.#baseMs * 2 ** Math.min(n - 1, 40))
    return Math.floor(this.#random() * ceiling)
  }

  #expired(row: OutboxRow, now: number): boolean {
    return now - row.createdAt >= this.#maxAgeMs
  }

  #expiry(last: RowError | undefined): { kind: 'dead'; error: RowError } {
    const why = last === undefined ? '' : `; last: ${last.code}: ${last.message}`
    return {
      kind: 'dead',
      error: {
        code: 'MESH_ERR_OUTBOX_EXPIRED' satisfies MeshErrorCode,
        message: `undelivered after ${Math.round(this.#maxAgeMs / 1000)} s${why}`,
      },
    }
  }

  /** Drops the per-row retry memory of a row that left the retry cycle. */
  #forget(id: string): void {
    this.#uncounted.delete(id)
    this.#waitingLink.delete(id)
  }

  #locked<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.#locks.get(id) ?? Promise.resolve()
    const run = previous.then(fn)
    const tail = run.then(
      () => undefined,
      () => undefined,
    )
    this.#locks.set(id, tail)
    void tail.then(() => {
      if (this.#locks.get(id) === tail) this.#locks.delete(id)
    })
    return run
  }

  async #isIdle(): Promise<boolean> {
    if (this.#flights.size > 0 || this.#claiming > 0 || this.#toInsert.length + this.#inserting > 0)
      return false
    const next = await this.#store.nextDue()
    return next === undefined && this.#flights.size === 0 && this.#claiming === 0
  }

  #bump(): void {
    this.#version++
    for (const wake of [...this.#versionWaiters]) wake()
  }

  #changedSince(version: number, signal: AbortSignal | undefined): Promise<void> {
    if (version !== this.#version) return Promise.resolve()
    return new Promise((resolve, reject) => {
      const onAbort = (): void => {
        this.#versionWaiters.delete(wake)
        reject(signal?.reason as Error)
      }
      const wake = (): void => {
        this.#versionWaiters.delete(wake)
        signal?.removeEventListener('abort', onAbort)
        resolve()
      }
      this.#versionWaiters.add(wake)
      signal?.addEventListener('abort', onAbort, { once: true })
    })
  }

  #fail(err: unknown): void {
    this.emit('error', err instanceof Error ? err : new Error(String(err)))
  }
}

/** Merges outcomes; a final outcome already known is never replaced by `queued`. */
function mergeRecipients(
  known: Record<string, RecipientState> | undefined,
  incoming: Record<string, RecipientState>,
): Record<string, RecipientState> {
  const merged = { ...known }
  for (const [key, state] of Object.entries(incoming)) {
    const was = merged[key]
    if (state === 'queued' && was !== undefined && FINAL_STATES.has(was)) continue
    merged[key] = state
  }
  return merged
}

/** True when at least one recipient is known and none is still `queued`. */
function allFinal(recipients: Record<string, RecipientState>): boolean {
  const states = Object.values(recipients)
  return states.length > 0 && states.every((state) => FINAL_STATES.has(state))
}

/** `promise`, or `ABORTED` as soon as `signal` aborts (the promise is then left to settle unobserved). */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T | typeof ABORTED> {
  if (signal.aborted) return Promise.resolve(ABORTED)
  return new Promise((resolve, reject) => {
    const onAbort = (): void => resolve(ABORTED)
    signal.addEventListener('abort', onAbort, { once: true })
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort)
        resolve(value)
      },
      (err: Error) => {
        signal.removeEventListener('abort', onAbort)
        reject(err)
      },
    )
  })
}
