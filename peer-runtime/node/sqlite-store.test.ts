import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import Database from 'better-sqlite3'
import { afterAll, afterEach, describe, expect, it } from 'vitest'
import { isMeshError } from '../../protocol/errors.js'
import {
  runtimeStoreCompliance,
  testInboxRow,
  testKey,
  testMessageId,
  testOutboxRow,
} from '../store/compliance.js'
import { coalescingStore } from '../store/coalescing.js'
import { SCHEMA_V1, SCHEMA_V2 } from './sqlite-schema.js'
import { openSqliteStoreAt, SQLITE_SCHEMA_VERSION, sqliteStore } from './sqlite-store.js'
import type { RuntimeStore } from '../store/types.js'

const root = mkdtempSync(join(tmpdir(), 'agentmesh-sqlite-store-'))
let files = 0
/** A fresh database path in a directory that does not exist yet. */
const freshPath = (): string => join(root, `run-${++files}`, 'runtime.db')

afterAll(() => rmSync(root, { recursive: true, force: true }))

const T0 = Date.UTC(2026, 0, 1)

/**
 * A file as a schema-1 build left it: the schema-1 DDL, two pending outbox rows and an inflight one,
 * an inbox with one consumed and one unconsumed row; written with plain SQL, as that build wrote them.
 */
function schemaOneFile(): string {
  const path = freshPath()
  mkdirSync(join(path, '..'), { recursive: true })
  const db = new Database(path)
  db.pragma('journal_mode = WAL')
  db.exec(SCHEMA_V1)
  db.pragma('user_version = 1')
  const outbox = db.prepare(
    `INSERT INTO outbox (id, mesh, from_pk, target, channel, envelope, state, attempts, created_at,
       updated_at, next_attempt_at, last_error, recipients, fingerprint, session_id, requeued_as)
     VALUES (?, 'mesh-test', ?, ?, 'dm', ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL)`,
  )
  const row = (n: number): ReturnType<typeof testOutboxRow> => testOutboxRow(n)
  const r1 = row(1)
  outbox.run(
    r1.id,
    r1.from,
    r1.target,
    r1.envelope,
    'pending',
    2,
    r1.createdAt,
    T0 + 50,
    T0 + 10,
    JSON.stringify({ code: 'MESH_ERR_QUEUE_FULL', message: 'full' }),
    JSON.stringify({ aa: 'queued' }),
  )
  const r2 = row(2)
  outbox.run(
    r2.id,
    r2.from,
    r2.target,
    r2.envelope,
    'pending',
    0,
    r2.createdAt,
    r2.createdAt,
    T0 + 20,
    null,
    null,
  )
  const r3 = row(3)
  outbox.run(
    r3.id,
    r3.from,
    r3.target,
    r3.envelope,
    'inflight',
    1,
    r3.createdAt,
    T0 + 60,
    T0 + 30,
    null,
    null,
  )
  const inbox = db.prepare(
    `INSERT INTO inbox (mesh, recipient_pk, from_pk, client_message_id, channel, delivery_id, via, envelope,
       payload, status, received_at, consumed_at)
     VALUES (@mesh, @recipient, @from, @clientMessageId, @channel, @deliveryId, @via, @envelope, @payload,
       @status, @receivedAt, @consumedAt)`,
  )
  inbox.run({ ...testInboxRow(12), consumedAt: T0 + 99 })
  inbox.run({ ...testInboxRow(11), consumedAt: null })
  db.close()
  return path
}

/**
 * A file as a schema-2 build left it: the schema-1 file's rows, migrated to 2 as that build did, plus an
 * `accepted` row (queued at the coordinator, a receipt still to come) and a `done` one, without `via`.
 */
