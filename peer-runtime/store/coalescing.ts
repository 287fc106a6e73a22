/**
 * A `RuntimeStore` that groups the small writes of one turn of the event loop (issue 21): the
 * `updateOutbox` calls made in a turn go to the store as one `updateOutboxMany`, the `insertInbox` calls
 * as one `insertInboxMany`, so a burst of dispatch outcomes or pushes costs one transaction and one
 * commit instead of one each. Everything else passes through.
 *
 * - Each caller resolves with its own result, exactly what its single call would have given (the batch
 *   methods apply changes in call order, each a compare-and-set of its own), and only after the batch
 *   committed: what a caller was told is stored survives a `kill -9` as the single call's did.
 * - A batch fails as a whole, like `insertOutboxMany`: nothing of it is stored and every caller in it
 *   rejects with the store's error (the outbox writes a settle again after a backoff; the inbox leaves a
 *   push unacked, so the coordinator pushes it again).
 * - An inbox row's bytes are read when the batch is sent, at the end of the turn (not copied before):
 *   a caller must not change them after the call, as no caller here does.
 * - Calls reach the store in the order they were made: any other method (a read included) first sends
 *   the writes waiting for the turn to end, so a `getOutbox` after an unawaited `updateOutbox` sees it.
 *   `close()` sends them too, then closes the store.
 *
 * The turn ends at `setImmediate` where there is one (Node: after every I/O callback of this loop
 * iteration, so acks read from several socket chunks share a commit), else at a microtask.
 */
import type { InboxInsert, NewInboxRow, OutboxChange, OutboxPatch, OutboxRow, RuntimeStore } from './types.js'

/** Options of `coalescingStore`. */
export interface CoalescingOptions {
  /** Runs `flush` once the current turn is over; default `setImmediate`, or `queueMicrotask` without it. */
  schedule?: (flush: () => void) => void
}

/**
 * `store` with its `updateOutbox` and `insertInbox` calls grouped per turn (see above). A store that is
 * already coalescing is returned as it is.
 */
export function coalescingStore(store: RuntimeStore, options: CoalescingOptions = {}): RuntimeStore {
  if (store instanceof CoalescingStore) return store
  return new CoalescingStore(store, options.schedule ?? endOfTurn)
}

/**
 * Runs `fn` when this turn of the event loop is over: `setImmediate` where there is one (Node: after
 * every I/O callback of this loop iteration; a microtask would run after the first one), else a microtask.
 */
export function endOfTurn(fn: () => void): void {
  if (typeof setImmediate === 'function') setImmediate(fn)
  else queueMicrotask(fn)
}

interface Waiting<I, O> {
  input: I
  resolve: (value: O) => void
  reject: (err: unknown) => void
}

/** The calls of one kind waiting for the end of the turn, and the batch method they go to. */
class Batch<I, O> {
  #waiting: Waiting<I, O>[] = []

  constructor(readonly send: (inputs: I[]) => Promise<O[]>) {}

