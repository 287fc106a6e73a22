import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, describe, expect, it } from 'vitest'
import { ManualClock } from '../protocol/clock.js'
import { bytesEqual, toHex } from '../protocol/encoding.js'
import { waitFor } from '../transports/emitter.js'
import type { TypedEmitter } from '../transports/types.js'
import { eventually } from '../test/support/eventually.js'
import { sqliteStore } from './node/sqlite-store.js'
import { Outbox, type DispatchResult, type OutboxEvents, type OutboxInit } from './outbox.js'
import { testKey, testMessageId, testOutboxRow } from './store/compliance.js'
import { memoryStore } from './store/memory.js'
import type { NewOutboxRow, OutboxRow, OutboxState, RuntimeStore } from './store/types.js'

const T0 = Date.UTC(2026, 0, 1)
const DAY = 86_400_000
const B = toHex(testKey(2))
const C = toHex(testKey(3))
const D = toHex(testKey(4))
const DISCONNECTED = { code: 'MESH_ERR_DISCONNECTED', message: 'no coordinator connection' }
const QUEUE_FULL = { code: 'MESH_ERR_QUEUE_FULL', message: 'recipient queue full' }

const signal = (): AbortSignal => AbortSignal.timeout(10_000)
/** The outbox as `waitFor` infers event maps (through the `TypedEmitter` interface). */
const events = (outbox: Outbox): TypedEmitter<OutboxEvents> => outbox

interface Call {
  id: string
  at: number
  signal: AbortSignal
}

interface Fixture {
  clock: ManualClock
  store: RuntimeStore
  outbox: Outbox
  calls: Call[]
  /** Rows enqueued at the clock's time: `row(n)` is message n to key 2. */
  row(n: number, overrides?: Partial<NewOutboxRow>): NewOutboxRow
}

const open: { outbox: Outbox; store: RuntimeStore }[] = []
afterEach(async () => {
  for (const { outbox, store } of open.splice(0)) {
    await outbox.stop()
    await store.close()
  }
})

const root = mkdtempSync(join(tmpdir(), 'agentmesh-outbox-'))
afterAll(() => rmSync(root, { recursive: true, force: true }))

/** An outbox on a memory store (unless given one) with a ManualClock and a scripted dispatch. */
async function setup(
  script: (row: OutboxRow, call: number, signal: AbortSignal) => DispatchResult | Promise<DispatchResult>,
  init: Partial<OutboxInit> = {},
): Promise<Fixture> {
  const clock = new ManualClock(T0)
  const store = init.store ?? memoryStore()
  const calls: Call[] = []
  const perRow = new Map<string, number>()
  const outbox = new Outbox({
    store,
    clock,
    random: () => 0.5,
    dispatch: async (row, signal) => {
      calls.push({ id: row.id, at: clock.now(), signal })
      const call = (perRow.get(row.id) ?? 0) + 1
      perRow.set(row.id, call)
      return script(row, call, signal)
    },
    ...init,
  })
  outbox.on('error', (err) => {
    throw err
  })
  open.push({ outbox, store })
  await outbox.start()
  return {
    clock,
    store,
    outbox,
    calls,
    row: (n, overrides) => testOutboxRow(n, { createdAt: clock.now(), ...overrides }),
  }
}

const stateOf = async (outbox: Outbox, id: string): Promise<OutboxState | undefined> =>
  (await outbox.status(id))?.state

