import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { ManualClock } from '../../protocol/clock.js'
import { sqliteStore } from '../node/sqlite-store.js'
import { testInboxRow, testKey, testMessageId, testOutboxRow } from './compliance.js'
import { StoreJanitor } from './janitor.js'
import { memoryStore } from './memory.js'
import type { OutboxState, RuntimeStore } from './types.js'

const HOUR = 3_600_000
const DAY = 24 * HOUR
const root = mkdtempSync(join(tmpdir(), 'agentmesh-janitor-'))
afterAll(() => rmSync(root, { recursive: true, force: true }))
let files = 0

const drivers: [string, () => RuntimeStore][] = [
  ['memory', () => memoryStore()],
  ['sqlite', () => sqliteStore({ path: join(root, `j-${++files}.db`) })],
]

/** An outbox row in `state`, last changed `age` ago. */
async function outboxRow(store: RuntimeStore, n: number, state: OutboxState, at: number): Promise<void> {
  await store.insertOutbox(testOutboxRow(n, { createdAt: at - DAY }))
  await store.updateOutbox(testMessageId(n), { state, updatedAt: at })
}

async function outboxIds(store: RuntimeStore): Promise<number[]> {
  const states = ['pending', 'inflight', 'accepted', 'done', 'dead', 'aborted'] as const
  return (await store.listOutbox(states, 10_000))
    .map((r) => parseInt(r.id.slice(3), 32))
    .sort((a, b) => a - b)
}

async function inboxIds(store: RuntimeStore): Promise<number[]> {
  const rows = await store.readInbox({ mesh: 'mesh-test', recipients: [testKey(2)], limit: 10_000 })
  return rows.map((r) => parseInt(r.clientMessageId.slice(3), 32))
}

describe.each(drivers)('store janitor on %s', (_name, open) => {
  it('hourly, deletes finished outbox rows and inbox rows past 7 days and expired rpc answers; keeps the rest', async () => {
    const clock = new ManualClock()
    const store = open()
    const t = clock.now()
    // Outbox: finished rows a day past the window go; one a day inside it stays; unfinished rows stay
    // however old they are.
    await outboxRow(store, 1, 'done', t - 8 * DAY)
    await outboxRow(store, 2, 'dead', t - 8 * DAY)
    await outboxRow(store, 3, 'aborted', t - 8 * DAY)
    await outboxRow(store, 4, 'done', t - 6 * DAY)
    await outboxRow(store, 5, 'pending', t - 30 * DAY)
    await outboxRow(store, 6, 'accepted', t - 30 * DAY)
    await outboxRow(store, 7, 'inflight', t - 30 * DAY)
    // Inbox: older than 7 days goes, younger stays (and its dedupe with it).
    await store.insertInbox(testInboxRow(1, { receivedAt: t - 7 * DAY - 1 }))
    await store.insertInbox(testInboxRow(2, { receivedAt: t - 7 * DAY + HOUR / 2 }))
    await store.putRpcAnswer({ mesh: 'mesh-test', from: testKey(3), correlationId: 'old', expiresAt: t })
    await store.putRpcAnswer({
      mesh: 'mesh-test',
      from: testKey(3),
      correlationId: 'new',
      expiresAt: t + DAY,
    })

    const janitor = new StoreJanitor({ store, clock })
    janitor.start()
    await clock.advance(59_000)
    expect(await outboxIds(store)).toEqual([1, 2, 3, 4, 5, 6, 7])
    await clock.advance(1_000)
    expect(await outboxIds(store)).toEqual([4, 5, 6, 7])
    expect(await inboxIds(store)).toEqual([2])
    expect(await store.getRpcAnswer('mesh-test', testKey(3), 'old')).toBeUndefined()
    expect(await store.getRpcAnswer('mesh-test', testKey(3), 'new')).toBeDefined()
    expect((await store.insertInbox(testInboxRow(2))).inserted).toBe(false)

    // An hour later the next pass: the inbox row has now aged past 7 days; row 4 is still inside.
    await clock.advance(HOUR - 1)
    expect(await inboxIds(store)).toEqual([2])
    await clock.advance(1)
    expect(await inboxIds(store)).toEqual([])
    expect(await outboxIds(store)).toEqual([4, 5, 6, 7])
    await clock.advance(DAY)
    expect(await outboxIds(store)).toEqual([5, 6, 7])
    expect(await store.getRpcAnswer('mesh-test', testKey(3), 'new')).toBeUndefined()

    // Stopped: no more passes.
    await janitor.stop()
    await outboxRow(store, 8, 'done', clock.now() - 8 * DAY)
    await clock.advance(3 * HOUR)
    expect(await outboxIds(store)).toEqual([5, 6, 7, 8])
    expect(clock.pending).toBe(0)
    await store.close()
  })

  it('deletes in statements of at most 1,000 rows', async () => {
    const clock = new ManualClock()
    const inner = open()
    const limits: (number | undefined)[] = []
    const store = new Proxy(inner, {
      get(target, prop) {
        const value = Reflect.get(target, prop) as unknown
        if (prop === 'pruneOutbox') {
          return (before: number, limit?: number) => {
            limits.push(limit)
            return target.pruneOutbox(before, limit)
          }
        }
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value
      },
    })
    const old = clock.now() - 8 * DAY
    const rows = Array.from({ length: 2_500 }, (_, i) => testOutboxRow(i + 1, { createdAt: old }))
    await inner.insertOutboxMany(rows)
    for (const row of rows) await inner.updateOutbox(row.id, { state: 'done', updatedAt: old })
    const counts = await new StoreJanitor({ store, clock }).pruneOnce()
    expect(counts).toEqual({ outbox: 2_500, inbox: 0, rpcAnswers: 0 })
    expect(limits).toEqual([1_000, 1_000, 1_000])
    expect(await outboxIds(inner)).toEqual([])
    await inner.close()
  })
})

describe('store janitor', () => {
  it('refuses an inbox retention under 7 days (the dedupe memory)', () => {
    expect(
      () => new StoreJanitor({ store: memoryStore(), clock: new ManualClock(), inboxRetentionMs: 6 * DAY }),
    ).toThrow(RangeError)
  })

  it('reports a failed pass and runs the next one', async () => {
    const clock = new ManualClock()
    const store = memoryStore()
    const errors: unknown[] = []
    const janitor = new StoreJanitor({ store, clock, onError: (err) => errors.push(err) })
    janitor.start()
    await store.close()
    await clock.advance(60_000)
    expect(errors).toEqual([expect.objectContaining({ code: 'MESH_ERR_STORE_CLOSED' })])
    await clock.advance(HOUR)
    expect(errors).toHaveLength(2)
    await janitor.stop()
  })
})
