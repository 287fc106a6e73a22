/**
 * A set-up world to copy: a coordinator that created mesh `team` with alice and bob joined, stopped
 * cleanly. A first PGlite start runs initdb (15–20 s on a loaded 2-core machine) and the mesh set-up
 * runs four CLI processes; each run copies the template instead (the data directory and the homes;
 * on Postgres, `CREATE DATABASE … TEMPLATE`), so a run's time goes to its traffic and faults.
 */
import { cp, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import postgres from 'postgres'
import type { PgCluster } from '../support/pg-cluster.js'
import { ChaosWorld, type StoreKind } from './world.js'

export interface Template {
  store: StoreKind
  /** The template world's root (coordinator data directory and homes). */
  root: string
  /** On Postgres: the cluster and the template database. */
  pg?: { cluster: PgCluster; database: string }
}

let databases = 0

/** Creates a database on `cluster` (from `template` when given) and returns its URL. */
async function createDatabase(cluster: PgCluster, template?: string): Promise<{ name: string; url: string }> {
  const name = `chaos_${process.pid}_${databases++}`
  const sql = postgres(cluster.url, { max: 1, onnotice: () => {} })
  try {
    await sql.unsafe(`create database ${name}${template === undefined ? '' : ` template ${template}`}`)
  } finally {
    await sql.end({ timeout: 1 })
  }
  return { name, url: cluster.url.replace(/\/postgres$/, `/${name}`) }
}

/** Builds a template world on `store` (Postgres: a database on `cluster`). */
export async function makeTemplate(
  store: StoreKind,
  cluster?: PgCluster,
  log?: (text: string) => void,
): Promise<Template> {
  if (store === 'postgres' && cluster === undefined) throw new Error('a Postgres template needs a cluster')
  const db = cluster === undefined ? undefined : await createDatabase(cluster)
  const world = await ChaosWorld.create({
    store,
    ...(db !== undefined && { databaseUrl: db.url }),
    ...(log !== undefined && { log }),
  })
  try {
    await world.startCoordinator(120_000)
    await world.createMesh()
    const exit = await world.stopCoordinator()
    if (exit?.code !== 0)
      throw new Error(`the template's coordinator exited ${exit?.code}: ${world.coordinator?.stderr}`)
    const root = await mkdtemp(join(tmpdir(), 'agentmesh-chaos-template-'))
    await cp(world.root, root, { recursive: true })
    return { store, root, ...(db !== undefined && { pg: { cluster: cluster!, database: db.name } }) }
  } finally {
    await world.close()
  }
}

/** What a run starts from: a copy of the template's root, and on Postgres a database of its own. */
export async function instantiate(t: Template): Promise<{ from: string; databaseUrl?: string }> {
  if (t.pg === undefined) return { from: t.root }
  const db = await createDatabase(t.pg.cluster, t.pg.database)
  return { from: t.root, databaseUrl: db.url }
}

/** Removes the template's files (its database goes with its cluster). */
export async function dropTemplate(t: Template): Promise<void> {
  await rm(t.root, { recursive: true, force: true })
}