describe('Outbox', () => {
  it('moves a row pending → inflight → done and reports each change', async () => {
    const f = await setup(() => ({ kind: 'done', recipients: { [B]: 'delivered' } }))
    const seen: OutboxState[] = []
    f.outbox.on('state', (row) => seen.push(row.state))
    const stored = await f.outbox.enqueue(f.row(1))
    expect(stored).toMatchObject({ state: 'pending', attempts: 0 })
    await f.outbox.idle(signal())
    expect(seen).toEqual(['pending', 'inflight', 'done'])
    expect(await f.outbox.status(stored.id)).toMatchObject({
      state: 'done',
      attempts: 0,
      recipients: { [B]: 'delivered' },
    })
    expect(f.calls).toHaveLength(1)
  })

  it('stores before it resolves, and a second enqueue of the id sends nothing more', async () => {
    const f = await setup(() => ({ kind: 'done' }))
    await f.outbox.stop()
    const first = await f.outbox.enqueue(f.row(1))
    expect(await f.store.getOutbox(first.id)).toMatchObject({ state: 'pending' })
    await f.outbox.start()
    await f.outbox.idle(signal())
    const again = await f.outbox.enqueue(f.row(1, { target: '*' }))
    expect(again).toMatchObject({ state: 'done', target: B })
    await f.outbox.idle(signal())
    expect(f.calls).toHaveLength(1)
  })

  it('stores rows enqueued in one turn with one insertOutboxMany', async () => {
    const inner = memoryStore()
    const batches: number[] = []
    const insertMany = (rows: readonly NewOutboxRow[]): ReturnType<RuntimeStore['insertOutboxMany']> => {
      batches.push(rows.length)
      return inner.insertOutboxMany(rows)
    }
    // Every other method goes to the memory store itself (its private fields need it as `this`).
    const store = new Proxy(inner, {
      get: (target, key) => {
        if (key === 'insertOutboxMany') return insertMany
        const value: unknown = Reflect.get(target, key)
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value
      },
    })
    const f = await setup(() => ({ kind: 'done' }), { store })
    const rows = await Promise.all(Array.from({ length: 100 }, (_, i) => f.outbox.enqueue(f.row(i + 1))))
    await f.outbox.enqueue(f.row(101))
    expect(batches).toEqual([100, 1])
    expect(rows.map((r) => r.id)).toEqual(Array.from({ length: 100 }, (_, i) => testMessageId(i + 1)))
    await f.outbox.idle(signal())
    expect(f.calls).toHaveLength(101)
  })

  it('accepted waits for receipts, and is done once every known recipient is final', async () => {
    const f = await setup((row) =>
      row.channel === 'dm'
        ? { kind: 'accepted', recipients: { [B]: 'queued' } }
        : { kind: 'accepted', recipients: { [B]: 'delivered', [C]: 'queued', [D]: 'queued' } },
    )
    const dm = await f.outbox.enqueue(f.row(1))
    const group = await f.outbox.enqueue(f.row(2, { channel: 'group', target: '@ops' }))
    await f.outbox.idle(signal())
    expect(await stateOf(f.outbox, dm.id)).toBe('accepted')
    expect(await f.outbox.receipt(dm.id, B, 'delivered')).toMatchObject({
      state: 'done',
      recipients: { [B]: 'delivered' },
    })

    expect(await f.outbox.receipt(group.id, C, 'delivered')).toMatchObject({ state: 'accepted' })
    // A late `queued` never replaces a final outcome.
    expect(await f.outbox.receipt(group.id, C, 'queued')).toMatchObject({ recipients: { [C]: 'delivered' } })
    expect(await f.outbox.receipt(group.id, D, 'undecryptable')).toMatchObject({
      state: 'done',
      recipients: { [B]: 'delivered', [C]: 'delivered', [D]: 'undecryptable' },
    })
    expect(await f.outbox.receipt(testMessageId(99), B, 'delivered')).toBeUndefined()
    expect(f.calls).toHaveLength(2)
  })

  it('records the transport that answered on the row (via); a receipt that finishes a row says relay', async () => {
    const f = await setup((row) => {
      if (row.id === testMessageId(1)) return { kind: 'done', recipients: { [B]: 'delivered' }, via: 'p2p' }
      if (row.id === testMessageId(2))
        return { kind: 'accepted', recipients: { [B]: 'queued' }, via: 'relay' }
      return { kind: 'retry', counted: false, error: DISCONNECTED }
    })
    await f.outbox.enqueue(f.row(1))
    await f.outbox.enqueue(f.row(2))
    await f.outbox.idle(signal())
    expect(await f.outbox.status(testMessageId(1))).toMatchObject({ state: 'done', via: 'p2p' })
    expect(await f.outbox.status(testMessageId(2))).toMatchObject({ state: 'accepted', via: 'relay' })
    // The coordinator's receipt finishes the queued row: still the relay's.
    expect(await f.outbox.receipt(testMessageId(2), B, 'delivered')).toMatchObject({
      state: 'done',
      via: 'relay',
    })

    // A direct row waiting for the link has no transport yet; a receipt (its send_ack was lost) names one.
    const waiting = waitFor(events(f.outbox), 'state', {
      signal: signal(),
      filter: (r) => r.id === testMessageId(3) && r.state === 'pending' && r.lastError !== undefined,
    })
    await f.outbox.enqueue(f.row(3))
    const [retried] = await waiting
    expect(retried.via).toBeUndefined()
    expect(await f.outbox.receipt(testMessageId(3), B, 'delivered')).toMatchObject({
      state: 'done',
      via: 'relay',
    })
  })

  it('a receipt that arrives while the dispatch is in flight is kept by its result', async () => {
    let release: (result: DispatchResult) => void = () => {}
    const f = await setup(() => new Promise<DispatchResult>((resolve) => (release = resolve)))
    const inflight = waitFor(events(f.outbox), 'state', {
      signal: signal(),
      filter: (r) => r.state === 'inflight',
    })
    const row = await f.outbox.enqueue(f.row(1))
    await inflight
    expect(await f.outbox.receipt(row.id, B, 'delivered')).toMatchObject({ state: 'inflight' })
    release({ kind: 'accepted', recipients: { [B]: 'queued' } })
    await f.outbox.idle(signal())
    expect(await f.outbox.status(row.id)).toMatchObject({ state: 'done', recipients: { [B]: 'delivered' } })
  })

  it('counted retries use an attempt each and back off with full jitter, doubling', async () => {
    const f = await setup((_row, call) =>
      call <= 3 ? { kind: 'retry', counted: true, error: QUEUE_FULL } : { kind: 'done' },
    )
    const retried = waitFor(events(f.outbox), 'state', { signal: signal(), filter: (r) => r.attempts === 1 })
    const row = await f.outbox.enqueue(f.row(1))
    await retried
    expect(await f.outbox.status(row.id)).toMatchObject({
      state: 'pending',
      attempts: 1,
      nextAttemptAt: T0 + 250, // random 0.5 × 500 ms
      lastError: QUEUE_FULL,
    })
    await f.clock.advance(249)
    expect(f.calls).toHaveLength(1)
    await f.clock.advance(1)
    expect(f.calls).toHaveLength(2)
    await f.clock.advance(500) // 0.5 × 1 s
    expect(f.calls).toHaveLength(3)
    expect((await f.outbox.status(row.id))?.attempts).toBe(3)
    await f.clock.advance(1_000) // 0.5 × 2 s
    await f.outbox.idle(signal())
    expect(f.calls.map((c) => c.at - T0)).toEqual([0, 250, 750, 1_750])
    const done = await f.outbox.status(row.id)
    expect(done).toMatchObject({ state: 'done', attempts: 3 })
    expect(done?.lastError).toBeUndefined()
  })

  it('uncounted retries use no attempt; their own backoff doubles to the 30 s cap', async () => {
    const f = await setup(
      (_row, call) =>
        call <= 12 ? { kind: 'retry', counted: false, error: DISCONNECTED } : { kind: 'done' },
      { random: () => 0.9999 },
    )
    const row = await f.outbox.enqueue(f.row(1))
    while (f.calls.length < 13) await f.clock.advance(1_000)
    await f.outbox.idle(signal())
    const gaps = f.calls.slice(1).map((c, i) => c.at - (f.calls[i] as Call).at)
    // Just under the ceilings 0.5, 1, 2, 4, 8, 16, then 30 s from there on.
    expect(gaps).toEqual([499, 999, 1_999, 3_999, 7_999, 15_998, ...Array<number>(6).fill(29_997)])
    expect(await f.outbox.status(row.id)).toMatchObject({ state: 'done', attempts: 0 })
  })

  it('a dispatch that fails for the link after wake() was called retries at once, not after its backoff', async () => {
    // The row fails for want of a link through an outage (its uncounted backoff grows); then the link
    // comes back (wake) while one more dispatch is out, and that one fails as it left before the link.
    let release!: () => void
    const f = await setup(async (_row, call) => {
      if (call === 6) await new Promise<void>((r) => (release = r))
      return call <= 6 ? { kind: 'retry', counted: false, error: DISCONNECTED } : { kind: 'done' }
    })
    const row = await f.outbox.enqueue(f.row(1))
    while (f.calls.length < 6) await f.clock.advance(1_000)
    const at = f.clock.now()
    f.outbox.wake()
    release()
    // No clock advance: it must not wait out a backoff that had grown to several seconds.
    await eventually(async () => (await f.outbox.status(row.id))?.state === 'done')
    expect(f.calls.map((c) => c.at).slice(-1)).toEqual([at])
    expect(await f.outbox.status(row.id)).toMatchObject({ attempts: 0 })
  })

  it('a row refused by a coordinator shutting down keeps its attempts, and wake() makes it due at once', async () => {
    const SHUTTING_DOWN = { code: 'MESH_ERR_SHUTTING_DOWN', message: 'going away' }
    const f = await setup(
      (_row, call) => (call <= 4 ? { kind: 'retry', counted: true, error: SHUTTING_DOWN } : { kind: 'done' }),
      { random: () => 0.9999 },
    )
    const row = await f.outbox.enqueue(f.row(1))
    while (f.calls.length < 4) await f.clock.advance(1_000)
    await eventually(async () => (await f.outbox.status(row.id))?.attempts === 4)
    const waiting = await f.outbox.status(row.id)
    expect(waiting!.nextAttemptAt - f.clock.now()).toBeGreaterThan(1_000)
    const at = f.clock.now()
    f.outbox.wake()
    // No clock advance: the backoff grew through the outage, and the new hello ends it.
    await eventually(async () => (await f.outbox.status(row.id))?.state === 'done')
    expect(f.calls.map((c) => c.at).slice(-1)).toEqual([at])
    expect(await f.outbox.status(row.id)).toMatchObject({ attempts: 4 })
  })

  it('a counted refusal of the message itself (a full queue) is not hurried by wake()', async () => {
    const f = await setup(
      (_row, call) => (call === 1 ? { kind: 'retry', counted: true, error: QUEUE_FULL } : { kind: 'done' }),
      { random: () => 0.9999 },
    )
    const row = await f.outbox.enqueue(f.row(1))
    await eventually(async () => (await f.outbox.status(row.id))?.attempts === 1)
    f.outbox.wake()
    await f.clock.advance(0)
    expect(f.calls).toHaveLength(1)
    await f.clock.advance(1_000)
    await f.outbox.idle(signal())
    expect(await f.outbox.status(row.id)).toMatchObject({ state: 'done', attempts: 1 })
  })

  it('a rate-limited row waits retryAfterMs without an attempt, and wake() does not hurry it', async () => {
    const f = await setup((_row, call) =>
      call === 1
        ? {
            kind: 'retry',
            counted: false,
            retryAfterMs: 1_234,
            error: { code: 'MESH_ERR_RATE_LIMITED', message: 'slow down' },
          }
        : { kind: 'done' },
    )
    const row = await f.outbox.enqueue(f.row(1))
    await eventually(async () => (await f.outbox.status(row.id))?.nextAttemptAt === T0 + 1_234)
    f.outbox.wake()
    await f.clock.advance(1_233)
    expect(f.calls).toHaveLength(1)
    await f.clock.advance(1)
    await f.outbox.idle(signal())
    expect(f.calls.map((c) => c.at - T0)).toEqual([0, 1_234])
    expect(await f.outbox.status(row.id)).toMatchObject({ state: 'done', attempts: 0 })
  })

  it('a counted retry with retryAfterMs waits exactly that long', async () => {
    const f = await setup((_row, call) =>
      call === 1
        ? { kind: 'retry', counted: true, retryAfterMs: 7_000, error: QUEUE_FULL }
        : { kind: 'done' },
    )
    const retried = waitFor(events(f.outbox), 'state', { signal: signal(), filter: (r) => r.attempts === 1 })
    await f.outbox.enqueue(f.row(1))
    await retried
    await f.clock.advance(6_999)
    expect(f.calls).toHaveLength(1)
    await f.clock.advance(1)
    await f.outbox.idle(signal())
    expect(f.calls.map((c) => c.at - T0)).toEqual([0, 7_000])
  })

  it('goes dead after 25 counted attempts with MESH_ERR_TOO_MANY_ATTEMPTS', async () => {
    const f = await setup(() => ({ kind: 'retry', counted: true, error: QUEUE_FULL }))
    const row = await f.outbox.enqueue(f.row(1))
    while ((await stateOf(f.outbox, row.id)) !== 'dead') await f.clock.advance(30_000)
    const dead = await f.outbox.status(row.id)
    expect(dead).toMatchObject({ state: 'dead', attempts: 25 })
    expect(dead?.lastError?.code).toBe('MESH_ERR_TOO_MANY_ATTEMPTS')
    expect(dead?.lastError?.message).toContain('MESH_ERR_QUEUE_FULL')
    expect(f.calls).toHaveLength(25)
    await f.clock.advance(DAY)
    expect(f.calls).toHaveLength(25)
  })

  it('goes dead at 6 days of age with MESH_ERR_OUTBOX_EXPIRED, waits counted toward the age', async () => {
    const hour = 3_600_000
    const f = await setup(() => ({
      kind: 'retry',
      counted: false,
      retryAfterMs: hour,
      error: { code: 'MESH_ERR_RATE_LIMITED', message: 'slow down' },
    }))
    const row = await f.outbox.enqueue(f.row(1))
    // A row whose retryAfterMs reaches past its expiry dies on time, not later.
    const late = await f.outbox.enqueue(f.row(2, { createdAt: T0 - 6 * DAY + 90_000 }))
    for (let h = 0; h < 6 * 24; h++) await f.clock.advance(hour)
    await f.outbox.idle(signal())
    const dead = await f.outbox.status(row.id)
    expect(dead).toMatchObject({ state: 'dead', attempts: 0, updatedAt: T0 + 6 * DAY })
    expect(dead?.lastError?.code).toBe('MESH_ERR_OUTBOX_EXPIRED')
    expect(dead?.lastError?.message).toContain('MESH_ERR_RATE_LIMITED')
    expect(f.calls.filter((c) => c.id === row.id)).toHaveLength(6 * 24)
    expect(await f.outbox.status(late.id)).toMatchObject({ state: 'dead', updatedAt: T0 + 90_000 })
    expect(f.calls.filter((c) => c.id === late.id)).toHaveLength(1)
  })

  it('a 10-minute outage leaves no row dead, polls at most every 30 s, and delivers after wake()', async () => {
    let connected = false
    let seed = 7
    const f = await setup(
      () =>
        connected
          ? { kind: 'done', recipients: { [B]: 'delivered' } }
          : { kind: 'retry', counted: false, error: DISCONNECTED },
      { random: () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31 },
    )
    const rows = await Promise.all(Array.from({ length: 20 }, (_, i) => f.outbox.enqueue(f.row(i + 1))))
    for (let s = 0; s < 600; s++) await f.clock.advance(1_000)
    const during = await f.store.listOutbox(['pending', 'inflight', 'dead', 'done'], 100)
    expect(during.every((r) => r.state === 'pending' && r.attempts === 0)).toBe(true)
    expect(during).toHaveLength(20)
    for (const row of rows) {
      const times = [...f.calls.filter((c) => c.id === row.id).map((c) => c.at), f.clock.now()]
      const gaps = times.slice(1).map((t, i) => t - (times[i] as number))
      expect(Math.max(...gaps)).toBeLessThanOrEqual(30_000 + 1_000) // plus one clock step
    }
    connected = true
    const before = f.calls.length
    f.outbox.wake()
    await f.outbox.idle(signal()) // no clock movement: wake() made them due now
    expect(f.calls.length - before).toBe(20)
    const after = await f.store.listOutbox(['done'], 100)
    expect(after).toHaveLength(20)
    expect(after.every((r) => r.attempts === 0 && r.lastError === undefined)).toBe(true)
  })

  it('a dispatch that throws is an uncounted retry with MESH_ERR_INTERNAL', async () => {
    const f = await setup((_row, call) => {
      if (call === 1) throw new Error('transport bug')
      return { kind: 'done' }
    })
    const row = await f.outbox.enqueue(f.row(1))
    await eventually(async () => (await f.outbox.status(row.id))?.lastError !== undefined)
    const retried = await f.outbox.status(row.id)
    expect(retried).toMatchObject({ state: 'pending', attempts: 0 })
    expect(retried?.lastError?.code).toBe('MESH_ERR_INTERNAL')
    expect(retried?.lastError?.message).toContain('transport bug')
    await f.clock.advance(250)
    await f.outbox.idle(signal())
    expect(await stateOf(f.outbox, row.id)).toBe('done')
  })

  it('a dead result is final; requeue makes it aborted and sends the new row', async () => {
    const f = await setup((row) =>
      row.id === testMessageId(1)
        ? { kind: 'dead', error: { code: 'MESH_ERR_UNKNOWN_KEY', message: 'no such key' } }
        : { kind: 'done' },
    )
    const row = await f.outbox.enqueue(f.row(1))
    await f.outbox.idle(signal())
    expect(await f.outbox.status(row.id)).toMatchObject({
      state: 'dead',
      lastError: { code: 'MESH_ERR_UNKNOWN_KEY' },
    })
    const fresh = await f.outbox.requeue(row.id, f.row(2))
    expect(fresh).toMatchObject({ id: testMessageId(2), state: 'pending' })
    await f.outbox.idle(signal())
    expect(await f.outbox.status(row.id)).toMatchObject({ state: 'aborted', requeuedAs: testMessageId(2) })
    expect(await stateOf(f.outbox, testMessageId(2))).toBe('done')
    expect(await f.outbox.requeue(testMessageId(2), f.row(3))).toBeUndefined()
    expect(f.calls.map((c) => c.id)).toEqual([testMessageId(1), testMessageId(2)])
  })

  it('never has more than `concurrency` dispatches in flight, and starts the next as one ends', async () => {
    const pending: (() => void)[] = []
    let active = 0
    let most = 0
    const f = await setup(
      () =>
        new Promise<DispatchResult>((resolve) => {
          active++
          most = Math.max(most, active)
          pending.push(() => {
            active--
            resolve({ kind: 'done' })
          })
        }),
      { concurrency: 8 },
    )
    for (let i = 1; i <= 100; i++) await f.outbox.enqueue(f.row(i))
    let finished = 0
    while (finished < 100) {
      await eventually(() => active === Math.min(8, 100 - finished), {
        what: `${Math.min(8, 100 - finished)} active`,
      })
      expect(f.outbox.inflight).toBeLessThanOrEqual(8)
      pending.shift()?.()
      finished++
    }
    await f.outbox.idle(signal())
    expect(most).toBe(8)
    expect(f.calls).toHaveLength(100)
    expect(new Set(f.calls.map((c) => c.id)).size).toBe(100)
  })

  it('at saturation refills in batches of an eighth of the slots', async () => {
    const finish: (() => void)[] = []
    const f = await setup(
      () => new Promise<DispatchResult>((resolve) => finish.push(() => resolve({ kind: 'done' }))),
      { concurrency: 64 },
    )
    await Promise.all(Array.from({ length: 200 }, (_, i) => f.outbox.enqueue(f.row(i + 1))))
    await eventually(() => f.calls.length === 64)
    for (let i = 0; i < 7; i++) finish.shift()?.()
    await eventually(() => f.outbox.inflight === 57)
    expect(f.calls).toHaveLength(64) // 7 free slots: not worth a claim yet
    finish.shift()?.()
    await eventually(() => f.calls.length === 72)
    expect(f.outbox.inflight).toBe(64)
    while (f.calls.length < 200 || finish.length > 0) {
      finish.splice(0).forEach((done) => done())
      await eventually(() => finish.length > 0 || f.outbox.inflight === 0)
    }
    await f.outbox.idle(signal())
    expect(new Set(f.calls.map((c) => c.id)).size).toBe(200)
  })

  it('dispatches many rows at once, each exactly once', async () => {
    const f = await setup(async () => ({ kind: 'done' }))
    const n = 5_000
    await Promise.all(Array.from({ length: n }, (_, i) => f.outbox.enqueue(f.row(i + 1))))
    await f.outbox.idle(signal())
    expect(f.calls).toHaveLength(n)
    expect(new Set(f.calls.map((c) => c.id)).size).toBe(n)
    expect(await f.store.listOutbox(['done'], n + 1)).toHaveLength(n)
  })

  it('stop() aborts in-flight dispatches; their rows go back to pending without an attempt', async () => {
    let mode: 'hang' | 'ignore' | 'done' = 'hang'
    const f = await setup((_row, _call, sig) => {
      if (mode === 'done') return { kind: 'done' }
      if (mode === 'ignore') return new Promise<DispatchResult>(() => {}) // never settles
      return new Promise<DispatchResult>((_resolve, reject) =>
        sig.addEventListener('abort', () => reject(new Error('aborted'))),
      )
    })
    const rows = await Promise.all([1, 2, 3].map((n) => f.outbox.enqueue(f.row(n))))
    await eventually(() => f.outbox.inflight === 3)
    await f.clock.advance(5_000)
    await f.outbox.stop()
    expect(f.calls.every((c) => c.signal.aborted)).toBe(true)
    for (const row of rows) {
      expect(await f.outbox.status(row.id)).toMatchObject({
        state: 'pending',
        attempts: 0,
        nextAttemptAt: T0 + 5_000,
      })
    }
    mode = 'ignore'
    await f.outbox.start()
    await eventually(() => f.outbox.inflight === 3)
    await f.outbox.stop() // resolves although the dispatches never settle
    expect(f.outbox.inflight).toBe(0)
    mode = 'done'
    await f.outbox.start()
    await f.outbox.idle(signal())
    expect(await f.store.listOutbox(['done'], 10)).toHaveLength(3)
  })

  it('a second Outbox on the same sqlite file recovers rows the first left inflight', async () => {
    const path = join(root, 'recover', 'runtime.db')
    const store1 = sqliteStore({ path })
    const clock = new ManualClock(T0)
    const first = new Outbox({ store: store1, clock, dispatch: () => new Promise<DispatchResult>(() => {}) })
    await first.start()
    const sent = await Promise.all(
      [1, 2, 3, 4, 5].map((n) =>
        first.enqueue(testOutboxRow(n, { createdAt: T0, envelope: new Uint8Array(1_000).fill(n) })),
      ),
    )
    await eventually(() => first.inflight === 5)
    expect(await store1.listOutbox(['inflight'], 10)).toHaveLength(5)
    await store1.close() // the first runtime dies mid-dispatch: no stop(), nothing written back

    const f = await setup(() => ({ kind: 'done' }), { store: sqliteStore({ path }) })
    await f.outbox.idle(signal())
    expect(f.calls.map((c) => c.id).sort()).toEqual(sent.map((r) => r.id).sort())
    for (const row of sent) {
      const done = await f.outbox.status(row.id)
      expect(done?.state).toBe('done')
      expect(done?.attempts).toBe(0)
      expect(bytesEqual(done!.envelope, row.envelope)).toBe(true)
    }
  })

  it('rows a previous run left backing off through an outage go at the first wake(), not at their stored backoff', async () => {
    const store = memoryStore()
    const clock = new ManualClock(T0)
    // The previous run: each try failed for want of the link, and its backoff grew to the 30 s cap.
    const before = new Outbox({
      store,
      clock,
      random: () => 0.9999,
      dispatch: async () => ({ kind: 'retry', counted: false, error: DISCONNECTED }),
    })
    await before.start()
    const waiting = await before.enqueue(testOutboxRow(1, { createdAt: T0 }))
    for (let i = 0; i < 8; i++) await clock.advance(30_000)
    await before.stop()
    const row = await store.getOutbox(waiting.id)
    expect(row).toMatchObject({ state: 'pending', lastError: { code: 'MESH_ERR_DISCONNECTED' } })
    expect(row!.nextAttemptAt).toBeGreaterThan(clock.now())

    // The next run (a restarted daemon, its clock at T0: the row is due minutes from now): its hello's
    // wake() sends the row at once, with no clock movement.
    const f = await setup(() => ({ kind: 'done' }), { store })
    f.outbox.wake()
    await eventually(async () => (await f.outbox.status(waiting.id))?.state === 'done', {
      what: 'the row sent at the wake',
    })
    expect(f.calls).toHaveLength(1)
  })

  it('a settle the store refuses is retried after a full-jitter backoff until stored, not left inflight', async () => {
    const clock = new ManualClock(T0)
    const inner = memoryStore()
    let refusals = 3
    // Our own seam: the memory driver, refusing the state update after a dispatch as a full disk does.
    const updateOutbox: RuntimeStore['updateOutbox'] = (id, patch, states) => {
      if (states?.includes('inflight') && patch.state !== undefined && refusals > 0) {
        refusals--
        return Promise.reject(new Error('MESH_ERR_STORE_FULL: database or disk is full'))
      }
      return inner.updateOutbox(id, patch, states)
    }
    const store = new Proxy(inner, {
      get: (target, key) => {
        if (key === 'updateOutbox') return updateOutbox
        const value: unknown = Reflect.get(target, key)
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value
      },
    })
    const errors: Error[] = []
    const outbox = new Outbox({
      store,
      clock,
      random: () => 0.5,
      dispatch: (row) =>
        Promise.resolve<DispatchResult>(
          row.id === testMessageId(1)
            ? { kind: 'done', recipients: { [B]: 'delivered' } }
            : { kind: 'accepted', recipients: { [B]: 'queued' } },
        ),
    })
    outbox.on('error', (err) => errors.push(err))
    open.push({ outbox, store: inner })
    await outbox.start()
    const [done, accepted] = await Promise.all([
      outbox.enqueue(testOutboxRow(1, { createdAt: T0 })),
      outbox.enqueue(testOutboxRow(2, { createdAt: T0 })),
    ])
    await eventually(() => refusals === 1) // one refusal each
    expect(await stateOf(outbox, done.id)).toBe('inflight')
    await clock.advance(249) // the first retry waits half of the 500 ms ceiling
    expect(refusals).toBe(1)
    await clock.advance(1)
    await eventually(() => refusals === 0)
    await clock.advance(500) // the second, half of 1 s
    await outbox.idle(signal())
    expect(await stateOf(outbox, done.id)).toBe('done')
    expect(await stateOf(outbox, accepted.id)).toBe('accepted')
    expect(errors.map((err) => err.message)).toEqual(
      Array(3).fill('MESH_ERR_STORE_FULL: database or disk is full'),
    )
    expect(outbox.inflight).toBe(0)
  })

  it('idle() rejects when its signal aborts while rows wait', async () => {
    const f = await setup(() => ({ kind: 'retry', counted: false, error: DISCONNECTED }))
    await f.outbox.enqueue(f.row(1))
    await expect(f.outbox.idle(AbortSignal.timeout(50))).rejects.toMatchObject({ name: 'TimeoutError' })
  })
})

