/**
 * The peer runtime's durable state: the outbox (sealed envelopes waiting to be delivered, DESIGN.md §5),
 * the inbox (what arrived, deduplicated by `(mesh, recipient, from, clientMessageId)`), the verified mesh
 * view saved for a fast restart, and an rpc callee's answers (at most once across restarts). Finished
 * rows are pruned hourly by `janitor.ts`. One interface, two drivers: better-sqlite3 in WAL mode
 * (`peer-runtime/node/sqlite-store.ts`, one process per file) and memory (`peer-runtime/store/memory.ts`,
 * for browsers and volatile peers). Both pass one suite (`peer-runtime/store/compliance.ts`).
 *
 * Every method is async so an IndexedDB driver fits the same shape; a method resolves only after its
 * write is durable for the driver (the sqlite driver commits before resolving). The batch methods
 * (`insertOutboxMany`, `updateOutboxMany`, `insertInboxMany`) share one commit among many rows;
 * `coalescingStore` (`peer-runtime/store/coalescing.ts`) sends the single calls of one turn through them.
 */
import type { Channel } from '../../protocol/envelope.js'
import type { ACK_STATUSES, RECIPIENT_STATES } from '../../protocol/frames.js'

/**
 * `pending → inflight → accepted → done | dead`, and `aborted` for a `dead` row an operator requeued.
 * - `pending`: waiting for its next attempt (`nextAttemptAt`).
 * - `inflight`: handed to a transport, no answer yet. Found at start, it goes back to `pending`.
 * - `accepted`: the coordinator answered `queued`; no more retransmission, a receipt may still come.
 * - `done`: a receiver acked (a P2P ack, `send_ack{delivered}`, or a `delivery_receipt`).
 * - `dead`: given up (25 counted attempts, 6 days of age, no valid target, a permanent refusal).
 * - `aborted`: a `dead` row that was requeued under a fresh id (`requeuedAs`).
 */
export type OutboxState = 'pending' | 'inflight' | 'accepted' | 'done' | 'dead' | 'aborted'

/** A recipient's outcome as the sender knows it (`send_ack.recipients`, receipts, P2P acks). */
export type RecipientState = (typeof RECIPIENT_STATES)[number]
/** How a receiver acknowledged a delivery. */
export type InboxAckStatus = (typeof ACK_STATUSES)[number]

/**
 * The transport that took an outbox row to its state, as the sender knows it; the names are those of
 * `InboxRow.via` on the receiving side (a sender never sends by webhook: the coordinator does).
 * - `p2p`: the P2P data channel carried it and the recipient acked over it (`done`).
 * - `relay`: the coordinator did: it pushed it live and the recipient acked (`send_ack{delivered}`,
 *   `done`), or it stored it for an offline recipient (`accepted`, shown as queued) and pushed it when
 *   the recipient came (the `delivery_receipt` makes it `done`, still `relay`). Every group row is `relay`.
 */
export type OutboxVia = 'p2p' | 'relay'

/** Why a row failed, as a wire error code and message. */
export interface RowError {
  code: string
  message: string
}

/** One outbox row. Keys and bytes are copies the store owns. */
export interface OutboxRow {
  /** The envelope's `clientMessageId` (a ULID): the row's identity. */
  id: string
  mesh: string
  /** The sealing key (`envelope.from`). */
  from: Uint8Array
  /** The envelope's target as text: 64 hex characters for a key, `*`, `@group` or `#topic`. */
  target: string
  channel: Channel
  /** The encoded, sealed envelope: every attempt and every fallback sends these bytes unchanged. */
  envelope: Uint8Array
  state: OutboxState
  /** Counted attempts (only retryable coordinator refusals count). */
  attempts: number
  createdAt: number
  updatedAt: number
  /** When a `pending` row may be tried next. */
  nextAttemptAt: number
  /** The last failure, kept after a retry succeeds only until the row leaves `pending`. */
  lastError?: RowError
  /** Per recipient (hex key) outcomes; a DM has one entry once anything is known. */
  recipients?: Record<string, RecipientState>
  /** The request fingerprint of an idempotent IPC send (PROTOCOL.md §5), when there was one. */
  fingerprint?: Uint8Array
  /** The session (local id) that sent it, for IPC scoping; absent for the runtime itself. */
  sessionId?: string
  /** Set on an `aborted` row: the id it was requeued as. */
  requeuedAs?: string
  /**
   * How it got to `accepted` or `done` (`OutboxVia`): set by the transport's answer, kept by a later
   * receipt. Absent while nothing carried it yet (`pending`, `inflight`, `dead` by refusal), and on rows
   * an older build finished (schema 2 had no such column).
   */
  via?: OutboxVia
}

