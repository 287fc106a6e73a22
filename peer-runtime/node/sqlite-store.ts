/**
 * The durable `RuntimeStore` on better-sqlite3 (DESIGN.md §5): one database file per runtime, in WAL
 * mode, every write a transaction that has committed before its promise resolves.
 *
 * Durability tiers (`synchronous`):
 * - `'normal'` (the default): in WAL mode SQLite syncs the log only at checkpoints, so a committed write
 *   survives a crash of the process (`kill -9`) but the last commits may be lost to a power loss or a
 *   kernel crash. Commits cost tens of microseconds.
 * - `'full'`: the log is synced at every commit, so a committed write also survives a power loss. Each
 *   commit then waits for the disk (about a millisecond or more); batch writes (`insertOutboxMany`,
 *   `updateOutboxMany`, `insertInboxMany`, `claimDue`) to share one sync.
 *
 * The store belongs to one process: two runtimes on one file would each dispatch the other's outbox
 * rows. Opening takes `<path>.lock` (`pid-lock.ts`) before touching the database; a second opener, in
 * another process or in this one, gets `MESH_ERR_STORE_LOCKED` naming the holder's pid, and a lock left
 * by a dead process is taken over. `close()` releases it. The file is created 0600 in a directory created
 * 0700 (SQLite gives its `-wal` and `-shm` files the database file's mode), and an existing file is
 * narrowed to 0600.
 *
 * The schema carries its version in `PRAGMA user_version` and migrates forward in one transaction
 * (`sqlite-schema.ts`); a file written by a newer build is refused with `MESH_ERR_SCHEMA_TOO_NEW`. A
 * write that finds the disk full (`SQLITE_FULL`) rejects with `MESH_ERR_STORE_FULL` and stores nothing;
 * writes succeed again once there is room. better-sqlite3 is synchronous: each call runs to completion on the
 * calling thread, so statements are prepared once and kept small (the due-row index makes `claimDue`
 * cost what it returns).
 */
import { chmodSync, closeSync, mkdirSync, openSync } from 'node:fs'
import { dirname, resolve } from 'node:path'
import Database from 'better-sqlite3'
import { newInboxRow, newOutboxRow } from '../store/rows.js'
import { acquirePidLock, type PidLock } from './pid-lock.js'
import { migrate } from './sqlite-schema.js'
import type { Channel } from '../../protocol/envelope.js'
import { toHex } from '../../protocol/encoding.js'
import { isMeshError, MeshError } from '../../protocol/errors.js'
import type {
  InboxAckStatus,
  InboxInsert,
  InboxQuery,
  InboxRow,
  NewInboxRow,
  NewOutboxRow,
  OutboxChange,
  OutboxPatch,
  OutboxRow,
  OutboxState,
  OutboxVia,
  RecipientState,
  RowError,
  RpcAnswerRow,
  RuntimeStore,
  SavedMeshView,
} from '../store/types.js'

/** Options of `sqliteStore`. */
export interface SqliteStoreOptions {
  /** The database file; its directory is created (0700) when missing. */
  path: string
  /** `'normal'` survives a process crash; `'full'` also survives a power loss, slower. Default normal. */
  synchronous?: 'normal' | 'full'
}

export { SQLITE_SCHEMA_VERSION } from './sqlite-schema.js'

const DEFAULT_INBOX_LIMIT = 100

interface OutboxRecord {
  id: string
  mesh: string
  from_pk: Buffer
  target: string
  channel: string
  envelope: Buffer
  state: string
  attempts: number
  created_at: number
  updated_at: number
  next_attempt_at: number
  last_error: string | null
  recipients: string | null
  fingerprint: Buffer | null
  session_id: string | null
  requeued_as: string | null
  via: string | null
}

interface InboxRecord {
  seq: number
  mesh: string
  recipient_pk: Buffer
  from_pk: Buffer
  client_message_id: string
  channel: string
  delivery_id: string | null
  via: string
  envelope: Buffer
  payload: Buffer | null
  status: string
  received_at: number
  consumed_at: number | null
}