describe('Outbox retries', () => {
  it('every retry dispatches the envelope bytes as stored, never re-made', async () => {
    const seen: Uint8Array[] = []
    const f = await setup((row, call) => {
      seen.push(row.envelope)
      if (call === 1) return { kind: 'retry', counted: true, error: QUEUE_FULL, retryAfterMs: 10 }
      if (call === 2) return { kind: 'retry', counted: false, error: DISCONNECTED, retryAfterMs: 10 }
      return { kind: 'done' }
    })
    const envelope = Uint8Array.from({ length: 300 }, (_, i) => (i * 7) & 0xff)
    await f.outbox.enqueue(f.row(1, { envelope }))
    await eventually(async () => {
      await f.clock.advance(10)
      return (await stateOf(f.outbox, testMessageId(1))) === 'done'
    })
    expect(seen).toHaveLength(3)
    const stored = (await f.store.getOutbox(testMessageId(1)))!.envelope
    for (const bytes of seen) {
      expect(bytesEqual(bytes, envelope)).toBe(true)
      expect(bytesEqual(bytes, stored)).toBe(true)
    }
  })
})

describe('Outbox depth and backpressure', () => {
  /** A dispatch held until `release()`: rows pile up as a stalled coordinator would leave them. */
  function held(): {
    script: () => Promise<DispatchResult>
    release: () => void
  } {
    let open = false
    const waiting: (() => void)[] = []
    return {
      script: () =>
        open
          ? Promise.resolve({ kind: 'done' })
          : new Promise((resolve) => waiting.push(() => resolve({ kind: 'done' }))),
      release: () => {
        open = true
        for (const go of waiting.splice(0)) go()
      },
    }
  }

  it('counts pending and inflight rows as they come and go, and recounts at start', async () => {
    const h = held()
    const f = await setup(h.script, { concurrency: 2 })
    expect(f.outbox.depth).toBe(0)
    const stored = Promise.all([1, 2, 3, 4, 5].map((n) => f.outbox.enqueue(f.row(n))))
    expect(f.outbox.depth).toBe(5) // counted before the store answers
    await stored
    await eventually(() => f.outbox.inflight === 2)
    expect(f.outbox.depth).toBe(5)
    await f.outbox.enqueue(f.row(1)) // the same id again: nothing new
    expect(f.outbox.depth).toBe(5)
    await f.outbox.stop()
    await f.outbox.start()
    expect(f.outbox.depth).toBe(5)
    h.release()
    await f.outbox.idle(signal())
    expect(f.outbox.depth).toBe(0)
  })

  it('a dead row, a requeue and a receipt that finishes a waiting row move the depth', async () => {
    const f = await setup((row) =>
      row.id === testMessageId(1)
        ? { kind: 'dead', error: { code: 'MESH_ERR_UNKNOWN_KEY', message: 'no such key' } }
        : { kind: 'retry', counted: false, error: DISCONNECTED },
    )
    await f.outbox.enqueue(f.row(1))
    await f.outbox.enqueue(f.row(2))
    await eventually(async () => (await stateOf(f.outbox, testMessageId(1))) === 'dead')
    await eventually(async () => (await f.outbox.status(testMessageId(2)))?.lastError !== undefined)
    expect(f.outbox.depth).toBe(1)
    await f.outbox.receipt(testMessageId(2), B, 'delivered')
    expect(await stateOf(f.outbox, testMessageId(2))).toBe('done')
    expect(f.outbox.depth).toBe(0)
    await f.outbox.requeue(testMessageId(1), f.row(3))
    expect(f.outbox.depth).toBe(1)
  })

  it('refuses past maxDepth with MESH_ERR_OUTBOX_FULL and retryAfterMs, storing nothing', async () => {
    const h = held()
    const f = await setup(h.script, { maxDepth: 4, highWaterMark: 2, retryAfterMs: (excess) => excess * 100 })
    await Promise.all([1, 2, 3, 4].map((n) => f.outbox.enqueue(f.row(n))))
    await expect(f.outbox.enqueue(f.row(5))).rejects.toMatchObject({
      code: 'MESH_ERR_OUTBOX_FULL',
      details: { outboxDepth: 4, maxDepth: 4, retryAfterMs: 300 },
    })
    expect(await f.store.getOutbox(testMessageId(5))).toBeUndefined()
    expect(f.outbox.depth).toBe(4)
    h.release()
    await f.outbox.idle(signal())
    await f.outbox.enqueue(f.row(5))
  })

  it('waitForRoom waits below the high-water mark, first come first served; drain fires below the low', async () => {
    const h = held()
    const f = await setup(h.script, { concurrency: 1, highWaterMark: 4, lowWaterMark: 2, maxDepth: 10 })
    let drains = 0
    f.outbox.on('drain', () => drains++)
    await Promise.all([1, 2, 3, 4].map((n) => f.outbox.enqueue(f.row(n))))
    const order: number[] = []
    const waiting = [5, 6].map((n) =>
      f.outbox.enqueue(f.row(n), { waitForRoom: true }).then(() => order.push(n)),
    )
    const aborted = new AbortController()
    const given = f.outbox.enqueue(f.row(7), { waitForRoom: true, signal: aborted.signal })
    aborted.abort(new Error('caller gave up'))
    await expect(given).rejects.toThrow('caller gave up')
    await Promise.resolve()
    expect(order).toEqual([])
    expect(f.outbox.depth).toBe(4)
    expect(drains).toBe(0)
    h.release()
    await Promise.all(waiting)
    expect(order).toEqual([5, 6])
    await f.outbox.idle(signal())
    expect(f.outbox.depth).toBe(0)
    expect(drains).toBe(1)
    expect(await f.store.getOutbox(testMessageId(7))).toBeUndefined()
  })
})
