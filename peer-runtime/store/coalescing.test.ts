import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import {
  createIdentity,
  encodeEnvelope,
  initCrypto,
  ManualClock,
  sealDirect,
  toHex,
  ulidFactory,
} from '../../protocol/index.js'
import { worldsPerTest } from '../../test/support/coordinator-world.js'
import {
  closePeers,
  nextMessages,
  sessionPeer,
  tempDir,
  UNLIMITED_RATE,
} from '../../test/support/peer-world.js'
import { sqliteStore } from '../node/sqlite-store.js'
import { Inbox } from '../inbox.js'
import { Outbox, type DispatchResult } from '../outbox.js'
import { coalescingStore } from './coalescing.js'
import { runtimeStoreCompliance, testInboxRow, testMessageId, testOutboxRow } from './compliance.js'
import { memoryStore } from './memory.js'
import type { RecipientState, RuntimeStore } from './types.js'

runtimeStoreCompliance('coalescing over memory', async () => coalescingStore(memoryStore()), {
  runner: { describe, it },
  durability: 'volatile',
})

const T0 = Date.UTC(2026, 0, 1)

/**
 * Our own seam: the memory driver, recording every call that reaches it, and holding a batch's answer
 * back while `hold` is set (a commit that has not finished yet).
 */
function recording(inner: RuntimeStore = memoryStore()) {
  const calls: { method: string; size?: number }[] = []
  const held: (() => void)[] = []
  const control = { hold: false, fail: undefined as Error | undefined }
  const store = new Proxy(inner, {
    get(target, key) {
      const value: unknown = Reflect.get(target, key)
      if (typeof value !== 'function') return value
      return (...args: unknown[]) => {
        const first = args[0]
        calls.push({ method: String(key), ...(Array.isArray(first) && { size: first.length }) })
        if (control.fail !== undefined && String(key).endsWith('Many')) return Promise.reject(control.fail)
        const result = (value as (...a: unknown[]) => Promise<unknown>).apply(target, args)
        if (!control.hold) return result
        return new Promise((resolve) => held.push(() => resolve(result)))
      }
    },
  })
  return { store, calls, held, control }
}

