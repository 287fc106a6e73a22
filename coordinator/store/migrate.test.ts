import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { openStore } from './index.js'
import { loadMigrations, migrate, type Migration } from './migrate.js'
import { openTestStore, storeLegs, type TestStore } from './testing.js'
import type { Store } from './types.js'

describe.each(storeLegs())('migrations on %s', (driver) => {
  let store: TestStore
  beforeEach(async () => {
    store = await openTestStore(driver)
  })
  afterEach(async () => {
    await store.close()
  })

  it('applies missing migrations only, each file in full or not at all', async () => {
    const known = await loadMigrations()
    expect(await migrate(store, { now: 5 })).toEqual({ applied: [], version: known.length })
    const next = known.length + 1
    const extra: Migration = {
      version: next,
      name: 'extra',
      sql: 'create table extra_a (x int);\n-- two statements\ncreate table extra_b (y int);',
    }
    const broken: Migration = { ...extra, sql: 'create table extra_a (x int); select * from nowhere;' }
    await expect(migrate(store, { now: 6, migrations: [...known, broken] })).rejects.toMatchObject({
      code: '42P01',
    })
    expect(await store.query('select to_regclass($1) as t', ['extra_a'])).toEqual([{ t: null }])
    expect(await migrate(store, { now: 7, migrations: [...known, extra] })).toEqual({
      applied: [next],
      version: next,
    })
    const rows = await store.query('select version, name, applied_at from schema_migrations order by version')
    expect(rows.at(-1)).toEqual({ version: next, name: 'extra', applied_at: 7 })
  })

  it('migrates once: a second openStore applies nothing', async () => {
    const db = await persistentDatabase(store)
    try {
      const first = await db.open(1000)
      const before = await first.query('select version, applied_at from schema_migrations')
      expect(before).toHaveLength((await loadMigrations()).length)
      await first.close()
      const second = await db.open(2000)
      expect(await second.query('select version, applied_at from schema_migrations')).toEqual(before)
      expect(before.every((row) => row['applied_at'] !== 2000)).toBe(true)
      await second.close()
    } finally {
      await db.cleanup()
    }
  })

  it('refuses a schema newer than it knows with MESH_ERR_SCHEMA_TOO_NEW', async () => {
    const known = (await loadMigrations()).length
    const db = await persistentDatabase(store)
    try {
      const first = await db.open(1)
      await first.query('insert into schema_migrations values ($1, $2, $3)', [known + 5, 'future', 2])
      await first.close()
      await expect(db.open(3)).rejects.toMatchObject({
        name: 'MeshError',
        code: 'MESH_ERR_SCHEMA_TOO_NEW',
        details: { applied: known + 5, known },
      })
    } finally {
      await db.cleanup()
    }
  })
})

describe('loadMigrations', () => {
  it('reads the numbered files in order', async () => {
    const migrations = await loadMigrations()
    expect(migrations.map((m) => m.version)).toEqual(migrations.map((_, i) => i + 1))
    expect(migrations[0]).toMatchObject({
      version: 1,
      name: 'init',
      sql: expect.stringContaining('create table mesh'),
    })
  })
})

/** A database that outlives one store: a temp PGlite directory, or the Postgres leg's test schema. */
async function persistentDatabase(
  store: TestStore,
): Promise<{ open(now: number): Promise<Store>; cleanup(): Promise<void> }> {
  const pg = store.postgres
  if (pg !== undefined) {
    return { open: (now) => openStore({ ...pg, now: () => now }), cleanup: async () => {} }
  }
  const dir = await mkdtemp(join(tmpdir(), 'agentmesh-store-'))
  return {
    open: (now) => openStore({ dataDir: dir, now: () => now }),
    cleanup: () => rm(dir, { recursive: true, force: true }),
  }
}