/** A plain `Uint8Array` view of a Buffer, so rows compare equal across drivers. */
function bytes(buffer: Buffer): Uint8Array {
  return new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength)
}

function toOutboxRow(r: OutboxRecord): OutboxRow {
  const row: OutboxRow = {
    id: r.id,
    mesh: r.mesh,
    from: bytes(r.from_pk),
    target: r.target,
    channel: r.channel as Channel,
    envelope: bytes(r.envelope),
    state: r.state as OutboxState,
    attempts: r.attempts,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    nextAttemptAt: r.next_attempt_at,
  }
  if (r.last_error !== null) row.lastError = JSON.parse(r.last_error) as RowError
  if (r.recipients !== null) row.recipients = JSON.parse(r.recipients) as Record<string, RecipientState>
  if (r.fingerprint !== null) row.fingerprint = bytes(r.fingerprint)
  if (r.session_id !== null) row.sessionId = r.session_id
  if (r.requeued_as !== null) row.requeuedAs = r.requeued_as
  if (r.via !== null) row.via = r.via as OutboxVia
  return row
}

interface MeshViewRecord {
  mesh: string
  version: number
  snapshot: Buffer
  saved_at: number
}

interface RpcAnswerRecord {
  mesh: string
  from_pk: Buffer
  correlation_id: string
  answer: Buffer | null
  expires_at: number
}

function toRpcAnswerRow(r: RpcAnswerRecord): RpcAnswerRow {
  const row: RpcAnswerRow = {
    mesh: r.mesh,
    from: bytes(r.from_pk),
    correlationId: r.correlation_id,
    expiresAt: r.expires_at,
  }
  if (r.answer !== null) row.answer = bytes(r.answer)
  return row
}

/** A statement's `LIMIT` for an optional chunk size: -1 is SQLite's "no limit". */
function sqlLimit(limit: number | undefined): number {
  return limit === undefined ? -1 : Math.max(0, Math.floor(limit))
}

function toInboxRow(r: InboxRecord): InboxRow {
  const row: InboxRow = {
    seq: r.seq,
    mesh: r.mesh,
    recipient: bytes(r.recipient_pk),
    from: bytes(r.from_pk),
    clientMessageId: r.client_message_id,
    channel: r.channel as Channel,
    via: r.via,
    envelope: bytes(r.envelope),
    status: r.status as InboxAckStatus,
    receivedAt: r.received_at,
  }
  if (r.delivery_id !== null) row.deliveryId = r.delivery_id
  if (r.payload !== null) row.payload = bytes(r.payload)
  if (r.consumed_at !== null) row.consumedAt = r.consumed_at
  return row
}

/** The due-row order (as the `outbox_due` index sorts), for rows an UPDATE … RETURNING gave unsorted. */
function dueOrder(a: OutboxRow, b: OutboxRow): number {
  return (
    a.nextAttemptAt - b.nextAttemptAt || a.createdAt - b.createdAt || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)
  )
}

/** `,a,b,`: the form the `instr(…)` state tests take, so one statement serves every `expect` list. */
function stateList(states: readonly OutboxState[]): string {
  return `,${states.join(',')},`
}

const ALL_STATES = stateList(['pending', 'inflight', 'accepted', 'done', 'dead', 'aborted'])

/** How long a statement waits for another connection's write lock before failing (`busy_timeout`). */
const BUSY_TIMEOUT_MS = 5_000

/** The lock file of the store at `path`: `<path>.lock`. */
export function storeLockPath(path: string): string {
  return `${path}.lock`
}

function lockedError(path: string, pid: number | undefined): MeshError {
  const who = pid === undefined ? 'another process' : pid === process.pid ? 'this process' : `pid ${pid}`
  return new MeshError(
    'MESH_ERR_STORE_LOCKED',
    `the runtime store ${path} is in use by ${who}; one process opens a store at a time ` +
      '(is a daemon or a `listen` running on this home?)',
    { details: pid === undefined ? { path } : { path, pid } },
  )
}