describe('coalescing store', () => {
  it('sends the updateOutbox calls of one turn as one updateOutboxMany; each caller gets its own result', async () => {
    const { store: inner, calls } = recording()
    const store = coalescingStore(inner)
    await store.insertOutboxMany([1, 2, 3].map((n) => testOutboxRow(n)))
    calls.length = 0
    const [a, b, c, missing] = await Promise.all([
      store.updateOutbox(testMessageId(1), { state: 'inflight', updatedAt: T0 + 1 }, ['pending']),
      store.updateOutbox(testMessageId(2), { state: 'done', updatedAt: T0 + 1 }, ['inflight']),
      store.updateOutbox(testMessageId(3), { attempts: 4, updatedAt: T0 + 2 }),
      store.updateOutbox(testMessageId(9), { state: 'done', updatedAt: T0 + 1 }),
    ])
    expect(calls).toEqual([{ method: 'updateOutboxMany', size: 4 }])
    expect(a).toMatchObject({ id: testMessageId(1), state: 'inflight' })
    expect(b).toBeUndefined() // the compare-and-set failed: row 2 is pending
    expect(c).toMatchObject({ id: testMessageId(3), state: 'pending', attempts: 4 })
    expect(missing).toBeUndefined()
    expect((await store.getOutbox(testMessageId(2)))?.state).toBe('pending')

    // Another turn, another batch.
    calls.length = 0
    await store.updateOutbox(testMessageId(1), { state: 'done', updatedAt: T0 + 3 }, ['inflight'])
    await store.updateOutbox(testMessageId(3), { state: 'done', updatedAt: T0 + 3 }, ['pending'])
    expect(calls).toEqual([
      { method: 'updateOutboxMany', size: 1 },
      { method: 'updateOutboxMany', size: 1 },
    ])
    await store.close()
  })

  it('sends the insertInbox calls of one turn as one insertInboxMany; a repeat in the turn is a duplicate', async () => {
    const { store: inner, calls } = recording()
    const store = coalescingStore(inner)
    const results = await Promise.all([
      store.insertInbox(testInboxRow(1)),
      store.insertInbox(testInboxRow(2)),
      store.insertInbox(testInboxRow(1, { via: 'p2p' })),
    ])
    expect(calls).toEqual([{ method: 'insertInboxMany', size: 3 }])
    expect(results.map((r) => r.inserted)).toEqual([true, true, false])
    expect(results[2]?.row).toEqual(results[0]?.row)
    await store.close()
  })

  it('resolves a caller only once the batch has committed', async () => {
    const { store: inner, held, control } = recording()
    const store = coalescingStore(inner)
    await store.insertOutbox(testOutboxRow(1))
    control.hold = true
    let settled = false
    const update = store
      .updateOutbox(testMessageId(1), { state: 'inflight', updatedAt: T0 + 1 })
      .then((row) => {
        settled = true
        return row
      })
    const insert = store.insertInbox(testInboxRow(1))
    // Wait until both batches reached the store and are held there.
    await expect.poll(() => held.length).toBe(2)
    expect(settled).toBe(false)
    for (const release of held.splice(0)) release()
    expect((await update)?.state).toBe('inflight')
    expect((await insert).inserted).toBe(true)
    control.hold = false
    await store.close()
  })

  it('a batch that fails rejects every caller in it with the error; the next turn is a batch of its own', async () => {
    const { store: inner, control } = recording()
    const store = coalescingStore(inner)
    await store.insertOutboxMany([1, 2].map((n) => testOutboxRow(n)))
    const full = new Error('MESH_ERR_STORE_FULL: the disk is full')
    control.fail = full
    const outcomes = await Promise.allSettled([
      store.updateOutbox(testMessageId(1), { state: 'inflight', updatedAt: T0 + 1 }),
      store.updateOutbox(testMessageId(2), { state: 'inflight', updatedAt: T0 + 1 }),
      store.insertInbox(testInboxRow(1)),
    ])
    expect(outcomes).toEqual([
      { status: 'rejected', reason: full },
      { status: 'rejected', reason: full },
      { status: 'rejected', reason: full },
    ])
    control.fail = undefined
    expect((await store.getOutbox(testMessageId(1)))?.state).toBe('pending')
    expect((await store.updateOutbox(testMessageId(1), { state: 'done', updatedAt: T0 + 2 }))?.state).toBe(
      'done',
    )
    await store.close()
  })

  it('keeps call order: a read or another write after an unawaited update sees it; close sends what waits', async () => {
    const { store: inner, calls } = recording()
    const store = coalescingStore(inner)
    await store.insertOutbox(testOutboxRow(1))
    calls.length = 0
    const update = store.updateOutbox(testMessageId(1), { state: 'inflight', updatedAt: T0 + 1 })
    const inserted = store.insertInbox(testInboxRow(1))
    const read = store.getOutbox(testMessageId(1))
    const inbox = store.readInbox({ mesh: 'mesh-test', recipients: [testInboxRow(1).recipient] })
    expect((await read)?.state).toBe('inflight')
    expect((await inbox).map((r) => r.clientMessageId)).toEqual([testMessageId(1)])
    expect((await update)?.state).toBe('inflight')
    expect((await inserted).inserted).toBe(true)
    expect(calls.map((c) => c.method)).toEqual([
      'updateOutboxMany',
      'insertInboxMany',
      'getOutbox',
      'readInbox',
    ])

    const last = store.updateOutbox(testMessageId(1), { state: 'done', updatedAt: T0 + 2 }, ['inflight'])
    await store.close()
    expect((await last)?.state).toBe('done')
    await expect(store.updateOutbox(testMessageId(1), { updatedAt: T0 + 3 })).rejects.toMatchObject({
      code: 'MESH_ERR_STORE_CLOSED',
    })
  })

  it('takes the patch as it was at the call: a caller changing its objects afterwards changes nothing', async () => {
    const store = coalescingStore(memoryStore())
    await store.insertOutbox(testOutboxRow(1))
    const recipients: Record<string, RecipientState> = { aa: 'queued' }
    const patch = { recipients, updatedAt: T0 + 1 }
    const update = store.updateOutbox(testMessageId(1), patch)
    recipients['aa'] = 'delivered'
    patch.updatedAt = T0 + 2
    expect(await update).toMatchObject({ recipients: { aa: 'queued' }, updatedAt: T0 + 1 })
    await store.close()
  })

  it('works behind a Proxy that calls it with the proxy as this (the daemon splitStore)', async () => {
    const store = new Proxy(coalescingStore(memoryStore()), {})
    expect(store.durability).toBe('volatile')
    await store.insertOutbox(testOutboxRow(1))
    const [row, inserted] = await Promise.all([
      store.updateOutbox(testMessageId(1), { state: 'inflight', updatedAt: T0 + 1 }),
      store.insertInbox(testInboxRow(1)),
    ])
    expect(row?.state).toBe('inflight')
    expect(inserted.inserted).toBe(true)
    await store.close()
  })

  it('wraps once, and keeps the durability of the store it wraps', async () => {
    const inner = memoryStore()
    const store = coalescingStore(inner)
    expect(coalescingStore(store)).toBe(store)
    expect(store.durability).toBe('volatile')
    await store.close()
  })

  it('groups with the schedule it is given (a microtask here)', async () => {
    const { store: inner, calls } = recording()
    const store = coalescingStore(inner, { schedule: queueMicrotask })
    await store.insertOutboxMany([1, 2].map((n) => testOutboxRow(n)))
    calls.length = 0
    await Promise.all([1, 2].map((n) => store.updateOutbox(testMessageId(n), { updatedAt: T0 + n })))
    expect(calls).toEqual([{ method: 'updateOutboxMany', size: 2 }])
    await store.close()
  })

  it("stores an Inbox's pushes of one turn in one insertInboxMany and acks each after it", async () => {
    await initCrypto()
    const { store: inner, calls, held, control } = recording()
    const store = coalescingStore(inner)
    const me = createIdentity('session')
    const alice = createIdentity('session')
    const inbox = new Inbox({ store, mesh: 'mesh-test', me, clock: new ManualClock(T0) })
    const newId = ulidFactory()
    const envelopes = Array.from({ length: 4 }, (_, i) =>
      encodeEnvelope(
        sealDirect({
          mesh: 'mesh-test',
          channel: 'dm',
          from: alice,
          to: me.publicKey,
          clientMessageId: newId(),
          payload: `m${i}`,
        }),
      ),
    )
    const acks: string[] = []
    const received: unknown[] = []
    inbox.on('message', (m) => received.push(m.payload))
    control.hold = true
    // The third push is a redelivery of the first.
    const takes = [0, 1, 0, 2, 3].map((i, k) =>
      inbox.take(envelopes[i] as Uint8Array, {
        via: 'relay',
        deliveryId: `d-${k}`,
        ackOnStore: true,
        ack: (status) => acks.push(`${k}:${status}`),
      }),
    )
    await expect.poll(() => held.length).toBe(1)
    expect(acks).toEqual([]) // nothing is acked before the commit
    for (const release of held.splice(0)) release()
    await Promise.all(takes)
    expect(calls).toEqual([{ method: 'insertInboxMany', size: 5 }])
    expect(acks).toEqual(['0:ok', '1:ok', '2:duplicate', '3:ok', '4:ok'])
    expect(received).toEqual(['m0', 'm1', 'm2', 'm3'])
    control.hold = false
    await store.close()
  })

  it("writes an Outbox's settles of one turn as one updateOutboxMany: 300 rows acked in bursts", async () => {
    const { store: inner, calls } = recording()
    const store = coalescingStore(inner)
    // Acks come in bursts: the dispatches started in a turn are answered in the next loop iteration,
    // 64 to an I/O callback (socket chunks read in one poll phase; microtasks run between them).
    let burst: (() => void)[] = []
    const outbox = new Outbox({
      store,
      clock: new ManualClock(T0 + 1_000), // every row is due
      concurrency: 256,
      dispatch: () =>
        new Promise<DispatchResult>((resolve) => {
          burst.push(() => resolve({ kind: 'done' }))
          if (burst.length === 1) {
            setImmediate(() => {
              const answers = burst
              burst = []
              for (let i = 0; i < answers.length; i += 64) {
                const chunk = answers.slice(i, i + 64)
                setImmediate(() => chunk.forEach((answer) => answer()))
              }
            })
          }
        }),
    })
    await outbox.start()
    const rows = await Promise.all(
      Array.from({ length: 300 }, (_, i) => outbox.enqueue(testOutboxRow(i + 1))),
    )
    await outbox.idle(AbortSignal.timeout(10_000))
    const batches = calls.filter((c) => c.method === 'updateOutboxMany')
    expect(calls.some((c) => c.method === 'updateOutbox')).toBe(false)
    expect(batches.reduce((sum, c) => sum + (c.size ?? 0), 0)).toBe(300)
    // One batch per dispatch window: the four chunks of a window share a commit.
    expect(batches.map((c) => c.size)).toEqual([256, 44])
    for (const row of rows) expect((await store.getOutbox(row.id))?.state).toBe('done')
    await outbox.stop()
    await store.close()
  })
})

