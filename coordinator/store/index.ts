import { migrate } from './migrate.js'
import { openPgliteStore } from './pglite.js'
import { openPostgresStore } from './postgres.js'
import type { OpenStoreOptions, ScriptStore, Store } from './types.js'

export type { OpenStoreOptions, Row, Sql, Store, StoreDriver, Tx } from './types.js'
export { valuesPlaceholders, MAX_PARAMETERS } from './placeholders.js'

/** What `openStore` takes beyond `OpenStoreOptions`. */
export interface OpenStoreExtras {
  /** The clock that stamps `schema_migrations.applied_at` (default `Date.now`). */
  now?: () => number
  /** Postgres only: the schema to work in (`search_path`; a plain lower-case name). Tests use one per test. */
  schema?: string
}

/**
 * Opens the coordinator's store and brings its schema up to date: Postgres when `databaseUrl` is set,
 * else PGlite (in `dataDir`, locked while open; in memory without one). Fails with
 * `MESH_ERR_STORE_UNAVAILABLE`, `MESH_ERR_STORE_LOCKED` or `MESH_ERR_SCHEMA_TOO_NEW`, and then leaves
 * nothing open.
 */
export async function openStore(opts: OpenStoreOptions & OpenStoreExtras = {}): Promise<Store> {
  const store: ScriptStore =
    opts.databaseUrl !== undefined
      ? await openPostgresStore({
          url: opts.databaseUrl,
          ...(opts.maxConnections === undefined ? {} : { maxConnections: opts.maxConnections }),
          ...(opts.schema === undefined ? {} : { schema: opts.schema }),
        })
      : await openPgliteStore(opts.dataDir === undefined ? {} : { dataDir: opts.dataDir })
  try {
    await migrate(store, { now: (opts.now ?? Date.now)() })
  } catch (err) {
    await store.close()
    throw err
  }
  return store
}
