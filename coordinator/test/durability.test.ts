/**
 * What a `send_ack{queued}` promises: the message is committed. The coordinator runs as the real binary
 * in a child process; 1,000 DMs to an offline session are acked `queued`, the process is killed with
 * SIGKILL (no shutdown, no flush), and a restart on the same store delivers every one of them, once.
 */
import { randomBytes } from 'node:crypto'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import postgres from 'postgres'
import { afterEach, describe, expect, it } from 'vitest'
import {
  fromHex,
  initCrypto,
  isMeshError,
  openEnvelope,
  sealDirect,
  ulidFactory,
  type Envelope,
  type FrameOf,
  type Identity,
} from '../../protocol/index.js'
import { startCoordinator, type RunningCoordinator } from '../../test/support/coordinator-process.js'
import { eventually } from '../../test/support/eventually.js'
import { MeshClient, type ConnectOptions } from '../../test/support/mesh-client.js'
import {
  httpMsgpack,
  invite,
  joinRecord,
  newOwner,
  session,
  type AttestedKey,
} from '../../test/support/mesh-fixture.js'
import { storeLegs } from '../store/testing.js'
import type { StoreDriver } from '../store/types.js'

const MESH = 'durability'
const MESSAGES = 1000
const IN_FLIGHT = 100
const nextId = ulidFactory()

/** The store a leg's coordinator runs on: PGlite in the data dir, or a database of its own on Postgres. */
interface LegStore {
  args: string[]
  drop(): Promise<void>
}

async function legStore(driver: StoreDriver): Promise<LegStore> {
  if (driver === 'pglite') return { args: [], drop: async () => {} }
  const url = process.env['DATABASE_URL']
  if (!url) throw new Error('the postgres leg needs DATABASE_URL')
  const name = `agentmesh_dur_${randomBytes(6).toString('hex')}`
  const admin = (statement: string) => withSql(url, (sql) => sql.unsafe(statement))
  await admin(`create database ${name}`)
  const own = new URL(url)
  own.pathname = `/${name}`
  return {
    args: ['--database-url', own.toString()],
    drop: () => admin(`drop database if exists ${name} with (force)`),
  }
}

async function withSql(url: string, fn: (sql: postgres.Sql) => Promise<unknown>): Promise<void> {
  const sql = postgres(url, { max: 1, connect_timeout: 5, onnotice: () => {} })
  try {
    await fn(sql)
  } finally {
    await sql.end({ timeout: 1 })
  }
}

function sessionHello(s: AttestedKey<'session'>): ConnectOptions {
  return {
    identity: s.identity,
    mesh: MESH,
    role: 'session',
    attestation: s.attestation,
    sessionId: s.sessionId,
    timeoutMs: 10_000,
  }
}

/** Sends every envelope with at most `inFlight` awaiting their ack; rate-limited sends wait and retry. */
async function sendAll(client: MeshClient, envs: Envelope[], inFlight: number) {
  const acks: FrameOf<'send_ack'>[] = []
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < envs.length) {
      const i = next++
      for (;;) {
        try {
          acks[i] = await client.sendEnvelope(envs[i]!, { timeoutMs: 20_000 })
          break
        } catch (err) {
          if (!isMeshError(err, 'MESH_ERR_RATE_LIMITED')) throw err
          // The CLI runs the default limits (burst 200, 100/s): honour retryAfterMs, as a runtime would.
          await sleep(Number(err.details?.['retryAfterMs'] ?? 100))
        }
      }
    }
  }
  await Promise.all(Array.from({ length: inFlight }, worker))
  return acks
}

/** The `agentmesh_queue_depth` sample of `GET /metrics`: how many deliveries are stored. */
async function queueDepth(url: string): Promise<string | undefined> {
  const text = await (await fetch(`${url}/metrics`, { signal: AbortSignal.timeout(5000) })).text()
  return /^agentmesh_queue_depth (\d+)$/m.exec(text)?.[1]
}