/** A driver error as a `MeshError`: `SQLITE_FULL` is `MESH_ERR_STORE_FULL`, anything else unavailable. */
function storeError(err: unknown, message: string): MeshError {
  const code = typeof err === 'object' && err !== null && 'code' in err ? err.code : undefined
  if (code === 'SQLITE_FULL') {
    return new MeshError(
      'MESH_ERR_STORE_FULL',
      `${message}: the disk (or the store's size limit) is full; nothing of this write was stored`,
      { cause: err },
    )
  }
  return new MeshError('MESH_ERR_STORE_UNAVAILABLE', message, { cause: err })
}

/** The sqlite driver's store: a `RuntimeStore`, plus a size cap. */
export interface SqliteRuntimeStore extends RuntimeStore {
  /** The database file. */
  readonly path: string
  /**
   * Caps the database at `pages` pages (`PRAGMA max_page_count`; SQLite never sets it below the file's
   * current size) and returns the cap in effect. A write that would grow past it fails as on a full
   * disk, with `MESH_ERR_STORE_FULL`: an operator's quota, and how tests fill the disk.
   */
  setMaxPageCount(pages: number): number
  /** The database's size in pages (`PRAGMA page_count`), free pages included. */
  pageCount(): number
}

/** The stores this process has open, by resolved path. */
const openStores = new Map<string, SqliteRuntimeStore>()

/** The store this process has open on `path`, if any (one opener per file: see the lock above). */
export function openSqliteStoreAt(path: string): SqliteRuntimeStore | undefined {
  return openStores.get(resolve(path))
}

/** Opens (creating if needed) the runtime's database at `path`. Throws a `MeshError` when it cannot. */
export function sqliteStore(options: SqliteStoreOptions): SqliteRuntimeStore {
  const store = new SqliteStore(options)
  openStores.set(resolve(options.path), store)
  return store
}

class SqliteStore implements SqliteRuntimeStore {
  readonly durability = 'durable' as const
  readonly path: string
  readonly #db: Database.Database
  readonly #lock: PidLock
  #closed = false
  readonly #stmt: ReturnType<typeof prepare>
  /** `readInbox` statements by recipient count and `unconsumed`. */
  readonly #readers = new Map<string, Database.Statement>()
  readonly #insertOutboxTx: (rows: readonly NewOutboxRow[]) => { inserted: boolean; row: OutboxRow }[]
  readonly #insertInboxTx: (rows: readonly NewInboxRow[]) => InboxInsert[]
  readonly #updateOutboxTx: (changes: readonly OutboxChange[]) => (OutboxRow | undefined)[]
  readonly #claimTx: (now: number, limit: number) => OutboxRow[]
  readonly #requeueTx: (id: string, row: NewOutboxRow, now: number) => OutboxRow | undefined
  readonly #consumeTx: (mesh: string, seqs: readonly number[], at: number) => number

