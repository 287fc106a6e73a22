/**
 * The memory `RuntimeStore`: for browsers and peers that keep nothing across restarts. Its durability is
 * `volatile`, so the runtime acks a delivery only when the application consumes it (DESIGN.md §5): a
 * message acked on arrival would be lost with the page.
 *
 * Platform-neutral (bundled for browsers). Pending outbox rows are kept in an array sorted by due time,
 * so `claimDue` and `nextDue` cost what they return, not the size of the backlog; inbox rows are kept per
 * (mesh, recipient) in arrival order, so a reader's cursor is a binary search.
 *
 * Bytes handed in are copied; rows handed out are fresh objects sharing the stored bytes, which callers
 * must treat as read-only.
 */
import { toHex } from '../../protocol/encoding.js'
import { MeshError } from '../../protocol/errors.js'
import { newInboxRow, newOutboxRow } from './rows.js'
import type {
  InboxInsert,
  InboxQuery,
  InboxRow,
  NewInboxRow,
  NewOutboxRow,
  OutboxChange,
  OutboxPatch,
  OutboxRow,
  OutboxState,
  RpcAnswerRow,
  RuntimeStore,
  SavedMeshView,
} from './types.js'

/** A volatile store holding everything in memory. */
export function memoryStore(): RuntimeStore {
  return new MemoryStore()
}

const DEFAULT_INBOX_LIMIT = 100
const PRUNABLE: ReadonlySet<OutboxState> = new Set(['done', 'aborted', 'dead'])

/** The due-row order of `dueOutbox`: `nextAttemptAt`, then `createdAt`, then `id` (a total order). */
function dueOrder(a: OutboxRow, b: OutboxRow): number {
  return (
    a.nextAttemptAt - b.nextAttemptAt || a.createdAt - b.createdAt || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)
  )
}

function createdOrder(a: OutboxRow, b: OutboxRow): number {
  return a.createdAt - b.createdAt || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)
}

function cloneOutbox(row: OutboxRow): OutboxRow {
  const copy = { ...row }
  if (row.recipients !== undefined) copy.recipients = { ...row.recipients }
  if (row.lastError !== undefined) copy.lastError = { ...row.lastError }
  return copy
}

function cloneInbox(row: InboxRow): InboxRow {
  return { ...row }
}

function cloneRpcAnswer(row: RpcAnswerRow): RpcAnswerRow {
  const copy: RpcAnswerRow = {
    mesh: row.mesh,
    from: row.from.slice(),
    correlationId: row.correlationId,
    expiresAt: row.expiresAt,
  }
  if (row.answer !== undefined) copy.answer = row.answer.slice()
  return copy
}

/** The first `limit` items (all when `limit` is undefined; none when it is 0 or less). */
function upTo<T>(items: T[], limit: number | undefined): T[] {
  return limit === undefined ? items : items.slice(0, Math.max(0, limit))
}

class MemoryStore implements RuntimeStore {
  readonly durability = 'volatile' as const
  #closed = false
  readonly #outbox = new Map<string, OutboxRow>()
  /** Every `pending` row, sorted by `dueOrder`. */
  readonly #pending: OutboxRow[] = []
  /** Inbox rows by identity `mesh \0 recipient \0 from \0 clientMessageId`. */
  readonly #inboxByIdentity = new Map<string, InboxRow>()
  readonly #inboxBySeq = new Map<number, InboxRow>()
  /** Inbox rows per `mesh \0 recipient`, in `seq` order. */
  readonly #streams = new Map<string, InboxRow[]>()
  #seq = 0
  readonly #meshViews = new Map<string, SavedMeshView>()
  /** rpc answers by `mesh \0 from \0 correlationId`. */
  readonly #rpcAnswers = new Map<string, RpcAnswerRow>()

  async insertOutbox(input: NewOutboxRow): Promise<{ inserted: boolean; row: OutboxRow }> {
    this.#assertOpen()
    const existing = this.#outbox.get(input.id)
    if (existing !== undefined) return { inserted: false, row: cloneOutbox(existing) }
    const row = newOutboxRow(input)
    this.#outbox.set(row.id, row)
    this.#addPending(row)
    return { inserted: true, row: cloneOutbox(row) }
  }

  async insertOutboxMany(rows: readonly NewOutboxRow[]): Promise<{ inserted: boolean; row: OutboxRow }[]> {
    this.#assertOpen()
    return Promise.all(rows.map((row) => this.insertOutbox(row)))
  }

  async getOutbox(id: string): Promise<OutboxRow | undefined> {
    this.#assertOpen()
    const row = this.#outbox.get(id)
    return row === undefined ? undefined : cloneOutbox(row)
  }

  async updateOutbox(
    id: string,
    patch: OutboxPatch,
    expect?: readonly OutboxState[],
  ): Promise<OutboxRow | undefined> {
    this.#assertOpen()
    return this.#update(id, patch, expect)
  }