  add(input: I): Promise<O> {
    return new Promise((resolve, reject) => this.#waiting.push({ input, resolve, reject }))
  }

  /** Sends what waits as one call; every waiting caller settles with its own result or the batch's error. */
  flush(): void {
    if (this.#waiting.length === 0) return
    const waiting = this.#waiting
    this.#waiting = []
    const fail = (err: unknown): void => waiting.forEach((w) => w.reject(err))
    let sent: Promise<O[]>
    try {
      sent = this.send(waiting.map((w) => w.input))
    } catch (err) {
      fail(err)
      return
    }
    sent.then((results) => waiting.forEach((w, i) => w.resolve(results[i] as O)), fail)
  }
}

/**
 * Every method is an arrow field and `durability` a plain field, so the store also works behind a
 * `Proxy` (the daemon's `splitStore`) that calls it with the proxy as `this`.
 */
class CoalescingStore implements RuntimeStore {
  readonly durability: RuntimeStore['durability']
  readonly #store: RuntimeStore
  readonly #schedule: (flush: () => void) => void
  readonly #updates: Batch<OutboxChange, OutboxRow | undefined>
  readonly #inserts: Batch<NewInboxRow, InboxInsert>
  #scheduled = false

  constructor(store: RuntimeStore, schedule: (flush: () => void) => void) {
    this.durability = store.durability
    this.#store = store
    this.#schedule = schedule
    this.#updates = new Batch((changes) => store.updateOutboxMany(changes))
    this.#inserts = new Batch((rows) => store.insertInboxMany(rows))
  }

  updateOutbox: RuntimeStore['updateOutbox'] = (id, patch, expect) => {
    // The patch is read at the end of the turn: a copy, so a caller reusing its objects changes nothing.
    const copy: OutboxPatch = { ...patch }
    if (patch.recipients !== undefined) copy.recipients = { ...patch.recipients }
    if (patch.lastError != null) copy.lastError = { ...patch.lastError }
    return this.#queue(
      this.#updates,
      expect === undefined ? { id, patch: copy } : { id, patch: copy, expect },
    )
  }

  insertInbox: RuntimeStore['insertInbox'] = (row) => this.#queue(this.#inserts, row)

  insertOutbox: RuntimeStore['insertOutbox'] = (row) => this.#flushed().insertOutbox(row)
  insertOutboxMany: RuntimeStore['insertOutboxMany'] = (rows) => this.#flushed().insertOutboxMany(rows)
  getOutbox: RuntimeStore['getOutbox'] = (id) => this.#flushed().getOutbox(id)
  updateOutboxMany: RuntimeStore['updateOutboxMany'] = (changes) => this.#flushed().updateOutboxMany(changes)
  dueOutbox: RuntimeStore['dueOutbox'] = (now, limit) => this.#flushed().dueOutbox(now, limit)
  claimDue: RuntimeStore['claimDue'] = (now, limit) => this.#flushed().claimDue(now, limit)
  nextDue: RuntimeStore['nextDue'] = () => this.#flushed().nextDue()
  listOutbox: RuntimeStore['listOutbox'] = (states, limit) => this.#flushed().listOutbox(states, limit)
  recoverInflight: RuntimeStore['recoverInflight'] = (now) => this.#flushed().recoverInflight(now)
  requeueDead: RuntimeStore['requeueDead'] = (id, row, now) => this.#flushed().requeueDead(id, row, now)
  pruneOutbox: RuntimeStore['pruneOutbox'] = (before, limit) => this.#flushed().pruneOutbox(before, limit)
  insertInboxMany: RuntimeStore['insertInboxMany'] = (rows) => this.#flushed().insertInboxMany(rows)
  readInbox: RuntimeStore['readInbox'] = (query) => this.#flushed().readInbox(query)
  consumeInbox: RuntimeStore['consumeInbox'] = (mesh, seqs, at) =>
    this.#flushed().consumeInbox(mesh, seqs, at)
  pruneInbox: RuntimeStore['pruneInbox'] = (before, limit) => this.#flushed().pruneInbox(before, limit)
  saveMeshView: RuntimeStore['saveMeshView'] = (view) => this.#flushed().saveMeshView(view)
  loadMeshView: RuntimeStore['loadMeshView'] = (mesh) => this.#flushed().loadMeshView(mesh)
  putRpcAnswer: RuntimeStore['putRpcAnswer'] = (row) => this.#flushed().putRpcAnswer(row)
  getRpcAnswer: RuntimeStore['getRpcAnswer'] = (mesh, from, id) =>
    this.#flushed().getRpcAnswer(mesh, from, id)
  pruneRpcAnswers: RuntimeStore['pruneRpcAnswers'] = (now, limit) =>
    this.#flushed().pruneRpcAnswers(now, limit)
  close: RuntimeStore['close'] = () => this.#flushed().close()

  #queue<I, O>(batch: Batch<I, O>, input: I): Promise<O> {
    const result = batch.add(input)
    if (!this.#scheduled) {
      this.#scheduled = true
      this.#schedule(() => {
        this.#scheduled = false
        this.#flush()
      })
    }
    return result
  }

  #flush(): void {
    // Two tables: the order between the two batches is not observable.
    this.#updates.flush()
    this.#inserts.flush()
  }

  /** The store, once the writes waiting for the end of the turn were sent to it (call order kept). */
  #flushed(): RuntimeStore {
    this.#flush()
    return this.#store
  }
}
