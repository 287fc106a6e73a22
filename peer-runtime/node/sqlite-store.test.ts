import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import { afterAll, describe, expect, it } from 'vitest'
import { isMeshError } from '../../protocol/errors.js'
import {
  runtimeStoreCompliance,
  testInboxRow,
  testKey,
  testMessageId,
  testOutboxRow,
} from '../store/compliance.js'
import { SQLITE_SCHEMA_VERSION, sqliteStore } from './sqlite-store.js'

const root = mkdtempSync(join(tmpdir(), 'agentmesh-sqlite-store-'))
let files = 0
/** A fresh database path in a directory that does not exist yet. */
const freshPath = (): string => join(root, `run-${++files}`, 'runtime.db')

afterAll(() => rmSync(root, { recursive: true, force: true }))

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
