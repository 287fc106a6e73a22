import { readdir, readFile } from 'node:fs/promises'
import { MeshError } from '../../protocol/errors.js'
import type { ScriptStore } from './types.js'

/** One numbered, forward-only schema change: `migrations/NNN_name.sql`. */
export interface Migration {
  version: number
  name: string
  sql: string
}

/**
 * Where the SQL files are. Relative to this module under tsx and vitest (`coordinator/store/`); in the
 * CLI bundle this module's code lives in `dist/cli.js`, and scripts/build.mjs copies the files to
 * `dist/migrations/`, so the same relative URL finds them there.
 */
export const MIGRATIONS_DIR = new URL('./migrations/', import.meta.url)

/**
 * Key of the transaction-scoped advisory lock that serialises migrations, so several coordinators
 * starting on one Postgres database apply each migration once. ASCII "agm1"; any constant will do.
 */
export const MIGRATION_LOCK_KEY = 0x61676d31

const FILE_NAME = /^(\d{3})_([a-z0-9_]+)\.sql$/

/** Reads the migration files, in version order; versions must run 1, 2, 3… without gaps or repeats. */
export async function loadMigrations(dir: URL = MIGRATIONS_DIR): Promise<Migration[]> {
  const names = (await readdir(dir)).filter((name) => name.endsWith('.sql')).sort()
  const migrations: Migration[] = []
  for (const file of names) {
    const match = FILE_NAME.exec(file)
    if (match === null) throw badMigrations(`migration file ${file} is not named NNN_name.sql`)
    const version = Number(match[1])
    if (version !== migrations.length + 1) {
      throw badMigrations(`migration ${file} breaks the sequence (expected version ${migrations.length + 1})`)
    }
    migrations.push({ version, name: match[2] ?? '', sql: await readFile(new URL(file, dir), 'utf8') })
  }
  if (migrations.length === 0) throw badMigrations(`no migration files in ${dir.href}`)
  return migrations
}

/** What `migrate` did. */
export interface MigrateResult {
  /** Versions applied by this call, ascending (empty when the schema was current). */
  applied: number[]
  /** The schema version now in force. */
  version: number
}

/**
 * Applies every migration not yet recorded in `schema_migrations`, all in one transaction under an
 * advisory lock, stamping each with `now` (the injected clock; SQL never calls NOW()). Refuses with
 * `MESH_ERR_SCHEMA_TOO_NEW` (details `{ applied, known }`) when the database holds a version newer than
 * the newest migration this build knows: a newer coordinator changed it, and running against it could
 * lose data.
 */
export async function migrate(
  store: ScriptStore,
  opts: { now: number; migrations?: readonly Migration[] },
): Promise<MigrateResult> {
  const migrations = opts.migrations ?? (await loadMigrations())
  const known = migrations.at(-1)?.version ?? 0
  return await store.transaction(async (tx) => {
    await tx.query('select pg_advisory_xact_lock($1)', [MIGRATION_LOCK_KEY])
    await tx.query(
      'create table if not exists schema_migrations (version int primary key, name text not null, ' +
        'applied_at bigint not null)',
    )
    const rows = await tx.query<{ version: number }>('select version from schema_migrations')
    const done = new Set(rows.map((row) => row.version))
    const newest = Math.max(0, ...done)
    if (newest > known) {
      throw new MeshError(
        'MESH_ERR_SCHEMA_TOO_NEW',
        `the database schema is at version ${newest}, newer than the ${known} this coordinator knows; ` +
          'upgrade agentmesh',
        { details: { applied: newest, known } },
      )
    }
    const applied: number[] = []
    for (const migration of migrations) {
      if (done.has(migration.version)) continue
      await tx.exec(migration.sql)
      await tx.query('insert into schema_migrations (version, name, applied_at) values ($1, $2, $3)', [
        migration.version,
        migration.name,
        opts.now,
      ])
      applied.push(migration.version)
    }
    return { applied, version: known }
  })
}

function badMigrations(message: string): MeshError {
  return new MeshError('MESH_ERR_INTERNAL', message)
}