function schemaTwoFile(): string {
  const path = schemaOneFile()
  const db = new Database(path)
  db.exec(SCHEMA_V2)
  db.pragma('user_version = 2')
  const outbox = db.prepare(
    `INSERT INTO outbox (id, mesh, from_pk, target, channel, envelope, state, attempts, created_at,
       updated_at, next_attempt_at, last_error, recipients, fingerprint, session_id, requeued_as)
     VALUES (?, 'mesh-test', ?, ?, 'dm', ?, ?, 0, ?, ?, ?, NULL, ?, NULL, NULL, NULL)`,
  )
  for (const [n, state, recipient] of [
    [5, 'accepted', 'queued'],
    [6, 'done', 'delivered'],
  ] as const) {
    const r = testOutboxRow(n)
    const recipients = JSON.stringify({ [r.target]: recipient })
    outbox.run(r.id, r.from, r.target, r.envelope, state, r.createdAt, T0 + 70, r.createdAt, recipients)
  }
  db.close()
  return path
}

/** The file's schema as SQLite records it (tables and indexes with their SQL), sorted. */
function schemaOf(path: string): unknown[] {
  const db = new Database(path, { readonly: true })
  const rows = db
    .prepare(
      "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name",
    )
    .all()
  db.close()
  return rows
}

runtimeStoreCompliance('sqlite', async () => sqliteStore({ path: freshPath() }), {
  runner: { describe, it },
  durability: 'durable',
})
runtimeStoreCompliance(
  'sqlite, synchronous full',
  async () => sqliteStore({ path: freshPath(), synchronous: 'full' }),
  {
    runner: { describe, it },
    durability: 'durable',
  },
)

runtimeStoreCompliance(
  'coalescing over sqlite',
  async () => coalescingStore(sqliteStore({ path: freshPath() })),
  { runner: { describe, it }, durability: 'durable' },
)

const child = join(import.meta.dirname, '../../test/support/store-child.ts')
const children: ChildProcess[] = []
afterEach(async () => {
  for (const c of children.splice(0)) {
    if (c.exitCode === null && c.signalCode === null) {
      c.kill('SIGKILL')
      await once(c, 'exit')
    }
  }
})