  constructor({ path, synchronous = 'normal' }: SqliteStoreOptions) {
    this.path = path
    let db: Database.Database | undefined
    let lock: PidLock | undefined
    try {
      mkdirSync(dirname(path), { recursive: true, mode: 0o700 })
      // The lock comes first: everything after it (creating the file, WAL, migrations) is done by one
      // process at a time. Two openers racing on a new file used to both see schema 0 and the loser
      // failed on `CREATE TABLE`.
      lock = acquirePidLock(storeLockPath(path), { held: (holder) => lockedError(path, holder?.pid) })
      closeSync(openSync(path, 'a', 0o600))
      chmodSync(path, 0o600)
      db = new Database(path, { timeout: BUSY_TIMEOUT_MS })
      const mode = db.pragma('journal_mode = WAL', { simple: true })
      if (mode !== 'wal') throw new Error(`journal_mode is ${String(mode)}, not wal`)
      db.pragma(`synchronous = ${synchronous === 'full' ? 'FULL' : 'NORMAL'}`)
      migrate(db)
      this.#db = db
      this.#lock = lock
      this.#stmt = prepare(db)
    } catch (err) {
      db?.close()
      lock?.release()
      if (isMeshError(err)) throw err
      throw storeError(err, `cannot open the runtime store ${path}`)
    }
    const stmt = this.#stmt
    db = this.#db
    this.#insertOutboxTx = db.transaction((rows: readonly NewOutboxRow[]) =>
      rows.map((row) => this.#insertOutboxRow(row)),
    )
    this.#insertInboxTx = db.transaction((rows: readonly NewInboxRow[]) =>
      rows.map((row) => this.#insertInboxRow(row)),
    )
    this.#updateOutboxTx = db.transaction((changes: readonly OutboxChange[]) =>
      changes.map(({ id, patch, expect }) => this.#updateOutboxRow(id, patch, expect)),
    )
    this.#claimTx = db.transaction((now: number, limit: number) =>
      (stmt.claimDue.all({ now, limit }) as OutboxRecord[]).map(toOutboxRow).sort(dueOrder),
    )
    this.#requeueTx = db.transaction((id: string, row: NewOutboxRow, now: number) => {
      if (stmt.outboxExists.get(row.id) !== undefined) {
        throw new MeshError('MESH_ERR_IDEMPOTENCY_CONFLICT', `outbox row ${row.id} already exists`)
      }
      if (stmt.abortDead.run({ id, requeuedAs: row.id, now }).changes === 0) return undefined
      stmt.insertOutbox.run(outboxParams(row))
      return newOutboxRow(row)
    })
    this.#consumeTx = db.transaction((mesh: string, seqs: readonly number[], at: number) => {
      let changed = 0
      for (const seq of seqs) changed += stmt.consumeInbox.run({ mesh, seq, at }).changes
      return changed
    })
  }

  async insertOutbox(row: NewOutboxRow): Promise<{ inserted: boolean; row: OutboxRow }> {
    return this.#run(() => this.#insertOutboxRow(row))
  }

  async insertOutboxMany(rows: readonly NewOutboxRow[]): Promise<{ inserted: boolean; row: OutboxRow }[]> {
    return this.#run(() => (rows.length === 0 ? [] : this.#insertOutboxTx(rows)))
  }

  async getOutbox(id: string): Promise<OutboxRow | undefined> {
    return this.#run(() => {
      const record = this.#stmt.getOutbox.get(id) as OutboxRecord | undefined
      return record === undefined ? undefined : toOutboxRow(record)
    })
  }

  async updateOutbox(
    id: string,
    patch: OutboxPatch,
    expect?: readonly OutboxState[],
  ): Promise<OutboxRow | undefined> {
    return this.#run(() => this.#updateOutboxRow(id, patch, expect))
  }

  async updateOutboxMany(changes: readonly OutboxChange[]): Promise<(OutboxRow | undefined)[]> {
    return this.#run(() => (changes.length === 0 ? [] : this.#updateOutboxTx(changes)))
  }

  async dueOutbox(now: number, limit: number): Promise<OutboxRow[]> {
    return this.#run(() => (this.#stmt.dueOutbox.all({ now, limit }) as OutboxRecord[]).map(toOutboxRow))
  }

  async claimDue(now: number, limit: number): Promise<OutboxRow[]> {
    return this.#run(() => this.#claimTx(now, limit))
  }

  async nextDue(): Promise<number | undefined> {
    return this.#run(() => this.#stmt.nextDue.get() as number | undefined)
  }

  async listOutbox(states: readonly OutboxState[], limit: number): Promise<OutboxRow[]> {
    return this.#run(() =>
      (this.#stmt.listOutbox.all({ states: stateList(states), limit }) as OutboxRecord[]).map(toOutboxRow),
    )
  }

  async recoverInflight(now: number): Promise<number> {
    return this.#run(() => this.#stmt.recoverInflight.run({ now }).changes)
  }

  async requeueDead(id: string, newRow: NewOutboxRow, now: number): Promise<OutboxRow | undefined> {
    return this.#run(() => this.#requeueTx(id, newRow, now))
  }

  async pruneOutbox(before: number, limit?: number): Promise<number> {
    return this.#run(() => this.#stmt.pruneOutbox.run({ before, limit: sqlLimit(limit) }).changes)
  }

  async insertInbox(row: NewInboxRow): Promise<InboxInsert> {
    return this.#run(() => this.#insertInboxRow(row))
  }

  async insertInboxMany(rows: readonly NewInboxRow[]): Promise<InboxInsert[]> {
    return this.#run(() => (rows.length === 0 ? [] : this.#insertInboxTx(rows)))
  }

  async readInbox(query: InboxQuery): Promise<InboxRow[]> {
    return this.#run(() => {
      const recipients = [...new Map(query.recipients.map((pk) => [toHex(pk), pk])).values()]
      const limit = Math.max(0, query.limit ?? DEFAULT_INBOX_LIMIT)
      if (recipients.length === 0 || limit === 0) return []
      const reader = this.#reader(recipients.length, query.unconsumed === true)
      const records = reader.all(query.mesh, ...recipients, query.afterSeq ?? 0, limit) as InboxRecord[]
      return records.map(toInboxRow)
    })
  }

  async consumeInbox(mesh: string, seqs: readonly number[], at: number): Promise<number> {
    return this.#run(() => this.#consumeTx(mesh, seqs, at))
  }

  async pruneInbox(before: number, limit?: number): Promise<number> {
    return this.#run(() => this.#stmt.pruneInbox.run({ before, limit: sqlLimit(limit) }).changes)
  }

  async saveMeshView(view: SavedMeshView): Promise<void> {
    this.#run(() => this.#stmt.saveMeshView.run(view))
  }

  async loadMeshView(mesh: string): Promise<SavedMeshView | undefined> {
    return this.#run(() => {
      const r = this.#stmt.loadMeshView.get(mesh) as MeshViewRecord | undefined
      return r === undefined
        ? undefined
        : { mesh: r.mesh, version: r.version, snapshot: bytes(r.snapshot), savedAt: r.saved_at }
    })
  }

  async putRpcAnswer(row: RpcAnswerRow): Promise<void> {
    this.#run(() =>
      this.#stmt.putRpcAnswer.run({
        mesh: row.mesh,
        from: row.from,
        correlationId: row.correlationId,
        answer: row.answer ?? null,
        expiresAt: row.expiresAt,
      }),
    )
  }

  async getRpcAnswer(
    mesh: string,
    from: Uint8Array,
    correlationId: string,
  ): Promise<RpcAnswerRow | undefined> {
    return this.#run(() => {
      const r = this.#stmt.getRpcAnswer.get({ mesh, from, correlationId }) as RpcAnswerRecord | undefined
      return r === undefined ? undefined : toRpcAnswerRow(r)
    })
  }

  async pruneRpcAnswers(now: number, limit?: number): Promise<number> {
    return this.#run(() => this.#stmt.pruneRpcAnswers.run({ now, limit: sqlLimit(limit) }).changes)
  }

  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    const key = resolve(this.path)
    if (openStores.get(key) === this) openStores.delete(key)
    try {
      this.#db.close()
    } finally {
      this.#lock.release()
    }
  }

  setMaxPageCount(pages: number): number {
    return this.#run(
      () => this.#db.pragma(`max_page_count = ${Math.floor(pages)}`, { simple: true }) as number,
    )
  }

  pageCount(): number {
    return this.#run(() => this.#db.pragma('page_count', { simple: true }) as number)
  }

  /**
   * Runs a synchronous database call; a full disk (or `max_page_count`) becomes `MESH_ERR_STORE_FULL`,
   * other driver failures `MESH_ERR_STORE_UNAVAILABLE`. Either way the statement or transaction was
   * rolled back: nothing of it is stored.
   */
  #run<T>(fn: () => T): T {
    if (this.#closed) throw new MeshError('MESH_ERR_STORE_CLOSED', 'the runtime store is closed')
    try {
      return fn()
    } catch (err) {
      if (isMeshError(err)) throw err
      throw storeError(err, 'the runtime store failed')
    }
  }

  #insertOutboxRow(row: NewOutboxRow): { inserted: boolean; row: OutboxRow } {
    if (this.#stmt.insertOutbox.run(outboxParams(row)).changes === 1) {
      return { inserted: true, row: newOutboxRow(row) }
    }
    return { inserted: false, row: toOutboxRow(this.#stmt.getOutbox.get(row.id) as OutboxRecord) }
  }

  #updateOutboxRow(
    id: string,
    patch: OutboxPatch,
    expect: readonly OutboxState[] | undefined,
  ): OutboxRow | undefined {
    const record = this.#stmt.updateOutbox.get({
      id,
      expect: expect === undefined ? ALL_STATES : stateList(expect),
      state: patch.state ?? null,
      attempts: patch.attempts ?? null,
      nextAttemptAt: patch.nextAttemptAt ?? null,
      setError: patch.lastError === undefined ? 0 : 1,
      lastError: patch.lastError == null ? null : JSON.stringify(patch.lastError),
      recipients: patch.recipients === undefined ? null : JSON.stringify(patch.recipients),
      via: patch.via ?? null,
      updatedAt: patch.updatedAt,
    }) as OutboxRecord | undefined
    return record === undefined ? undefined : toOutboxRow(record)
  }

  #insertInboxRow(row: NewInboxRow): InboxInsert {
    const params = inboxParams(row)
    const seq = this.#stmt.insertInbox.get(params) as number | undefined
    if (seq !== undefined) return { inserted: true, row: newInboxRow(row, seq) }
    return { inserted: false, row: toInboxRow(this.#stmt.findInbox.get(params) as InboxRecord) }
  }

  #reader(count: number, unconsumed: boolean): Database.Statement {
    const key = `${count}:${unconsumed}`
    let reader = this.#readers.get(key)
    if (reader === undefined) {
      reader = this.#db.prepare(
        `SELECT * FROM inbox WHERE mesh = ? AND recipient_pk IN (${Array(count).fill('?').join(', ')})
           AND seq > ?${unconsumed ? ' AND consumed_at IS NULL' : ''} ORDER BY seq LIMIT ?`,
      )
      this.#readers.set(key, reader)
    }
    return reader
  }
}

