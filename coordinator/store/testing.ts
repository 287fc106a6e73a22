import { randomBytes } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import postgres from 'postgres'
import { migrate } from './migrate.js'
import { openPgliteStore, pgliteSnapshot } from './pglite.js'
import { openPostgresStore } from './postgres.js'
import type { ScriptStore, StoreDriver } from './types.js'

/**
 * The drivers a store-backed test must pass on (DESIGN.md §7): always PGlite, plus Postgres when
 * `DATABASE_URL` is set. Use with `describe.each(storeLegs())`.
 */
export function storeLegs(): StoreDriver[] {
  return databaseUrl() === undefined ? ['pglite'] : ['pglite', 'postgres']
}

/**
 * A store for one test, with what it takes to open the same database again. A `ScriptStore`, so store
 * tests can also drive `migrate` directly; plugin tests just use it as a `Store`.
 */
export interface TestStore extends ScriptStore {
  /** Postgres leg: the URL and the test's own schema; absent on PGlite (in memory, not reopenable). */
  readonly postgres?: { databaseUrl: string; schema: string }
}

/**
 * A migrated store on an empty database, for one test. PGlite: a fresh in-memory instance. Postgres: a
 * fresh schema `t_<random>` in `DATABASE_URL`'s database, dropped again by `close()`, so test files
 * running in parallel never see each other's rows. An unreachable server rejects (the test fails; it is
 * never skipped).
 */
export async function openTestStore(driver: StoreDriver): Promise<TestStore> {
  if (driver === 'pglite') {
    // Migrated once per run (test/global-setup.ts writes it to a file) or else once per test process,
    // then loaded for each test.
    migratedSnapshot ??= sharedSnapshot() ?? migratedPgliteSnapshot()
    return await openPgliteStore({ snapshot: await migratedSnapshot })
  }
  const url = databaseUrl()
  if (url === undefined) throw new Error('the postgres store leg needs DATABASE_URL')
  const schema = `t_${randomBytes(6).toString('hex')}`
  await withAdmin(url, (sql) => sql.unsafe(`create schema ${schema}`))
  let store: ScriptStore
  try {
    store = await openPostgresStore({ url, schema, maxConnections: 4 })
  } catch (err) {
    await dropSchema(url, schema)
    throw err
  }
  let closing: Promise<void> | undefined
  const close = (): Promise<void> => (closing ??= store.close().finally(() => dropSchema(url, schema)))
  try {
    await migrate(store, { now: 0 })
  } catch (err) {
    await close()
    throw err
  }
  return {
    driver: store.driver,
    postgres: { databaseUrl: url, schema },
    query: (text, params) => store.query(text, params),
    transaction: (fn) => store.transaction(fn),
    listen: (channel, onNotify) => store.listen(channel, onNotify),
    notify: (channel, payload) => store.notify(channel, payload),
    ping: () => store.ping(),
    close,
  }
}

let migratedSnapshot: Promise<Blob> | undefined

/** Where the test run's global setup left a migrated snapshot for every test process to load. */
export const SHARED_SNAPSHOT_ENV = 'AGENTMESH_TEST_PGLITE_SNAPSHOT'

/** A fresh in-memory PGlite database with every migration applied, dumped (see `pgliteSnapshot`). */
export function migratedPgliteSnapshot(): Promise<Blob> {
  return pgliteSnapshot((store) => migrate(store, { now: 0 }))
}

function sharedSnapshot(): Promise<Blob> | undefined {
  const path = process.env[SHARED_SNAPSHOT_ENV]
  if (path === undefined || path === '') return undefined
  return readFile(path).then((bytes) => new Blob([bytes]))
}

function databaseUrl(): string | undefined {
  return process.env['DATABASE_URL'] || undefined
}

async function dropSchema(url: string, schema: string): Promise<void> {
  await withAdmin(url, (sql) => sql.unsafe(`drop schema if exists ${schema} cascade`))
}

async function withAdmin(url: string, fn: (sql: postgres.Sql) => Promise<unknown>): Promise<void> {
  const sql = postgres(url, { max: 1, connect_timeout: 5, onnotice: () => {} })
  try {
    await fn(sql)
  } finally {
    await sql.end({ timeout: 1 })
  }
}