/** `store-child.ts hold <path>`: resolves with the process and the first line it printed. */
async function holdInChild(path: string): Promise<{ proc: ChildProcess; line: string }> {
  const proc = spawn(process.execPath, ['--import', 'tsx', child, 'hold', path], {
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  children.push(proc)
  const lines = createInterface({ input: proc.stdout })
  const [line] = (await once(lines, 'line')) as [string]
  return { proc, line }
}

describe('sqlite store: one process per store', () => {
  it('refuses a second opener in this process with MESH_ERR_STORE_LOCKED naming this pid; close frees it', async () => {
    const path = freshPath()
    const store = sqliteStore({ path })
    expect(() => sqliteStore({ path })).toThrow(
      expect.objectContaining({ code: 'MESH_ERR_STORE_LOCKED', details: { path, pid: process.pid } }),
    )
    // The refused opener changed nothing: the first one still works.
    await store.insertOutbox(testOutboxRow(1))
    await store.close()
    expect(existsSync(`${path}.lock`)).toBe(false)
    const again = sqliteStore({ path })
    expect((await again.getOutbox(testMessageId(1)))?.id).toBe(testMessageId(1))
    await again.close()
  })

  it('refuses while another process holds the store, naming its pid; takes over after its kill -9', async () => {
    const path = freshPath()
    const { proc, line } = await holdInChild(path)
    expect(line).toBe('open')
    expect(() => sqliteStore({ path })).toThrow(
      expect.objectContaining({ code: 'MESH_ERR_STORE_LOCKED', details: { path, pid: proc.pid } }),
    )
    proc.kill('SIGKILL')
    await once(proc, 'exit')
    const store = sqliteStore({ path })
    await store.insertOutbox(testOutboxRow(1))
    await store.close()
  })

  it('two processes opening a new file at once: one opens it, the other is told it is locked', async () => {
    // Before the lock, both read schema 0 and the loser failed on CREATE TABLE with
    // MESH_ERR_STORE_UNAVAILABLE, leaving a 0-byte file (its data in the winner's -wal).
    const path = freshPath()
    const [a, b] = await Promise.all([holdInChild(path), holdInChild(path)])
    expect([a.line, b.line].sort()).toEqual(['error MESH_ERR_STORE_LOCKED', 'open'])
  })
})

describe('sqlite store: a full disk', () => {
  /** Inserts 16 KiB rows from `n` on until one fails; resolves with that error and the failing number. */
  async function fill(store: RuntimeStore, n: number): Promise<{ err: unknown; n: number }> {
    for (; ; n++) {
      try {
        await store.insertOutbox(testOutboxRow(n, { envelope: new Uint8Array(16 * 1024).fill(n & 0xff) }))
      } catch (err) {
        return { err, n }
      }
    }
  }

  it('refuses a write that does not fit with MESH_ERR_STORE_FULL, stores none of it, and takes writes again once there is room', async () => {
    const path = freshPath()
    const store = sqliteStore({ path })
    // A finished row with a big envelope, for the pruning that makes room later.
    await store.insertOutbox(testOutboxRow(1, { envelope: new Uint8Array(64 * 1024) }))
    await store.updateOutbox(testMessageId(1), { state: 'done', updatedAt: 5 })
    expect(store.setMaxPageCount(store.pageCount() + 40)).toBe(store.pageCount() + 40)
    const full = await fill(store, 10)
    expect(isMeshError(full.err, 'MESH_ERR_STORE_FULL')).toBe(true)
    expect(await store.getOutbox(testMessageId(full.n))).toBeUndefined()
    // A batch that does not fit stores none of its rows.
    const batch = [1_000, 1_001, 1_002].map((n) => testOutboxRow(n, { envelope: new Uint8Array(16 * 1024) }))
    await expect(store.insertOutboxMany(batch)).rejects.toMatchObject({ code: 'MESH_ERR_STORE_FULL' })
    for (const row of batch) expect(await store.getOutbox(row.id)).toBeUndefined()
    // Reads still work, and so does the pruning that makes room: its freed pages take new rows.
    expect((await store.getOutbox(testMessageId(10)))?.state).toBe('pending')
    expect(await store.pruneOutbox(10)).toBe(1)
    await store.insertOutbox(testOutboxRow(full.n, { envelope: new Uint8Array(16 * 1024) }))
    expect((await store.getOutbox(testMessageId(full.n)))?.state).toBe('pending')
    // Room by a higher cap.
    const again = await fill(store, full.n + 1)
    expect(isMeshError(again.err, 'MESH_ERR_STORE_FULL')).toBe(true)
    store.setMaxPageCount(1_000_000)
    expect((await store.insertOutboxMany(batch)).map((r) => r.inserted)).toEqual([true, true, true])
    await store.close()

    const db = new Database(path, { readonly: true })
    expect(db.pragma('integrity_check', { simple: true })).toBe('ok')
    db.close()
  })

  /** Recipients whose JSON is about 140 KB: an update that needs new pages. */
  const bigRecipients = Object.fromEntries(
    Array.from({ length: 2_000 }, (_, i) => [i.toString(16).padStart(64, '0'), 'queued' as const]),
  )

  it('refuses a batch of updates that does not fit with MESH_ERR_STORE_FULL and stores none of it', async () => {
    const store = sqliteStore({ path: freshPath() })
    await store.insertOutboxMany([1, 2, 3].map((n) => testOutboxRow(n)))
    store.setMaxPageCount(store.pageCount())
    const changes = [
      {
        id: testMessageId(1),
        patch: { state: 'inflight' as const, updatedAt: T0 + 1 },
        expect: ['pending' as const],
      },
      { id: testMessageId(2), patch: { recipients: bigRecipients, updatedAt: T0 + 1 } },
      { id: testMessageId(3), patch: { state: 'inflight' as const, updatedAt: T0 + 1 } },
    ]
    await expect(store.updateOutboxMany(changes)).rejects.toMatchObject({ code: 'MESH_ERR_STORE_FULL' })
    for (const n of [1, 2, 3]) {
      expect(await store.getOutbox(testMessageId(n))).toMatchObject({ state: 'pending', updatedAt: T0 + n })
    }
    expect((await store.getOutbox(testMessageId(2)))?.recipients).toBeUndefined()
    store.setMaxPageCount(1_000_000)
    expect((await store.updateOutboxMany(changes)).map((row) => row?.state)).toEqual([
      'inflight',
      'pending',
      'inflight',
    ])
    await store.close()
  })

  it('through the coalescing store: every caller of a batch that does not fit gets MESH_ERR_STORE_FULL, none is stored', async () => {
    const sqlite = sqliteStore({ path: freshPath() })
    const store = coalescingStore(sqlite)
    await store.insertOutboxMany([1, 2, 3].map((n) => testOutboxRow(n)))
    sqlite.setMaxPageCount(sqlite.pageCount())
    const outcomes = await Promise.allSettled([
      store.updateOutbox(testMessageId(1), { state: 'inflight', updatedAt: T0 + 1 }, ['pending']),
      store.updateOutbox(testMessageId(2), { recipients: bigRecipients, updatedAt: T0 + 1 }),
      store.updateOutbox(testMessageId(3), { state: 'inflight', updatedAt: T0 + 1 }),
    ])
    expect(outcomes.map((o) => o.status)).toEqual(['rejected', 'rejected', 'rejected'])
    for (const o of outcomes) {
      expect(o.status === 'rejected' && isMeshError(o.reason, 'MESH_ERR_STORE_FULL')).toBe(true)
    }
    for (const n of [1, 2, 3]) expect((await store.getOutbox(testMessageId(n)))?.state).toBe('pending')
    // The small updates alone fit, in the next turn's batch.
    const again = await Promise.all([
      store.updateOutbox(testMessageId(1), { state: 'inflight', updatedAt: T0 + 2 }, ['pending']),
      store.updateOutbox(testMessageId(3), { state: 'inflight', updatedAt: T0 + 2 }, ['pending']),
    ])
    expect(again.map((row) => row?.state)).toEqual(['inflight', 'inflight'])
    await store.close()
  })

  it('openSqliteStoreAt finds the store this process has open on a path, until it closes', async () => {
    const path = freshPath()
    const store = sqliteStore({ path })
    expect(openSqliteStoreAt(join(path, '..', '.', 'runtime.db'))).toBe(store)
    await store.close()
    expect(openSqliteStoreAt(path)).toBeUndefined()
  })
})

describe('sqlite store', () => {
  it('creates its directory 0700 and its files 0600, and narrows an existing file to 0600', async () => {
    const path = freshPath()
    const store = sqliteStore({ path })
    await store.insertOutbox(testOutboxRow(1))
    expect(statSync(join(path, '..')).mode & 0o777).toBe(0o700)
    expect(statSync(path).mode & 0o777).toBe(0o600)
    expect(statSync(`${path}-wal`).mode & 0o777).toBe(0o600)
    await store.close()

    const loose = join(root, 'loose.db')
    writeFileSync(loose, '', { mode: 0o644 })
    const again = sqliteStore({ path: loose })
    expect(statSync(loose).mode & 0o777).toBe(0o600)
    await again.close()
  })

  it('runs in WAL mode with the asked synchronous level and records its schema version', async () => {
    const normal = freshPath()
    await sqliteStore({ path: normal }).close()
    const full = freshPath()
    const store = sqliteStore({ path: full, synchronous: 'full' })
    const db = new Database(normal, { readonly: true })
    expect(db.pragma('journal_mode', { simple: true })).toBe('wal')
    expect(db.pragma('user_version', { simple: true })).toBe(SQLITE_SCHEMA_VERSION)
    db.close()
    await store.close()
  })

  it('sees committed rows after reopening the file', async () => {
    const path = freshPath()
    const first = sqliteStore({ path })
    await first.insertOutbox(testOutboxRow(1))
    await first.insertOutbox(testOutboxRow(2))
    await first.claimDue(Number.MAX_SAFE_INTEGER, 1)
    const { row } = await first.insertInbox(testInboxRow(7))
    await first.consumeInbox('mesh-test', [row.seq], 1234)
    await first.close()

    const second = sqliteStore({ path })
    expect((await second.getOutbox(testMessageId(1)))?.state).toBe('inflight')
    expect(await second.recoverInflight(5_000)).toBe(1)
    expect((await second.dueOutbox(5_000, 10)).map((r) => r.id)).toEqual([testMessageId(1)])
    const inbox = await second.readInbox({ mesh: 'mesh-test', recipients: [testKey(2)] })
    expect(inbox).toEqual([{ ...testInboxRow(7), seq: row.seq, consumedAt: 1234 }])
    expect((await second.insertInbox(testInboxRow(7))).inserted).toBe(false)
    await second.close()
  })

  it('refuses a file written by a newer schema with MESH_ERR_SCHEMA_TOO_NEW', async () => {
    const path = freshPath()
    await sqliteStore({ path }).close()
    const db = new Database(path)
    db.pragma(`user_version = ${SQLITE_SCHEMA_VERSION + 1}`)
    db.close()
    let err: unknown
    try {
      sqliteStore({ path })
    } catch (e) {
      err = e
    }
    expect(isMeshError(err, 'MESH_ERR_SCHEMA_TOO_NEW')).toBe(true)
  })

  it('migrates a schema-1 file to the current schema with its pending outbox and unconsumed inbox intact', async () => {
    const path = schemaOneFile()
    const store = sqliteStore({ path })
    const db = new Database(path, { readonly: true })
    expect(db.pragma('user_version', { simple: true })).toBe(SQLITE_SCHEMA_VERSION)
    db.close()
    // The pending rows are due in their order; the inflight one comes back at recovery.
    expect((await store.dueOutbox(T0 + 1_000, 10)).map((r) => r.id)).toEqual([
      testMessageId(1),
      testMessageId(2),
    ])
    expect(await store.getOutbox(testMessageId(1))).toEqual({
      ...testOutboxRow(1),
      state: 'pending',
      attempts: 2,
      updatedAt: T0 + 50,
      nextAttemptAt: T0 + 10,
      lastError: { code: 'MESH_ERR_QUEUE_FULL', message: 'full' },
      recipients: { aa: 'queued' },
    })
    expect(await store.recoverInflight(T0 + 2_000)).toBe(1)
    expect((await store.claimDue(T0 + 2_000, 10)).map((r) => r.id)).toEqual([1, 2, 3].map(testMessageId))
    const unread = await store.readInbox({ mesh: 'mesh-test', recipients: [testKey(2)], unconsumed: true })
    expect(unread).toEqual([{ ...testInboxRow(11), seq: 2 }])
    expect((await store.insertInbox(testInboxRow(12))).inserted).toBe(false)
    // A new inbox row continues the old seq, and the schema-2 tables work.
    expect((await store.insertInbox(testInboxRow(13))).row.seq).toBeGreaterThan(2)
    await store.saveMeshView({ mesh: 'mesh-test', version: 4, snapshot: new Uint8Array([1]), savedAt: T0 })
    expect((await store.loadMeshView('mesh-test'))?.version).toBe(4)
    await store.close()
  })

  it('gives a migrated schema-1 or schema-2 file the same schema as a new file', async () => {
    const fresh = freshPath()
    await sqliteStore({ path: fresh }).close()
    for (const migrated of [schemaOneFile(), schemaTwoFile()]) {
      await sqliteStore({ path: migrated }).close()
      expect(schemaOf(migrated)).toEqual(schemaOf(fresh))
    }
  })

  it('migrates a schema-2 file to 3: its rows read as before, with no via, and a later answer records one', async () => {
    const path = schemaTwoFile()
    const store = sqliteStore({ path })
    const db = new Database(path, { readonly: true })
    expect(db.pragma('user_version', { simple: true })).toBe(3)
    db.close()
    const bob = testOutboxRow(5).target
    // Nothing says which transport finished the old rows: they have none, rather than a guess.
    expect(await store.getOutbox(testMessageId(6))).toEqual({
      ...testOutboxRow(6),
      state: 'done',
      attempts: 0,
      updatedAt: T0 + 70,
      nextAttemptAt: T0 + 6,
      recipients: { [bob]: 'delivered' },
    })
    expect((await store.listOutbox(['pending', 'accepted'], 10)).map((r) => [r.id, r.via])).toEqual([
      [testMessageId(1), undefined],
      [testMessageId(2), undefined],
      [testMessageId(5), undefined],
    ])
    // The accepted row's receipt comes after the upgrade: `relay`, as the outbox records it.
    const done = await store.updateOutbox(
      testMessageId(5),
      { state: 'done', via: 'relay', recipients: { [bob]: 'delivered' }, updatedAt: T0 + 80 },
      ['accepted'],
    )
    expect(done).toMatchObject({ state: 'done', via: 'relay' })
    await store.close()
    const again = sqliteStore({ path })
    expect((await again.getOutbox(testMessageId(5)))?.via).toBe('relay')
    await again.close()
  })

  it('migrates in one transaction: a migration that fails leaves the file at schema 1, whole', async () => {
    const path = schemaOneFile()
    const db = new Database(path)
    // A table in the way of migration 2's first statement passes; the clash comes later, mid-way.
    db.exec('CREATE TABLE rpc_answers (x INTEGER)')
    db.close()
    expect(() => sqliteStore({ path })).toThrow(
      expect.objectContaining({ code: 'MESH_ERR_STORE_UNAVAILABLE' }),
    )
    const after = new Database(path, { readonly: true })
    expect(after.pragma('user_version', { simple: true })).toBe(1)
    const tables = after
      .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
      .pluck()
      .all()
    expect(tables).not.toContain('mesh_view')
    expect(after.prepare('SELECT count(*) FROM outbox').pluck().get()).toBe(3)
    after.close()
  })

  it('refuses a file that is not a database with MESH_ERR_STORE_UNAVAILABLE', () => {
    const path = join(root, 'garbage.db')
    writeFileSync(path, 'not a database, not at all; '.repeat(100), { mode: 0o600 })
    expect(() => sqliteStore({ path })).toThrow(
      expect.objectContaining({ code: 'MESH_ERR_STORE_UNAVAILABLE' }),
    )
  })

  it('uses the due index for claims and the reader index for inbox reads', async () => {
    const path = freshPath()
    const store = sqliteStore({ path })
    await store.close()
    const db = new Database(path, { readonly: true })
    const plan = (sql: string): string =>
      (db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all() as { detail: string }[]).map((r) => r.detail).join('; ')
    expect(
      plan(
        "SELECT id FROM outbox INDEXED BY outbox_due WHERE state = 'pending' AND next_attempt_at <= 1 ORDER BY next_attempt_at, created_at, id LIMIT 5",
      ),
    ).toMatch(/^SEARCH outbox USING (COVERING )?INDEX outbox_due \(next_attempt_at<\?\)$/)
    expect(
      plan(
        "SELECT * FROM inbox WHERE mesh = 'm' AND recipient_pk IN (x'00', x'01') AND seq > 0 ORDER BY seq LIMIT 5",
      ),
    ).toMatch(/INDEX inbox_reader/)
    db.close()
  })
})