function prepare(db: Database.Database) {
  return {
    insertOutbox: db.prepare(
      `INSERT INTO outbox (id, mesh, from_pk, target, channel, envelope, state, attempts, created_at,
         updated_at, next_attempt_at, last_error, recipients, fingerprint, session_id)
       VALUES (@id, @mesh, @from, @target, @channel, @envelope, 'pending', 0, @createdAt, @createdAt,
         @nextAttemptAt, @lastError, @recipients, @fingerprint, @sessionId)
       ON CONFLICT (id) DO NOTHING`,
    ),
    outboxExists: db.prepare('SELECT 1 FROM outbox WHERE id = ?'),
    getOutbox: db.prepare('SELECT * FROM outbox WHERE id = ?'),
    updateOutbox: db.prepare(
      `UPDATE outbox SET
         state = coalesce(@state, state),
         attempts = coalesce(@attempts, attempts),
         next_attempt_at = coalesce(@nextAttemptAt, next_attempt_at),
         last_error = CASE WHEN @setError THEN @lastError ELSE last_error END,
         recipients = coalesce(@recipients, recipients),
         via = coalesce(@via, via),
         updated_at = @updatedAt
       WHERE id = @id AND instr(@expect, ',' || state || ',') > 0
       RETURNING *`,
    ),
    dueOutbox: db.prepare(
      `SELECT * FROM outbox INDEXED BY outbox_due WHERE state = 'pending' AND next_attempt_at <= @now
       ORDER BY next_attempt_at, created_at, id LIMIT @limit`,
    ),
    claimDue: db.prepare(
      `UPDATE outbox SET state = 'inflight', updated_at = @now
       WHERE id IN (SELECT id FROM outbox INDEXED BY outbox_due WHERE state = 'pending' AND next_attempt_at <= @now
                    ORDER BY next_attempt_at, created_at, id LIMIT @limit)
       RETURNING *`,
    ),
    nextDue: db
      .prepare(
        `SELECT next_attempt_at FROM outbox INDEXED BY outbox_due WHERE state = 'pending' ORDER BY next_attempt_at LIMIT 1`,
      )
      .pluck(),
    listOutbox: db.prepare(
      `SELECT * FROM outbox WHERE instr(@states, ',' || state || ',') > 0
       ORDER BY created_at, id LIMIT @limit`,
    ),
    recoverInflight: db.prepare(
      `UPDATE outbox SET state = 'pending', next_attempt_at = @now, updated_at = @now
       WHERE state = 'inflight'`,
    ),
    abortDead: db.prepare(
      `UPDATE outbox SET state = 'aborted', requeued_as = @requeuedAs, updated_at = @now
       WHERE id = @id AND state = 'dead'`,
    ),
    pruneOutbox: db.prepare(
      `DELETE FROM outbox WHERE rowid IN (
         SELECT rowid FROM outbox INDEXED BY outbox_finished
         WHERE state IN ('done', 'aborted', 'dead') AND updated_at < @before
         ORDER BY updated_at LIMIT @limit)`,
    ),
    insertInbox: db
      .prepare(
        `INSERT INTO inbox (mesh, recipient_pk, from_pk, client_message_id, channel, delivery_id, via,
         envelope, payload, status, received_at)
       VALUES (@mesh, @recipient, @from, @clientMessageId, @channel, @deliveryId, @via, @envelope,
         @payload, @status, @receivedAt)
       ON CONFLICT (mesh, recipient_pk, from_pk, client_message_id) DO NOTHING
       RETURNING seq`,
      )
      .pluck(),
    findInbox: db.prepare(
      `SELECT * FROM inbox WHERE mesh = @mesh AND recipient_pk = @recipient AND from_pk = @from
         AND client_message_id = @clientMessageId`,
    ),
    consumeInbox: db.prepare(
      `UPDATE inbox SET consumed_at = @at WHERE seq = @seq AND mesh = @mesh AND consumed_at IS NULL`,
    ),
    pruneInbox: db.prepare(
      `DELETE FROM inbox WHERE seq IN (
         SELECT seq FROM inbox WHERE received_at < @before ORDER BY seq LIMIT @limit)`,
    ),
    saveMeshView: db.prepare(
      `INSERT INTO mesh_view (mesh, version, snapshot, saved_at) VALUES (@mesh, @version, @snapshot, @savedAt)
       ON CONFLICT (mesh) DO UPDATE SET version = excluded.version, snapshot = excluded.snapshot,
         saved_at = excluded.saved_at`,
    ),
    loadMeshView: db.prepare('SELECT * FROM mesh_view WHERE mesh = ?'),
    putRpcAnswer: db.prepare(
      `INSERT INTO rpc_answers (mesh, from_pk, correlation_id, answer, expires_at)
       VALUES (@mesh, @from, @correlationId, @answer, @expiresAt)
       ON CONFLICT (mesh, from_pk, correlation_id) DO UPDATE SET answer = excluded.answer,
         expires_at = excluded.expires_at`,
    ),
    getRpcAnswer: db.prepare(
      'SELECT * FROM rpc_answers WHERE mesh = @mesh AND from_pk = @from AND correlation_id = @correlationId',
    ),
    pruneRpcAnswers: db.prepare(
      `DELETE FROM rpc_answers WHERE rowid IN (
         SELECT rowid FROM rpc_answers WHERE expires_at <= @now ORDER BY expires_at LIMIT @limit)`,
    ),
  }
}

function outboxParams(row: NewOutboxRow): Record<string, unknown> {
  return {
    id: row.id,
    mesh: row.mesh,
    from: row.from,
    target: row.target,
    channel: row.channel,
    envelope: row.envelope,
    createdAt: row.createdAt,
    nextAttemptAt: row.nextAttemptAt ?? row.createdAt,
    lastError: row.lastError === undefined ? null : JSON.stringify(row.lastError),
    recipients: row.recipients === undefined ? null : JSON.stringify(row.recipients),
    fingerprint: row.fingerprint ?? null,
    sessionId: row.sessionId ?? null,
  }
}

function inboxParams(row: NewInboxRow): Record<string, unknown> {
  return {
    mesh: row.mesh,
    recipient: row.recipient,
    from: row.from,
    clientMessageId: row.clientMessageId,
    channel: row.channel,
    deliveryId: row.deliveryId ?? null,
    via: row.via,
    envelope: row.envelope,
    payload: row.payload ?? null,
    status: row.status,
    receivedAt: row.receivedAt,
  }
}