  async updateOutboxMany(changes: readonly OutboxChange[]): Promise<(OutboxRow | undefined)[]> {
    this.#assertOpen()
    // Nothing here can fail part-way, so applying in order is the whole transaction.
    return changes.map(({ id, patch, expect }) => this.#update(id, patch, expect))
  }

  async dueOutbox(now: number, limit: number): Promise<OutboxRow[]> {
    this.#assertOpen()
    return this.#due(now, limit).map(cloneOutbox)
  }

  async claimDue(now: number, limit: number): Promise<OutboxRow[]> {
    this.#assertOpen()
    const rows = this.#due(now, limit)
    // The due rows are the first ones of the sorted array.
    this.#pending.splice(0, rows.length)
    for (const row of rows) {
      row.state = 'inflight'
      row.updatedAt = now
    }
    return rows.map(cloneOutbox)
  }

  async nextDue(): Promise<number | undefined> {
    this.#assertOpen()
    return this.#pending[0]?.nextAttemptAt
  }

  async listOutbox(states: readonly OutboxState[], limit: number): Promise<OutboxRow[]> {
    this.#assertOpen()
    const rows = [...this.#outbox.values()].filter((row) => states.includes(row.state))
    return rows.sort(createdOrder).slice(0, Math.max(0, limit)).map(cloneOutbox)
  }

  async recoverInflight(now: number): Promise<number> {
    this.#assertOpen()
    let moved = 0
    for (const row of this.#outbox.values()) {
      if (row.state !== 'inflight') continue
      row.state = 'pending'
      row.nextAttemptAt = now
      row.updatedAt = now
      this.#addPending(row)
      moved++
    }
    return moved
  }

  async requeueDead(id: string, newRow: NewOutboxRow, now: number): Promise<OutboxRow | undefined> {
    this.#assertOpen()
    const row = this.#outbox.get(id)
    if (row === undefined || row.state !== 'dead') return undefined
    if (this.#outbox.has(newRow.id)) {
      throw new MeshError('MESH_ERR_IDEMPOTENCY_CONFLICT', `outbox row ${newRow.id} already exists`)
    }
    row.state = 'aborted'
    row.requeuedAs = newRow.id
    row.updatedAt = now
    return (await this.insertOutbox(newRow)).row
  }

  async pruneOutbox(before: number, limit?: number): Promise<number> {
    this.#assertOpen()
    const doomed = upTo(
      [...this.#outbox.values()]
        .filter((row) => PRUNABLE.has(row.state) && row.updatedAt < before)
        .sort((a, b) => a.updatedAt - b.updatedAt),
      limit,
    )
    for (const row of doomed) this.#outbox.delete(row.id)
    return doomed.length
  }

  async insertInbox(input: NewInboxRow): Promise<InboxInsert> {
    this.#assertOpen()
    return this.#insertInbox(input)
  }

  async insertInboxMany(rows: readonly NewInboxRow[]): Promise<InboxInsert[]> {
    this.#assertOpen()
    return rows.map((row) => this.#insertInbox(row))
  }

  async readInbox(query: InboxQuery): Promise<InboxRow[]> {
    this.#assertOpen()
    const limit = Math.max(0, query.limit ?? DEFAULT_INBOX_LIMIT)
    const afterSeq = query.afterSeq ?? 0
    const picked: InboxRow[] = []
    for (const recipient of new Set(query.recipients.map(toHex))) {
      const stream = this.#streams.get(`${query.mesh}\0${recipient}`)
      if (stream === undefined) continue
      let taken = 0
      for (let i = firstAfter(stream, afterSeq); i < stream.length && taken < limit; i++) {
        const row = stream[i] as InboxRow
        if (query.unconsumed === true && row.consumedAt !== undefined) continue
        picked.push(row)
        taken++
      }
    }
    return picked
      .sort((a, b) => a.seq - b.seq)
      .slice(0, limit)
      .map(cloneInbox)
  }

  async consumeInbox(mesh: string, seqs: readonly number[], at: number): Promise<number> {
    this.#assertOpen()
    let changed = 0
    for (const seq of seqs) {
      const row = this.#inboxBySeq.get(seq)
      if (row === undefined || row.mesh !== mesh || row.consumedAt !== undefined) continue
      row.consumedAt = at
      changed++
    }
    return changed
  }

  async pruneInbox(before: number, limit?: number): Promise<number> {
    this.#assertOpen()
    // Oldest first (by seq, the arrival order), as the sqlite driver deletes them.
    const doomed = upTo(
      [...this.#inboxBySeq.values()].filter((row) => row.receivedAt < before).sort((a, b) => a.seq - b.seq),
      limit,
    )
    if (doomed.length === 0) return 0
    const gone = new Set<InboxRow>()
    for (const row of doomed) {
      gone.add(row)
      this.#inboxBySeq.delete(row.seq)
      this.#inboxByIdentity.delete(
        `${row.mesh}\0${toHex(row.recipient)}\0${toHex(row.from)}\0${row.clientMessageId}`,
      )
    }
    for (const [key, stream] of this.#streams) {
      const kept = stream.filter((row) => !gone.has(row))
      if (kept.length === 0) this.#streams.delete(key)
      else if (kept.length !== stream.length) this.#streams.set(key, kept)
    }
    return doomed.length
  }

  async saveMeshView(view: SavedMeshView): Promise<void> {
    this.#assertOpen()
    this.#meshViews.set(view.mesh, { ...view, snapshot: view.snapshot.slice() })
  }

  async loadMeshView(mesh: string): Promise<SavedMeshView | undefined> {
    this.#assertOpen()
    const view = this.#meshViews.get(mesh)
    return view === undefined ? undefined : { ...view, snapshot: view.snapshot.slice() }
  }

  async putRpcAnswer(row: RpcAnswerRow): Promise<void> {
    this.#assertOpen()
    this.#rpcAnswers.set(rpcKey(row.mesh, row.from, row.correlationId), cloneRpcAnswer(row))
  }

  async getRpcAnswer(
    mesh: string,
    from: Uint8Array,
    correlationId: string,
  ): Promise<RpcAnswerRow | undefined> {
    this.#assertOpen()
    const row = this.#rpcAnswers.get(rpcKey(mesh, from, correlationId))
    return row === undefined ? undefined : cloneRpcAnswer(row)
  }

  async pruneRpcAnswers(now: number, limit?: number): Promise<number> {
    this.#assertOpen()
    const doomed = upTo(
      [...this.#rpcAnswers]
        .filter(([, row]) => row.expiresAt <= now)
        .sort(([, a], [, b]) => a.expiresAt - b.expiresAt),
      limit,
    )
    for (const [key] of doomed) this.#rpcAnswers.delete(key)
    return doomed.length
  }

  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    this.#outbox.clear()
    this.#pending.length = 0
    this.#inboxByIdentity.clear()
    this.#inboxBySeq.clear()
    this.#streams.clear()
    this.#meshViews.clear()
    this.#rpcAnswers.clear()
  }

  #assertOpen(): void {
    if (this.#closed) throw new MeshError('MESH_ERR_STORE_CLOSED', 'the runtime store is closed')
  }

  #update(id: string, patch: OutboxPatch, expect: readonly OutboxState[] | undefined): OutboxRow | undefined {
    const row = this.#outbox.get(id)
    if (row === undefined || (expect !== undefined && !expect.includes(row.state))) return undefined
    if (row.state === 'pending') this.#removePending(row)
    if (patch.state !== undefined) row.state = patch.state
    if (patch.attempts !== undefined) row.attempts = patch.attempts
    if (patch.nextAttemptAt !== undefined) row.nextAttemptAt = patch.nextAttemptAt
    if (patch.lastError === null) delete row.lastError
    else if (patch.lastError !== undefined) row.lastError = { ...patch.lastError }
    if (patch.recipients !== undefined) row.recipients = { ...patch.recipients }
    if (patch.via !== undefined) row.via = patch.via
    row.updatedAt = patch.updatedAt
    if (row.state === 'pending') this.#addPending(row)
    return cloneOutbox(row)
  }

  #due(now: number, limit: number): OutboxRow[] {
    const rows: OutboxRow[] = []
    for (const row of this.#pending) {
      if (row.nextAttemptAt > now || rows.length >= limit) break
      rows.push(row)
    }
    return rows
  }

  #addPending(row: OutboxRow): void {
    this.#pending.splice(this.#pendingIndex(row), 0, row)
  }

  #removePending(row: OutboxRow): void {
    const at = this.#pendingIndex(row)
    if (this.#pending[at] === row) this.#pending.splice(at, 1)
  }

  /** The first index whose row does not sort before `row` (binary search). */
  #pendingIndex(row: OutboxRow): number {
    let lo = 0
    let hi = this.#pending.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (dueOrder(this.#pending[mid] as OutboxRow, row) < 0) lo = mid + 1
      else hi = mid
    }
    return lo
  }

  #insertInbox(input: NewInboxRow): InboxInsert {
    const recipient = toHex(input.recipient)
    const identity = `${input.mesh}\0${recipient}\0${toHex(input.from)}\0${input.clientMessageId}`
    const existing = this.#inboxByIdentity.get(identity)
    if (existing !== undefined) return { inserted: false, row: cloneInbox(existing) }
    const row = newInboxRow(input, ++this.#seq)
    this.#inboxByIdentity.set(identity, row)
    this.#inboxBySeq.set(row.seq, row)
    const streamKey = `${input.mesh}\0${recipient}`
    const stream = this.#streams.get(streamKey)
    if (stream === undefined) this.#streams.set(streamKey, [row])
    else stream.push(row)
    return { inserted: true, row: cloneInbox(row) }
  }
}

function rpcKey(mesh: string, from: Uint8Array, correlationId: string): string {
  return `${mesh}\0${toHex(from)}\0${correlationId}`
}

/** The index of the first row of `stream` (sorted by seq) whose seq is greater than `seq`. */
function firstAfter(stream: readonly InboxRow[], seq: number): number {
  let lo = 0
  let hi = stream.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if ((stream[mid] as InboxRow).seq <= seq) lo = mid + 1
    else hi = mid
  }
  return lo
}