/** What `insertOutbox` takes: a new row is `pending` with no attempts, and nothing carried it yet. */
export type NewOutboxRow = Omit<
  OutboxRow,
  'state' | 'attempts' | 'updatedAt' | 'nextAttemptAt' | 'requeuedAs' | 'via'
> & {
  nextAttemptAt?: number
}

/** A change to a row (`updateOutbox` may make it conditional on the current state: a compare-and-set). */
export interface OutboxPatch {
  state?: OutboxState
  attempts?: number
  nextAttemptAt?: number
  lastError?: RowError | null
  recipients?: Record<string, RecipientState>
  /** The transport that answered (absent: the row keeps the one it had). */
  via?: OutboxVia
  updatedAt: number
}

/** One change of `updateOutboxMany`: the arguments of one `updateOutbox` call. */
export interface OutboxChange {
  id: string
  patch: OutboxPatch
  expect?: readonly OutboxState[]
}

/** One inbox row. */
export interface InboxRow {
  /** Assigned by the store on insert, increasing: the order rows arrived in (a cursor for readers). */
  seq: number
  mesh: string
  /** The key the message was addressed to (a member key is visible to all of that member's sessions). */
  recipient: Uint8Array
  from: Uint8Array
  clientMessageId: string
  channel: Channel
  /** The coordinator's `deliveryId`, or `p2p:<clientMessageId>` for a P2P delivery. */
  deliveryId?: string
  /** How it came: `p2p`, `relay`, `webhook` (the sender's row names its side alike: `OutboxVia`). */
  via: string
  /** The encoded envelope as received (sealed: opening it again needs the recipient's key). */
  envelope: Uint8Array
  /** The decoded application payload, msgpack-encoded; absent when it did not open. */
  payload?: Uint8Array
  /** `ok` when it opened; `undecryptable` or `rejected` otherwise (payload absent). */
  status: InboxAckStatus
  receivedAt: number
  /** When the application consumed it (volatile stores ack on consumption). */
  consumedAt?: number
}

export type NewInboxRow = Omit<InboxRow, 'seq' | 'consumedAt'>

/** What `insertInbox` did: a new row, or the existing one for the same identity (a duplicate). */
export type InboxInsert = { inserted: true; row: InboxRow } | { inserted: false; row: InboxRow }

/** Which inbox rows a reader sees. */
export interface InboxQuery {
  mesh: string
  /** The keys whose messages the reader may see (its session key and its member key). */
  recipients: readonly Uint8Array[]
  /** Only rows with `seq` greater than this. */
  afterSeq?: number
  /** Only rows not yet consumed. */
  unconsumed?: boolean
  /** At most this many (default 100), oldest first. */
  limit?: number
}

/** The verified mesh view a runtime saved, to resume from at start (asks only for events after `version`). */
export interface SavedMeshView {
  mesh: string
  version: number
  snapshot: Uint8Array
  savedAt: number
}

/** An rpc callee's record of one request: `answer` absent while the handler runs (at most once across restarts). */
export interface RpcAnswerRow {
  mesh: string
  from: Uint8Array
  correlationId: string
  answer?: Uint8Array
  expiresAt: number
}

/** The durable state of one runtime. */
export interface RuntimeStore {
  /** `durable` for the sqlite driver (acks after commit), `volatile` for memory (acks on consumption). */
  readonly durability: 'durable' | 'volatile'

