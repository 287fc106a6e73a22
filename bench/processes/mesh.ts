/**
 * A coordinator process with a mesh on it, for load scenarios: starts `coordinator.ts` on PGlite (a fresh
 * data directory) or on Postgres (a fresh schema in `DATABASE_URL`'s database), creates a mesh through
 * the admin API and joins members through signed invites. `dispose()` stops the coordinator and removes
 * the directory or drops the schema.
 */
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import postgres from 'postgres'
import type { CoordinatorOptions, RateLimits } from '../../coordinator/options.js'
import {
  createIdentity,
  decode,
  encode,
  openInvite,
  seedOf,
  signInvite,
  signJoin,
  type Identity,
} from '../../protocol/index.js'
import type { ChildHandle, Children } from './child.js'
import type { CoordinatorConfig, CoordinatorReady } from './coordinator.js'
import type { StoreStats } from './timed-store.js'

/** Rate limits no bench reaches: the scenarios measure the relay, not the limiter. */
export const LIFTED_RATE: RateLimits = {
  messageBurst: 1e9,
  messagesPerSecond: 1e9,
  byteBurst: 1e15,
  bytesPerSecond: 1e15,
}

/** Limits for load: rates and queue quotas lifted, everything else the coordinator's default. */
export const LOAD_LIMITS: CoordinatorOptions['limits'] = {
  rate: LIFTED_RATE,
  queueMaxMessages: 1e9,
  queueMaxBytes: 1e15,
}

export type Driver = 'pglite' | 'postgres'

export interface BenchMesh {
  coordinator: ChildHandle<CoordinatorReady>
  driver: Driver
  mesh: string
  url: string
  wsUrl: string
  /** The mesh owner's key (what a runtime peer pins from its invite). */
  ownerPk: Uint8Array
  /** Joins `n` new members (a few in parallel); returns their identities. */
  join(n: number): Promise<Identity[]>
  /** The store's call timings since the last call (see timed-store.ts). */
  storeStats(): Promise<StoreStats>
  /** Postgres only: the URL and schema the coordinator works in. */
  postgres?: { url: string; schema: string }
  dispose(): Promise<void>
}

const ADMIN_TOKEN = 'bench-admin-token'

/** Starts a coordinator process on `driver` (Postgres needs `databaseUrl`) with a mesh on it. */
export async function startMesh(
  children: Children,
  o: { driver: Driver; databaseUrl?: string; limits?: CoordinatorOptions['limits']; nodeArgs?: string[] },
): Promise<BenchMesh> {
  const cleanups: (() => Promise<void>)[] = []
  const dispose = async (): Promise<void> => {
    // Last in, first out; each runs once, and a failure is told, not thrown (the others still run).
    for (let c = cleanups.pop(); c !== undefined; c = cleanups.pop()) {
      await c().catch((err: unknown) => process.stderr.write(`bench cleanup failed: ${String(err)}\n`))
    }
  }
  try {
    const config: CoordinatorConfig = { adminToken: ADMIN_TOKEN, limits: o.limits ?? LOAD_LIMITS }
    let pg: BenchMesh['postgres']
    if (o.driver === 'postgres') {
      if (o.databaseUrl === undefined) throw new Error('the postgres driver needs a database URL')
      const schema = `bench_${randomBytes(5).toString('hex')}`
      await admin(o.databaseUrl, `create schema ${schema}`)
      cleanups.push(() => admin(o.databaseUrl!, `drop schema if exists ${schema} cascade`))
      Object.assign(config, { databaseUrl: o.databaseUrl, schema })
      pg = { url: o.databaseUrl, schema }
    } else {
      const dataDir = await mkdtemp(join(tmpdir(), 'agentmesh-bench-'))
      cleanups.push(() => rm(dataDir, { recursive: true, force: true }))
      config.dataDir = dataDir
    }
    // AGENTMESH_BENCH_CPU_PROF=<dir>: the coordinator writes a V8 CPU profile there when it stops.
    const profDir = process.env['AGENTMESH_BENCH_CPU_PROF']
    const nodeArgs = [...(o.nodeArgs ?? []), ...(profDir ? ['--cpu-prof', `--cpu-prof-dir=${profDir}`] : [])]
    const coordinator = await children.start<CoordinatorReady>(`coordinator (${o.driver})`, 'coordinator', {
      env: { AGENTMESH_BENCH_COORDINATOR: JSON.stringify(config) },
      nodeArgs,
    })
    cleanups.push(() => coordinator.stop())
    const { url, wsUrl, coordinatorPk } = coordinator.ready
    const mesh = `bench-${randomBytes(3).toString('hex')}`
    const owner = createIdentity('member')
    await postMsgpack(
      `${url}/v1/meshes`,
      { mesh, ownerPk: owner.publicKey, displayName: 'owner' },
      ADMIN_TOKEN,
    )

    const joinOne = async (): Promise<Identity> => {
      const newcomer = createIdentity('member')
      const invite = signInvite({
        identity: owner,
        mesh,
        coordinatorUrl: url,
        coordinatorPk,
        ownerPk: owner.publicKey,
        role: 'member',
        expiresAt: Date.now() + 3_600_000,
        maxUses: 1,
      })
      const join = signJoin({ identity: newcomer, inviteId: openInvite(invite).inviteId })
      await postMsgpack(`${url}/v1/meshes/${mesh}/join`, { invite, join })
      return newcomer
    }
    return {
      coordinator,
      driver: o.driver,
      mesh,
      url,
      wsUrl,
      ownerPk: owner.publicKey,
      ...(pg !== undefined && { postgres: pg }),
      async join(n) {
        const out: Identity[] = []
        while (out.length < n) {
          const k = Math.min(4, n - out.length)
          out.push(...(await Promise.all(Array.from({ length: k }, joinOne))))
        }
        return out
      },
      storeStats: () => coordinator.run<StoreStats>('storeStats'),
      dispose,
    }
  } catch (err) {
    await dispose()
    throw err
  }
}

/** The seed a child rebuilds a member identity from. */
export function seedFor(identity: Identity): Uint8Array {
  return seedOf(identity.secretKey)
}

/** POSTs a msgpack body to the management API; throws unless the status is 2xx. */
async function postMsgpack(url: string, body: unknown, token?: string): Promise<unknown> {
  const res = await fetch(url, {
    method: 'POST',
    headers: {
      'content-type': 'application/msgpack',
      accept: 'application/msgpack',
      ...(token !== undefined && { authorization: `Bearer ${token}` }),
    },
    body: new Uint8Array(encode(body)),
    signal: AbortSignal.timeout(30_000),
  })
  const bytes = new Uint8Array(await res.arrayBuffer())
  const reply = bytes.length === 0 ? undefined : decode(bytes)
  if (!res.ok) throw new Error(`POST ${url}: ${res.status} ${JSON.stringify(reply)}`)
  return reply
}

async function admin(url: string, statement: string): Promise<void> {
  const sql = postgres(url, { max: 1, connect_timeout: 10, onnotice: () => {} })
  try {
    await sql.unsafe(statement)
  } finally {
    await sql.end({ timeout: 2 })
  }
}