describe.each(storeLegs())('a coordinator killed with SIGKILL (%s)', (driver) => {
  let dataDir: string | undefined
  let store: LegStore | undefined
  const children: RunningCoordinator[] = []
  const clients: MeshClient[] = []

  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.terminate()))
    await Promise.all(children.splice(0).map((c) => c.process.stop('SIGKILL')))
    await store?.drop()
    if (dataDir !== undefined) await rm(dataDir, { recursive: true, force: true })
  }, 30_000)

  async function start(args: string[]): Promise<RunningCoordinator> {
    const c = await startCoordinator(args)
    children.push(c)
    return c
  }

  async function connect(url: string, s: AttestedKey<'session'>): Promise<MeshClient> {
    const c = await MeshClient.connect(url, sessionHello(s))
    clients.push(c)
    return c
  }

  it(`loses none of ${MESSAGES} DMs acked queued before the crash, and delivers none twice`, async () => {
    await initCrypto()
    dataDir = await mkdtemp(join(tmpdir(), 'agentmesh-dur-'))
    store = await legStore(driver)
    const args = ['--data-dir', dataDir, ...store.args]
    const before = await start(args)
    const { url } = before.ready
    expect(before.ready.driver).toBe(driver)

    // A mesh created with the admin token the coordinator wrote into its data dir, and two members.
    const token = (await readFile(join(dataDir, 'admin-token'), 'utf8')).trim()
    const owner = newOwner()
    const created = await httpMsgpack(`${url}/v1/meshes`, {
      method: 'POST',
      token,
      body: { mesh: MESH, ownerPk: owner.publicKey },
    })
    expect(created.status, JSON.stringify(created.body)).toBe(201)
    const join_ = async (): Promise<Identity> => {
      const member = newOwner()
      const inv = invite({
        signer: owner,
        mesh: MESH,
        coordinatorUrl: url,
        coordinatorPk: fromHex(before.ready.coordinatorPk)!,
        ownerPk: owner.publicKey,
      })
      const res = await httpMsgpack(`${url}/v1/meshes/${MESH}/join`, {
        method: 'POST',
        body: { invite: inv, join: joinRecord(member, inv) },
      })
      expect(res.status, JSON.stringify(res.body)).toBe(200)
      return member
    }
    const alice = session(await join_(), MESH)
    const bob = session(await join_(), MESH)

    // Bob's session says hello once, so the coordinator knows its key, and goes offline.
    await (await connect(before.wsUrl, bob)).close()
    const sender = await connect(before.wsUrl, alice)
    const envs = Array.from({ length: MESSAGES }, (_, i) =>
      sealDirect({
        mesh: MESH,
        channel: 'dm',
        from: alice.identity,
        to: bob.identity.publicKey,
        clientMessageId: nextId(),
        payload: `message ${i}`,
      }),
    )
    const acks = await sendAll(sender, envs, IN_FLIGHT)
    expect(acks.filter((a) => a.state === 'queued')).toHaveLength(MESSAGES)

    expect(await before.process.stop('SIGKILL')).toEqual({ code: null, signal: 'SIGKILL' })
    await sender.closed

    const after = await start(args)
    expect(after.ready.coordinatorPk).toBe(before.ready.coordinatorPk)
    const receiver = await connect(after.wsUrl, bob) // acks each push ('ok')
    for (let i = 0; i < MESSAGES; i++) await receiver.waitFor('push', undefined, { timeoutMs: 20_000 })
    // Every push was acked and its row deleted.
    await eventually(async () => (await queueDepth(after.ready.url)) === '0', {
      timeoutMs: 20_000,
      what: 'agentmesh_queue_depth 0',
    })

    const pushes = receiver.pushes()
    const ids = pushes.map((p) => p.envelope?.clientMessageId)
    expect(pushes).toHaveLength(MESSAGES)
    expect(new Set(ids).size).toBe(MESSAGES)
    expect(new Set(ids)).toEqual(new Set(envs.map((e) => e.clientMessageId)))
    const payloads = pushes.map((p) => {
      const opened = openEnvelope(p.envelope!, bob.identity)
      return opened.ok ? opened.payload : opened.error.code
    })
    expect(new Set(payloads)).toEqual(new Set(envs.map((_, i) => `message ${i}`)))
  }, 120_000)
})
