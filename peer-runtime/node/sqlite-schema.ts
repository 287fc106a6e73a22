/**
 * The runtime store's SQLite schema, as forward-only migrations (DESIGN.md §5). `PRAGMA user_version`
 * holds how many have been applied; opening a file applies the missing ones in one `BEGIN IMMEDIATE`
 * transaction, so a crash (or a full disk) mid-upgrade leaves the file at its old version, whole. A
 * file whose version is higher than this build knows is refused with `MESH_ERR_SCHEMA_TOO_NEW`.
 *
 * A migration, once released, never changes: files in the field were written by it. Add a new one.
 */
import type Database from 'better-sqlite3'
import { MeshError } from '../../protocol/errors.js'

/** Schema 1: the outbox and the inbox. Kept verbatim: schema-1 files were made by exactly this. */
export const SCHEMA_V1 = `
CREATE TABLE outbox (
  id TEXT PRIMARY KEY,
  mesh TEXT NOT NULL,
  from_pk BLOB NOT NULL,
  target TEXT NOT NULL,
  channel TEXT NOT NULL,
  envelope BLOB NOT NULL,
  state TEXT NOT NULL,
  attempts INTEGER NOT NULL,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  next_attempt_at INTEGER NOT NULL,
  last_error TEXT,
  recipients TEXT,
  fingerprint BLOB,
  session_id TEXT,
  requeued_as TEXT
);
-- The scheduler's question: which pending rows are due, in order. Queries name it (INDEXED BY): without
-- statistics the planner would take outbox_state and sort every pending row.
CREATE INDEX outbox_due ON outbox (next_attempt_at, created_at, id) WHERE state = 'pending';
-- Listings by state, recovery of inflight rows, pruning.
CREATE INDEX outbox_state ON outbox (state, created_at, id);

CREATE TABLE inbox (
  -- AUTOINCREMENT: a seq is never reused, even after every row was pruned (readers hold cursors).
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  mesh TEXT NOT NULL,
  recipient_pk BLOB NOT NULL,
  from_pk BLOB NOT NULL,
  client_message_id TEXT NOT NULL,
  channel TEXT NOT NULL,
  delivery_id TEXT,
  via TEXT NOT NULL,
  envelope BLOB NOT NULL,
  payload BLOB,
  status TEXT NOT NULL,
  received_at INTEGER NOT NULL,
  consumed_at INTEGER,
  UNIQUE (mesh, recipient_pk, from_pk, client_message_id)
);
CREATE INDEX inbox_reader ON inbox (mesh, recipient_pk, seq);
CREATE INDEX inbox_received ON inbox (received_at);
`

/**
 * Schema 2: the saved mesh view (fast restart), the rpc callee's answers (at most once across
 * restarts), and an index for the pruner's chunked deletes of finished outbox rows.
 */
export const SCHEMA_V2 = `
CREATE TABLE mesh_view (
  mesh TEXT PRIMARY KEY,
  version INTEGER NOT NULL,
  snapshot BLOB NOT NULL,
  saved_at INTEGER NOT NULL
);

CREATE TABLE rpc_answers (
  mesh TEXT NOT NULL,
  from_pk BLOB NOT NULL,
  correlation_id TEXT NOT NULL,
  -- NULL while the handler runs: a request found so after a restart is not run again.
  answer BLOB,
  expires_at INTEGER NOT NULL,
  PRIMARY KEY (mesh, from_pk, correlation_id)
);
CREATE INDEX rpc_answers_expiry ON rpc_answers (expires_at);

-- The pruner deletes finished rows by age, a chunk at a time: this keeps each chunk a range scan.
CREATE INDEX outbox_finished ON outbox (updated_at) WHERE state IN ('done', 'aborted', 'dead');
`

/**
 * Schema 3: an outbox row records the transport that took it to `accepted` or `done` (`OutboxRow.via`:
 * `p2p` or `relay`). NULL on the rows a schema-2 build left, finished or not: nothing tells which it was.
 */
export const SCHEMA_V3 = `
ALTER TABLE outbox ADD COLUMN via TEXT;
`

/** The migrations in order: `MIGRATIONS[i]` takes a file from version `i` to `i + 1`. */
export const MIGRATIONS: readonly string[] = [SCHEMA_V1, SCHEMA_V2, SCHEMA_V3]

/** The schema version this build writes and reads (`PRAGMA user_version`). */
export const SQLITE_SCHEMA_VERSION = MIGRATIONS.length

function userVersion(db: Database.Database): number {
  return db.pragma('user_version', { simple: true }) as number
}

function tooNew(version: number): MeshError {
  return new MeshError(
    'MESH_ERR_SCHEMA_TOO_NEW',
    `the runtime store has schema version ${version}; this build knows up to ${SQLITE_SCHEMA_VERSION}`,
    { details: { applied: version, known: SQLITE_SCHEMA_VERSION } },
  )
}

/**
 * Brings `db` to `SQLITE_SCHEMA_VERSION`: every missing migration in one immediate transaction (the
 * version is read again inside it, so an opener that raced another sees the other's work). Returns
 * with the version the file had before. Throws `MESH_ERR_SCHEMA_TOO_NEW` for a newer file.
 */
export function migrate(db: Database.Database): number {
  const before = userVersion(db)
  if (before > SQLITE_SCHEMA_VERSION) throw tooNew(before)
  if (before === SQLITE_SCHEMA_VERSION) return before
  return db
    .transaction(() => {
      const from = userVersion(db)
      if (from > SQLITE_SCHEMA_VERSION) throw tooNew(from)
      for (let v = from; v < SQLITE_SCHEMA_VERSION; v++) db.exec(MIGRATIONS[v] as string)
      db.pragma(`user_version = ${SQLITE_SCHEMA_VERSION}`)
      return from
    })
    .immediate()
}