  /** Inserts a `pending` row; if the id exists, returns the existing row and changes nothing. */
  insertOutbox(row: NewOutboxRow): Promise<{ inserted: boolean; row: OutboxRow }>
  /**
   * `insertOutbox` for many rows in one transaction (one commit): the results in the order of `rows`; a
   * row repeating an earlier id of the batch gets that row. If any row fails, none is stored.
   */
  insertOutboxMany(rows: readonly NewOutboxRow[]): Promise<{ inserted: boolean; row: OutboxRow }[]>
  getOutbox(id: string): Promise<OutboxRow | undefined>
  /**
   * Applies `patch` to row `id` if its state is one of `expect` (any state when absent). Resolves with
   * the row after the change, or `undefined` when the row is missing or its state did not match.
   */
  updateOutbox(
    id: string,
    patch: OutboxPatch,
    expect?: readonly OutboxState[],
  ): Promise<OutboxRow | undefined>
  /**
   * `updateOutbox` for many changes in one transaction (one commit): each change is a compare-and-set of
   * its own, applied in order, so a later change of the same id sees the earlier one; the results, in the
   * order of `changes`, are what the calls one after another would have resolved with (`undefined` for a
   * missing row or a state that did not match, which leaves the other changes alone). If a change fails
   * (a full disk), none is stored and the promise rejects.
   */
  updateOutboxMany(changes: readonly OutboxChange[]): Promise<(OutboxRow | undefined)[]>
  /**
   * `pending` rows whose `nextAttemptAt` ≤ `now`, oldest first, at most `limit`. "Oldest" is the order a
   * due-row index gives: by `nextAttemptAt`, then `createdAt`, then `id`.
   */
  dueOutbox(now: number, limit: number): Promise<OutboxRow[]>
  /**
   * Like `dueOutbox`, but in the same transaction moves the rows to `inflight` (`updatedAt = now`) and
   * resolves with them as they are after the move: one write for a batch of rows about to be dispatched.
   */
  claimDue(now: number, limit: number): Promise<OutboxRow[]>
  /** The earliest `nextAttemptAt` of a `pending` row, or undefined when none is pending. */
  nextDue(): Promise<number | undefined>
  /** Rows in the given states (for status and dead-letter listings), oldest first. */
  listOutbox(states: readonly OutboxState[], limit: number): Promise<OutboxRow[]>
  /** At start: every `inflight` row back to `pending`, due at `now`. Resolves with how many moved. */
  recoverInflight(now: number): Promise<number>
  /**
   * Requeues a `dead` row: in one transaction it becomes `aborted` with `requeuedAs = newRow.id` and
   * `newRow` is inserted `pending`. Resolves undefined when `id` is not `dead`.
   */
  requeueDead(id: string, newRow: NewOutboxRow, now: number): Promise<OutboxRow | undefined>
  /**
   * Deletes `done`, `aborted` and `dead` rows last updated before `before`, at most `limit` of them (all
   * when absent; the pruner passes a chunk size so one statement never holds the writer long). Resolves
   * with the count.
   */
  pruneOutbox(before: number, limit?: number): Promise<number>

  /** Inserts a row unless its `(mesh, recipient, from, clientMessageId)` exists (then: the existing row). */
  insertInbox(row: NewInboxRow): Promise<InboxInsert>
  /**
   * `insertInbox` for many rows in one transaction (one commit, so one fsync at most): the results in
   * the order of `rows`; a row repeating an earlier one of the batch is a duplicate of it.
   */
  insertInboxMany(rows: readonly NewInboxRow[]): Promise<InboxInsert[]>
  /** Rows for a reader, see `InboxQuery`. */
  readInbox(query: InboxQuery): Promise<InboxRow[]>
  /** Marks rows consumed; resolves with how many changed. */
  consumeInbox(mesh: string, seqs: readonly number[], at: number): Promise<number>
  /**
   * Deletes rows received before `before`, at most `limit` of them, oldest first (all when absent). The
   * caller keeps dedupe memory at least 7 days (`peer-runtime/store/janitor.ts`).
   */
  pruneInbox(before: number, limit?: number): Promise<number>

  /** Saves the verified mesh view of `view.mesh`, replacing the one saved before (upsert by mesh). */
  saveMeshView(view: SavedMeshView): Promise<void>
  /** The view saved for `mesh`, or undefined when none was. */
  loadMeshView(mesh: string): Promise<SavedMeshView | undefined>

  /** Stores an rpc callee's record, replacing the one with the same `(mesh, from, correlationId)`. */
  putRpcAnswer(row: RpcAnswerRow): Promise<void>
  /** The record for `(mesh, from, correlationId)`, expired or not (the caller compares `expiresAt`). */
  getRpcAnswer(mesh: string, from: Uint8Array, correlationId: string): Promise<RpcAnswerRow | undefined>
  /** Deletes records with `expiresAt` ≤ `now`, at most `limit` (all when absent). Resolves with the count. */
  pruneRpcAnswers(now: number, limit?: number): Promise<number>

  /** Closes the store; further calls reject with `MESH_ERR_STORE_CLOSED`. Idempotent. */
  close(): Promise<void>
}
