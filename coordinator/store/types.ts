/**
 * The coordinator's store: one interface, two drivers (embedded PGlite, the default, and Postgres through
 * the `postgres` package) running the same PostgreSQL-15 SQL. Plugins write their SQL against `Sql`;
 * the drivers differ only in how they reach the database.
 *
 * Values come back normalised so that code never asks which driver it runs on: `bigint`/`int8` columns
 * as JS numbers (timestamps, offsets and versions all fit in 2^53), `bytea` as `Uint8Array`, `boolean`
 * as boolean, `NULL` as `null`. Parameters use `$1…$n`; a `Uint8Array` parameter binds as `bytea`.
 * `numeric` (what `sum()` of a bigint returns) stays a string on both drivers: cast it (`::bigint`).
 * No statement calls `NOW()`: every time is a parameter from the injected clock.
 */

/** A row as a driver returns it. */
export type Row = Record<string, unknown>

/** Runs parameterised SQL. Both a `Store` and a transaction handle are one. */
export interface Sql {
  /** Runs one statement and returns its rows (an empty array for statements without rows). */
  query<T extends Row = Row>(text: string, params?: readonly unknown[]): Promise<T[]>
}

/** A transaction handle: statements run inside the transaction until the callback settles. */
export type Tx = Sql

/** Which driver a store runs on. */
export type StoreDriver = 'pglite' | 'postgres'

export interface Store extends Sql {
  readonly driver: StoreDriver
  /**
   * Runs `fn` in one transaction: commit when it resolves, roll back when it throws (the error is
   * rethrown). Transactions on one store are serialised by the driver as the database requires; callers
   * keep them short.
   */
  transaction<T>(fn: (tx: Tx) => Promise<T>): Promise<T>
  /**
   * Postgres `LISTEN` on `channel`; `onNotify` gets each payload. Resolves to a function that stops
   * listening. PGlite supports it within one process (what tests of a single node need).
   */
  listen(channel: string, onNotify: (payload: string) => void): Promise<() => Promise<void>>
  /** `NOTIFY channel, payload` (payload ≤ 8,000 bytes). */
  notify(channel: string, payload: string): Promise<void>
  /** True when the database answers a trivial query (for `GET /health`). */
  ping(): Promise<boolean>
  /** Flushes what the driver buffers and closes it; later calls reject with `MESH_ERR_STORE_CLOSED`. */
  close(): Promise<void>
}

/** How to open a store. */
export interface OpenStoreOptions {
  /** Postgres connection URL; when absent the embedded PGlite store is used. */
  databaseUrl?: string
  /**
   * PGlite's data directory (created if missing, locked exclusively while open). Absent with no
   * `databaseUrl`: an in-memory PGlite (tests only; nothing survives the process).
   */
  dataDir?: string
  /** Postgres pool size (default 10). */
  maxConnections?: number
}

/**
 * A transaction handle that can also run a multi-statement script. Only migrations need it: plugins get
 * a plain `Tx` (one statement per call, as both drivers' extended protocol requires).
 */
export interface ScriptTx extends Tx {
  /** Runs `script` (several `;`-separated statements, no parameters) inside the transaction. */
  exec(script: string): Promise<void>
}

/** What a driver implements: a `Store` whose transactions hand out a `ScriptTx`. */
export interface ScriptStore extends Store {
  transaction<T>(fn: (tx: ScriptTx) => Promise<T>): Promise<T>
}