describe('coalescing store under a Peer', () => {
  const start = worldsPerTest('pglite')
  const stores: RuntimeStore[] = []
  afterEach(async () => {
    await closePeers()
    for (const store of stores.splice(0)) await store.close()
  })

  it('300 DMs each way between two Peers on coalesced sqlite stores arrive once each and end done, in few commits', async () => {
    const world = await start({ limits: { rate: UNLIMITED_RATE } })
    const sides = ['alice', 'bob'].map(() => recording(sqliteStore({ path: join(tempDir(), 'runtime.db') })))
    stores.push(...sides.map((side) => side.store))
    const [alice, bob] = await Promise.all(
      ['alice', 'bob'].map(async (name, i) =>
        sessionPeer(world, await world.member(name), { store: coalescingStore(sides[i]!.store) }),
      ),
    )
    await Promise.all([alice!.whenConnected(), bob!.whenConnected()])
    const n = 300
    const [toBob, toAlice] = await Promise.all([
      Promise.all(Array.from({ length: n }, (_, i) => alice!.send(bob!.identity.publicKey, { i }))),
      Promise.all(Array.from({ length: n }, (_, i) => bob!.send(toHex(alice!.identity.publicKey), { i }))),
    ])
    const [atBob, atAlice] = await Promise.all([nextMessages(bob!, n), nextMessages(alice!, n)])
    expect(new Set(atBob.map((m) => m.clientMessageId))).toEqual(new Set(toBob.map((s) => s.clientMessageId)))
    expect(new Set(atAlice.map((m) => m.clientMessageId))).toEqual(
      new Set(toAlice.map((s) => s.clientMessageId)),
    )
    await Promise.all([
      alice!.settled(AbortSignal.timeout(15_000)),
      bob!.settled(AbortSignal.timeout(15_000)),
    ])
    for (const [peer, sent] of [
      [alice!, toBob],
      [bob!, toAlice],
    ] as const) {
      for (const s of sent) expect((await peer.status(s.clientMessageId))?.state).toBe('done')
    }
    for (const { calls } of sides) {
      // Every outbox update and inbox insert went in a batch, and batches held many of them.
      expect(calls.filter((c) => c.method === 'updateOutbox' || c.method === 'insertInbox')).toEqual([])
      const updates = calls.filter((c) => c.method === 'updateOutboxMany')
      const inserts = calls.filter((c) => c.method === 'insertInboxMany')
      expect(inserts.reduce((sum, c) => sum + (c.size ?? 0), 0)).toBeGreaterThanOrEqual(n)
      expect(updates.length).toBeLessThan(n)
      expect(inserts.length).toBeLessThan(n)
    }
  }, 60_000)
})
