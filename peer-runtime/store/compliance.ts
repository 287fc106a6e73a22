/**
 * The one suite every `RuntimeStore` driver passes (CONVENTIONS §2): outbox inserts idempotent by id,
 * compare-and-set updates (one at a time and in batches), the transport a row records (`via`), the due
 * order, `claimDue`, `nextDue`, recovery of `inflight` rows, requeue only from `dead`, pruning (whole and
 * in chunks); the saved mesh view; rpc answers; inbox dedupe by `(mesh, recipient, from,
 * clientMessageId)`, reader scoping, consumption; and `MESH_ERR_STORE_CLOSED` after `close()`.
 *
 * A driver's test is a few lines: `runtimeStoreCompliance('memory', async () => memoryStore(), { runner:
 * { describe, it } })`. The runner is injected because shipped folders may not import devDependencies
 * (test/import-rules.ts) and vitest is one; the suite asserts by throwing.
 */
import { bytesEqual, toHex } from '../../protocol/encoding.js'
import { isMeshError } from '../../protocol/errors.js'
import type { InboxRow, NewInboxRow, NewOutboxRow, OutboxChange, OutboxRow, RuntimeStore } from './types.js'

/** The part of vitest (or mocha) the suite registers its cases with. */
export interface StoreComplianceRunner {
  describe(name: string, body: () => void): void
  it(name: string, body: () => Promise<void>, timeoutMs?: number): void
}

export interface StoreComplianceOptions {
  runner: StoreComplianceRunner
  /** The durability the driver must report. */
  durability: 'durable' | 'volatile'
}

const T0 = Date.UTC(2026, 0, 1)
const MESH = 'mesh-test'

/** A 32-byte key filled with `n`. */
export function testKey(n: number): Uint8Array {
  return new Uint8Array(32).fill(n)
}

const CROCKFORD = '0123456789ABCDEFGHJKMNPQRSTVWXYZ'

/** A ULID whose order follows `n` (for `n` ≥ 0). */
export function testMessageId(n: number): string {
  const digits = [...n.toString(32)].map((d) => CROCKFORD[parseInt(d, 32)] ?? '0').join('')
  return `01J${digits.padStart(23, '0')}`
}

/** A new outbox row for tests; `n` seeds its id and envelope bytes. */
export function testOutboxRow(n: number, overrides: Partial<NewOutboxRow> = {}): NewOutboxRow {
  return {
    id: testMessageId(n),
    mesh: MESH,
    from: testKey(1),
    target: toHex(testKey(2)),
    channel: 'dm',
    envelope: new Uint8Array(64).fill(n & 0xff),
    createdAt: T0 + n,
    ...overrides,
  }
}

/** A new inbox row for tests: message `n` from key `from` to key `to`. */
export function testInboxRow(
  n: number,
  {
    from = 1,
    to = 2,
    ...overrides
  }: Omit<Partial<NewInboxRow>, 'from' | 'recipient'> & { from?: number; to?: number } = {},
): NewInboxRow {
  return {
    mesh: MESH,
    recipient: testKey(to),
    from: testKey(from),
    clientMessageId: testMessageId(n),
    channel: 'dm',
    via: 'relay',
    deliveryId: `d-${n}`,
    envelope: new Uint8Array(48).fill(n & 0xff),
    payload: new Uint8Array([0xa1, 0x78]),
    status: 'ok',
    receivedAt: T0 + n,
    ...overrides,
  }
}

class ComplianceError extends Error {
  override readonly name = 'ComplianceError'
}

function check(condition: boolean, message: string): asserts condition {
  if (!condition) throw new ComplianceError(message)
}

/** A stable text for a value: bytes as hex, keys sorted, undefined dropped. */
function canonical(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => {
    if (v instanceof Uint8Array) return `bytes:${toHex(v)}`
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) {
      return Object.fromEntries(
        Object.entries(v as Record<string, unknown>)
          .filter(([, x]) => x !== undefined)
          .sort(([a], [b]) => (a < b ? -1 : 1)),
      )
    }
    return v
  })
}

function checkEqual(actual: unknown, expected: unknown, what: string): void {
  const a = canonical(actual)
  const e = canonical(expected)
  check(a === e, `${what}: expected ${e}, got ${a}`)
}

function ids(rows: readonly { id: string }[]): string[] {
  return rows.map((row) => row.id)
}

function seqs(rows: readonly InboxRow[]): number[] {
  return rows.map((row) => row.seq)
}

/** What a freshly inserted row must look like. */
function expectedNew(row: NewOutboxRow): OutboxRow {
  return {
    ...row,
    state: 'pending',
    attempts: 0,
    updatedAt: row.createdAt,
    nextAttemptAt: row.nextAttemptAt ?? row.createdAt,
  }
}

/** Registers the compliance cases for one driver under `describe(name)`. */
export function runtimeStoreCompliance(
  name: string,
  makeStore: () => Promise<RuntimeStore>,
  options: StoreComplianceOptions,
): void {
  const { runner } = options
  const test = (title: string, body: (store: RuntimeStore) => Promise<void>): void => {
    runner.it(title, async () => {
      const store = await makeStore()
      try {
        await body(store)
      } finally {
        await store.close()
      }
    })
  }

  runner.describe(`runtime store compliance: ${name}`, () => {
    test(`reports durability ${options.durability}`, async (store) => {
      check(store.durability === options.durability, `durability is ${store.durability}`)
    })

    test('inserts a pending row with no attempts, and a second insert of the id changes nothing', async (store) => {
      const input = testOutboxRow(1, {
        fingerprint: new Uint8Array([9, 9]),
        sessionId: 'session-a',
        recipients: { [toHex(testKey(2))]: 'queued' },
      })
      const first = await store.insertOutbox(input)
      check(first.inserted, 'the first insert did not insert')
      checkEqual(first.row, expectedNew(input), 'the inserted row')
      const again = await store.insertOutbox({ ...input, target: '*', envelope: new Uint8Array([1]) })
      check(!again.inserted, 'a second insert of the same id inserted')
      checkEqual(again.row, expectedNew(input), 'the row a duplicate insert returned')
      checkEqual(await store.getOutbox(input.id), expectedNew(input), 'the stored row')
      check((await store.getOutbox(testMessageId(99))) === undefined, 'a missing id returned a row')
    })

    test('insertOutboxMany inserts in order; a repeated id is a duplicate of the first', async (store) => {
      await store.insertOutbox(testOutboxRow(1))
      const results = await store.insertOutboxMany([
        testOutboxRow(2),
        testOutboxRow(1, { target: '*' }),
        testOutboxRow(3),
        testOutboxRow(2, { target: '*' }),
      ])
      checkEqual(
        results.map((r) => r.inserted),
        [true, false, true, false],
        'which rows of the batch were inserted',
      )
      checkEqual(
        results.map((r) => r.row),
        [2, 1, 3, 2].map((n) => expectedNew(testOutboxRow(n))),
        'the rows the batch returned',
      )
      checkEqual(await store.insertOutboxMany([]), [], 'an empty batch')
      checkEqual(ids(await store.dueOutbox(T0 + 100, 10)), [1, 2, 3].map(testMessageId), 'the stored rows')
    })

    test('keeps its own copy of the bytes it was given', async (store) => {
      const input = testOutboxRow(2)
      await store.insertOutbox(input)
      input.envelope.fill(0xee)
      input.from.fill(0xee)
      const row = await store.getOutbox(input.id)
      check(row !== undefined, 'row missing')
      check(bytesEqual(row.envelope, testOutboxRow(2).envelope), 'the stored envelope changed with the input')
      check(bytesEqual(row.from, testKey(1)), 'the stored from changed with the input')
    })

    test('carries a 64 KiB envelope intact', async (store) => {
      const envelope = new Uint8Array(64 * 1024).map((_, i) => (i * 31) & 0xff)
      await store.insertOutbox(testOutboxRow(3, { envelope }))
      const row = await store.getOutbox(testMessageId(3))
      check(row !== undefined && bytesEqual(row.envelope, envelope), 'the 64 KiB envelope changed')
    })

    test('updates only when the state is one of `expect` (compare-and-set)', async (store) => {
      const input = testOutboxRow(1)
      await store.insertOutbox(input)
      const miss = await store.updateOutbox(input.id, { state: 'done', updatedAt: T0 + 10 }, ['inflight'])
      check(miss === undefined, 'an update expecting inflight applied to a pending row')
      checkEqual(await store.getOutbox(input.id), expectedNew(input), 'the row after a failed CAS')

      const moved = await store.updateOutbox(
        input.id,
        {
          state: 'inflight',
          attempts: 3,
          nextAttemptAt: T0 + 500,
          lastError: { code: 'MESH_ERR_QUEUE_FULL', message: 'full' },
          recipients: { [toHex(testKey(2))]: 'queued' },
          updatedAt: T0 + 20,
        },
        ['pending'],
      )
      const expected: OutboxRow = {
        ...expectedNew(input),
        state: 'inflight',
        attempts: 3,
        nextAttemptAt: T0 + 500,
        lastError: { code: 'MESH_ERR_QUEUE_FULL', message: 'full' },
        recipients: { [toHex(testKey(2))]: 'queued' },
        updatedAt: T0 + 20,
      }
      checkEqual(moved, expected, 'the row a CAS returned')
      checkEqual(await store.getOutbox(input.id), expected, 'the stored row after a CAS')

      // Absent fields are left alone; `lastError: null` clears; no `expect` matches any state.
      const cleared = await store.updateOutbox(input.id, { lastError: null, updatedAt: T0 + 30 })
      const { lastError: _dropped, ...withoutError } = expected
      checkEqual(cleared, { ...withoutError, updatedAt: T0 + 30 }, 'the row after clearing lastError')
      check(
        (await store.updateOutbox(testMessageId(99), { state: 'done', updatedAt: T0 })) === undefined,
        'an update of a missing row returned a row',
      )
    })

    test('updateOutboxMany: each change a compare-and-set of its own, in order, as the single calls', async (store) => {
      const recipients = { [toHex(testKey(2))]: 'queued' } as const
      const changes: OutboxChange[] = [
        { id: testMessageId(1), patch: { state: 'inflight', updatedAt: T0 + 10 }, expect: ['pending'] },
        // A mismatch in the middle: row 3 is accepted, so this one is undefined and the rest still apply.
        { id: testMessageId(3), patch: { state: 'done', updatedAt: T0 + 11 }, expect: ['inflight'] },
        { id: testMessageId(99), patch: { state: 'done', updatedAt: T0 + 11 } },
        {
          id: testMessageId(2),
          patch: {
            attempts: 2,
            nextAttemptAt: T0 + 500,
            lastError: { code: 'MESH_ERR_QUEUE_FULL', message: 'full' },
            recipients,
            updatedAt: T0 + 12,
          },
        },
        // The same id again sees the first change of the batch, and a third change sees the second.
        {
          id: testMessageId(1),
          patch: { state: 'accepted', recipients, updatedAt: T0 + 13 },
          expect: ['inflight'],
        },
        { id: testMessageId(1), patch: { state: 'done', updatedAt: T0 + 14 }, expect: ['inflight'] },
        { id: testMessageId(4), patch: { lastError: null, updatedAt: T0 + 15 }, expect: ['pending'] },
      ]
      const setUp = async (s: RuntimeStore): Promise<void> => {
        await s.insertOutboxMany(
          [1, 2, 3, 4].map((n) =>
            testOutboxRow(n, n === 4 ? { lastError: { code: 'MESH_ERR_INTERNAL', message: 'x' } } : {}),
          ),
        )
        await s.updateOutbox(testMessageId(3), { state: 'accepted', updatedAt: T0 + 5 })
      }
      await setUp(store)
      const results = await store.updateOutboxMany(changes)
      checkEqual(
        results.map((row) => row?.state),
        ['inflight', undefined, undefined, 'pending', 'accepted', undefined, 'pending'],
        'the states the batch resolved with',
      )
      checkEqual(results[3]?.nextAttemptAt, T0 + 500, 'the moved row')
      check(results[6]?.lastError === undefined, 'lastError: null did not clear in a batch')
      checkEqual(
        await store.getOutbox(testMessageId(3)),
        { ...expectedNew(testOutboxRow(3)), state: 'accepted', updatedAt: T0 + 5 },
        'the row a mismatched change left',
      )

      // The same changes one call at a time, on a second store: the same results and the same rows.
      const twin = await makeStore()
      try {
        await setUp(twin)
        const single: (OutboxRow | undefined)[] = []
        for (const c of changes) single.push(await twin.updateOutbox(c.id, c.patch, c.expect))
        checkEqual(results, single, 'the batch beside the single calls')
        for (const n of [1, 2, 3, 4, 99]) {
          checkEqual(
            await store.getOutbox(testMessageId(n)),
            await twin.getOutbox(testMessageId(n)),
            `row ${n} after the batch beside the single calls`,
          )
        }
        checkEqual(
          ids(await store.dueOutbox(T0 + 1_000, 10)),
          ids(await twin.dueOutbox(T0 + 1_000, 10)),
          'the due order after the batch',
        )
        checkEqual(await store.nextDue(), await twin.nextDue(), 'nextDue after the batch')
      } finally {
        await twin.close()
      }
      checkEqual(await store.updateOutboxMany([]), [], 'an empty batch')
    })

    test('keeps the transport that carried a row (via): set by a patch, kept by later ones, one at a time and in batches', async (store) => {
      const bob = toHex(testKey(2))
      await store.insertOutboxMany([1, 2, 3].map((n) => testOutboxRow(n)))
      check((await store.getOutbox(testMessageId(1)))?.via === undefined, 'a new row has a via')
      const accepted = await store.updateOutbox(
        testMessageId(1),
        { state: 'accepted', via: 'relay', recipients: { [bob]: 'queued' }, updatedAt: T0 + 10 },
        ['pending'],
      )
      checkEqual(accepted?.via, 'relay', 'the via an update returned')
      // A receipt's patch names no transport: the row keeps the one that carried it.
      await store.updateOutbox(
        testMessageId(1),
        { state: 'done', recipients: { [bob]: 'delivered' }, updatedAt: T0 + 20 },
        ['accepted'],
      )
      checkEqual(
        await store.getOutbox(testMessageId(1)),
        {
          ...expectedNew(testOutboxRow(1)),
          state: 'done',
          via: 'relay',
          recipients: { [bob]: 'delivered' },
          updatedAt: T0 + 20,
        },
        'the row after a patch without via',
      )

      const results = await store.updateOutboxMany([
        { id: testMessageId(2), patch: { state: 'inflight', updatedAt: T0 + 30 }, expect: ['pending'] },
        {
          id: testMessageId(2),
          patch: { state: 'done', via: 'p2p', updatedAt: T0 + 31 },
          expect: ['inflight'],
        },
        { id: testMessageId(2), patch: { lastError: null, updatedAt: T0 + 32 } },
        // A change whose state does not match writes no via either.
        { id: testMessageId(1), patch: { via: 'p2p', updatedAt: T0 + 33 }, expect: ['pending'] },
      ])
      checkEqual(
        results.map((row) => row?.via),
        [undefined, 'p2p', 'p2p', undefined],
        'the vias the batch resolved with',
      )
      checkEqual(
        (await store.listOutbox(['done'], 10)).map((row) => [row.id, row.via]),
        [
          [testMessageId(1), 'relay'],
          [testMessageId(2), 'p2p'],
        ],
        'the vias of the done rows',
      )
      // A requeued row is a new message: nothing carried it yet.
      await store.updateOutbox(testMessageId(3), { state: 'dead', via: 'relay', updatedAt: T0 + 40 })
      const fresh = await store.requeueDead(testMessageId(3), testOutboxRow(4), T0 + 50)
      check(fresh !== undefined && fresh.via === undefined, 'the requeued row came back with a via')
      check((await store.getOutbox(testMessageId(4)))?.via === undefined, 'the stored requeued row has a via')
      checkEqual((await store.getOutbox(testMessageId(3)))?.via, 'relay', 'the aborted row lost its via')
    })

    test('lists due rows by next attempt, then age, then id, and nextDue is the earliest', async (store) => {
      check((await store.nextDue()) === undefined, 'nextDue of an empty outbox is defined')
      // Row 5 is the oldest but due last; rows 2 and 3 are due at the same time.
      await store.insertOutbox(testOutboxRow(5, { createdAt: T0, nextAttemptAt: T0 + 300 }))
      await store.insertOutbox(testOutboxRow(3, { createdAt: T0 + 3, nextAttemptAt: T0 + 100 }))
      await store.insertOutbox(testOutboxRow(2, { createdAt: T0 + 2, nextAttemptAt: T0 + 100 }))
      await store.insertOutbox(testOutboxRow(4, { createdAt: T0 + 1, nextAttemptAt: T0 + 50 }))
      await store.insertOutbox(testOutboxRow(6, { createdAt: T0 + 1, nextAttemptAt: T0 + 50 }))
      await store.insertOutbox(testOutboxRow(7, { createdAt: T0, nextAttemptAt: T0 + 10 }))
      await store.updateOutbox(testMessageId(7), { state: 'accepted', updatedAt: T0 + 1 })

      check((await store.nextDue()) === T0 + 50, 'nextDue is not the earliest pending row')
      checkEqual(ids(await store.dueOutbox(T0 + 49, 10)), [], 'rows due before their time')
      checkEqual(
        ids(await store.dueOutbox(T0 + 100, 10)),
        [4, 6, 2, 3].map(testMessageId),
        'the due order at T0+100',
      )
      checkEqual(ids(await store.dueOutbox(T0 + 1_000, 2)), [4, 6].map(testMessageId), 'the due limit')
      const all = await store.dueOutbox(T0 + 1_000, 10)
      checkEqual(ids(all), [4, 6, 2, 3, 5].map(testMessageId), 'all due rows (not the accepted one)')
      check(
        all.every((row) => row.state === 'pending'),
        'dueOutbox changed states',
      )

      // Moving a row later re-sorts it.
      await store.updateOutbox(testMessageId(4), { nextAttemptAt: T0 + 200, updatedAt: T0 + 2 })
      checkEqual(
        ids(await store.dueOutbox(T0 + 1_000, 10)),
        [6, 2, 3, 4, 5].map(testMessageId),
        'the due order after a row moved',
      )
      check((await store.nextDue()) === T0 + 50, 'nextDue after a row moved')
      await store.updateOutbox(testMessageId(6), { state: 'inflight', updatedAt: T0 + 2 }, ['pending'])
      check((await store.nextDue()) === T0 + 100, 'nextDue counts a row that left pending')
    })

    test('claimDue moves due rows to inflight in due order, once', async (store) => {
      for (const n of [1, 2, 3, 4]) {
        await store.insertOutbox(testOutboxRow(n, { nextAttemptAt: T0 + (n === 4 ? 1_000 : 10 - n) }))
      }
      const claimed = await store.claimDue(T0 + 100, 2)
      checkEqual(ids(claimed), [3, 2].map(testMessageId), 'the first claim')
      check(
        claimed.every((row) => row.state === 'inflight' && row.updatedAt === T0 + 100),
        'claimed rows are not inflight at the claim time',
      )
      check((await store.getOutbox(testMessageId(3)))?.state === 'inflight', 'the claim was not stored')
      checkEqual(ids(await store.claimDue(T0 + 100, 10)), [testMessageId(1)], 'the second claim')
      checkEqual(ids(await store.claimDue(T0 + 100, 10)), [], 'a third claim')
      check((await store.nextDue()) === T0 + 1_000, 'nextDue after the claims')
    })

    test('lists rows by state, oldest first, within the limit', async (store) => {
      for (const n of [3, 1, 2, 4]) await store.insertOutbox(testOutboxRow(n))
      await store.updateOutbox(testMessageId(2), { state: 'dead', updatedAt: T0 + 9 })
      await store.updateOutbox(testMessageId(4), { state: 'dead', updatedAt: T0 + 9 })
      checkEqual(ids(await store.listOutbox(['dead'], 10)), [2, 4].map(testMessageId), 'dead rows')
      checkEqual(ids(await store.listOutbox(['pending', 'dead'], 3)), [1, 2, 3].map(testMessageId), 'limit')
      checkEqual(ids(await store.listOutbox(['done'], 10)), [], 'no done rows')
    })

    test('recoverInflight puts every inflight row back to pending, due now', async (store) => {
      for (const n of [1, 2, 3]) await store.insertOutbox(testOutboxRow(n, { nextAttemptAt: T0 }))
      await store.claimDue(T0, 2)
      await store.updateOutbox(testMessageId(3), { state: 'accepted', updatedAt: T0 + 1 })
      check((await store.recoverInflight(T0 + 5_000)) === 2, 'recoverInflight moved another count')
      const due = await store.dueOutbox(T0 + 5_000, 10)
      checkEqual(ids(due), [1, 2].map(testMessageId), 'the recovered rows')
      check(
        due.every((row) => row.nextAttemptAt === T0 + 5_000 && row.attempts === 0),
        'recovered rows are not due now, or gained an attempt',
      )
      check((await store.recoverInflight(T0 + 6_000)) === 0, 'a second recovery moved rows')
      check(
        (await store.getOutbox(testMessageId(3)))?.state === 'accepted',
        'recovery touched an accepted row',
      )
    })

    test('requeues only a dead row: it becomes aborted and the new row pending', async (store) => {
      await store.insertOutbox(testOutboxRow(1))
      const fresh = testOutboxRow(2, { createdAt: T0 + 100 })
      check(
        (await store.requeueDead(testMessageId(1), fresh, T0 + 100)) === undefined,
        'a pending row was requeued',
      )
      check((await store.getOutbox(fresh.id)) === undefined, 'a refused requeue inserted the new row')
      check(
        (await store.requeueDead(testMessageId(9), fresh, T0 + 100)) === undefined,
        'a missing row was requeued',
      )
      for (const state of ['done', 'accepted', 'inflight', 'aborted'] as const) {
        await store.updateOutbox(testMessageId(1), { state, updatedAt: T0 + 50 })
        check(
          (await store.requeueDead(testMessageId(1), fresh, T0 + 100)) === undefined,
          `a ${state} row was requeued`,
        )
      }
      await store.updateOutbox(testMessageId(1), {
        state: 'dead',
        lastError: { code: 'MESH_ERR_TOO_MANY_ATTEMPTS', message: 'x' },
        updatedAt: T0 + 60,
      })
      const requeued = await store.requeueDead(testMessageId(1), fresh, T0 + 100)
      checkEqual(requeued, expectedNew(fresh), 'the requeued row')
      const old = await store.getOutbox(testMessageId(1))
      check(
        old?.state === 'aborted' && old.requeuedAs === fresh.id && old.updatedAt === T0 + 100,
        `the old row is ${canonical(old)}`,
      )
      check(
        (await store.requeueDead(testMessageId(1), testOutboxRow(3), T0 + 200)) === undefined,
        'an aborted row was requeued again',
      )
    })

    test('prunes done, aborted and dead rows last updated before the cut, and nothing else', async (store) => {
      const states = ['pending', 'inflight', 'accepted', 'done', 'dead', 'aborted'] as const
      for (const [i, state] of states.entries()) {
        await store.insertOutbox(testOutboxRow(i + 1))
        await store.updateOutbox(testMessageId(i + 1), { state, updatedAt: T0 + 100 })
        await store.insertOutbox(testOutboxRow(i + 11))
        await store.updateOutbox(testMessageId(i + 11), { state, updatedAt: T0 + 300 })
      }
      check((await store.pruneOutbox(T0 + 200)) === 3, 'pruneOutbox deleted another count')
      const left = ids(await store.listOutbox(states, 100)).sort()
      checkEqual(left, [1, 2, 3, 11, 12, 13, 14, 15, 16].map(testMessageId).sort(), 'the rows left')
      check((await store.pruneOutbox(T0 + 200)) === 0, 'a second prune deleted rows')
    })

    test('pruneOutbox with a limit deletes at most that many, oldest first, and the rest next time', async (store) => {
      for (let n = 1; n <= 5; n++) {
        await store.insertOutbox(testOutboxRow(n))
        await store.updateOutbox(testMessageId(n), { state: 'done', updatedAt: T0 + 100 - n })
      }
      await store.insertOutbox(testOutboxRow(6))
      check((await store.pruneOutbox(T0 + 1_000, 2)) === 2, 'the first chunk')
      checkEqual(
        ids(await store.listOutbox(['done', 'pending'], 10)),
        [1, 2, 3, 6].map(testMessageId),
        'the rows after one chunk (the two updated longest ago went)',
      )
      check((await store.pruneOutbox(T0 + 1_000, 0)) === 0, 'a zero limit deleted rows')
      check((await store.pruneOutbox(T0 + 1_000, 10)) === 3, 'the second chunk')
      checkEqual(ids(await store.listOutbox(['done', 'pending'], 10)), [testMessageId(6)], 'the pending row')
    })

    test('pruneInbox with a limit deletes at most that many, oldest first', async (store) => {
      const rows = await store.insertInboxMany(
        [1, 2, 3, 4].map((n) => testInboxRow(n, { receivedAt: T0 + n })),
      )
      check((await store.pruneInbox(T0 + 100, 3)) === 3, 'the first chunk')
      checkEqual(
        seqs(await store.readInbox({ mesh: MESH, recipients: [testKey(2)] })),
        [rows[3]?.row.seq],
        'the row left after a chunk of 3',
      )
      check((await store.insertInbox(testInboxRow(4))).inserted === false, 'a kept row lost its dedupe')
      check((await store.insertInbox(testInboxRow(1))).inserted, 'a pruned identity was still remembered')
    })

    test('saves one mesh view per mesh, replacing the last, as its own copy', async (store) => {
      check((await store.loadMeshView(MESH)) === undefined, 'a view before any was saved')
      const snapshot = new Uint8Array([1, 2, 3])
      await store.saveMeshView({ mesh: MESH, version: 7, snapshot, savedAt: T0 })
      await store.saveMeshView({ mesh: 'mesh-other', version: 1, snapshot: new Uint8Array([9]), savedAt: T0 })
      snapshot.fill(0xee)
      checkEqual(
        await store.loadMeshView(MESH),
        { mesh: MESH, version: 7, snapshot: new Uint8Array([1, 2, 3]), savedAt: T0 },
        'the saved view',
      )
      const big = new Uint8Array(256 * 1024).map((_, i) => (i * 7) & 0xff)
      await store.saveMeshView({ mesh: MESH, version: 9, snapshot: big, savedAt: T0 + 5 })
      checkEqual(
        await store.loadMeshView(MESH),
        { mesh: MESH, version: 9, snapshot: big, savedAt: T0 + 5 },
        'the view after a second save',
      )
      checkEqual(
        await store.loadMeshView('mesh-other'),
        { mesh: 'mesh-other', version: 1, snapshot: new Uint8Array([9]), savedAt: T0 },
        'the other mesh',
      )
    })

    test('keeps rpc answers by (mesh, from, correlationId); upserts; prunes expired ones', async (store) => {
      const running = { mesh: MESH, from: testKey(3), correlationId: 'c-1', expiresAt: T0 + 100 }
      await store.putRpcAnswer(running)
      checkEqual(await store.getRpcAnswer(MESH, testKey(3), 'c-1'), running, 'a record without an answer')
      const answered = { ...running, answer: new Uint8Array([0xc3]), expiresAt: T0 + 200 }
      await store.putRpcAnswer(answered)
      checkEqual(await store.getRpcAnswer(MESH, testKey(3), 'c-1'), answered, 'the record after its answer')
      for (const [mesh, from, id] of [
        ['mesh-other', 3, 'c-1'],
        [MESH, 4, 'c-1'],
        [MESH, 3, 'c-2'],
      ] as const) {
        check(
          (await store.getRpcAnswer(mesh, testKey(from), id)) === undefined,
          `another part of the key found the record (${mesh}, ${from}, ${id})`,
        )
      }
      for (let n = 1; n <= 4; n++) {
        await store.putRpcAnswer({ mesh: MESH, from: testKey(5), correlationId: `e-${n}`, expiresAt: T0 + n })
      }
      check((await store.pruneRpcAnswers(T0 + 3, 2)) === 2, 'the first chunk')
      check((await store.getRpcAnswer(MESH, testKey(5), 'e-1')) === undefined, 'e-1 outlived its expiry')
      check((await store.getRpcAnswer(MESH, testKey(5), 'e-3')) !== undefined, 'e-3 went beyond the limit')
      check((await store.pruneRpcAnswers(T0 + 3)) === 1, 'expiresAt equal to now is expired')
      check((await store.getRpcAnswer(MESH, testKey(5), 'e-4')) !== undefined, 'e-4 went before its expiry')
      check((await store.getRpcAnswer(MESH, testKey(3), 'c-1')) !== undefined, 'c-1 went before its expiry')
      check((await store.pruneRpcAnswers(T0 + 1_000)) === 2, 'pruning everything')
    })

    test('dedupes inbox rows by (mesh, recipient, from, clientMessageId)', async (store) => {
      const first = await store.insertInbox(testInboxRow(1))
      check(first.inserted && first.row.seq > 0, 'the first inbox insert did not insert')
      checkEqual(first.row, { ...testInboxRow(1), seq: first.row.seq }, 'the inserted inbox row')
      const dup = await store.insertInbox(testInboxRow(1, { via: 'p2p', deliveryId: 'p2p:x' }))
      check(!dup.inserted, 'a duplicate was inserted')
      checkEqual(dup.row, first.row, 'the row a duplicate returned')

      // Each part of the identity makes another row.
      const otherRecipient = await store.insertInbox(testInboxRow(1, { to: 3 }))
      const otherSender = await store.insertInbox(testInboxRow(1, { from: 4 }))
      const otherMesh = await store.insertInbox(testInboxRow(1, { mesh: 'mesh-other' }))
      const otherId = await store.insertInbox(testInboxRow(2))
      const rows = [first, otherRecipient, otherSender, otherMesh, otherId]
      check(
        rows.every((r) => r.inserted),
        'a row differing in one part of its identity was taken for a duplicate',
      )
      const assigned = rows.map((r) => r.row.seq)
      checkEqual(
        assigned,
        [...assigned].sort((a, b) => a - b),
        'seq does not increase with each insert',
      )
      check(new Set(assigned).size === assigned.length, 'seq repeats')
    })

    test('insertInboxMany inserts in order and dedupes within the batch and against stored rows', async (store) => {
      await store.insertInbox(testInboxRow(1))
      const results = await store.insertInboxMany([
        testInboxRow(2),
        testInboxRow(1),
        testInboxRow(3),
        testInboxRow(2, { via: 'p2p' }),
        testInboxRow(2, { to: 5 }),
      ])
      checkEqual(
        results.map((r) => r.inserted),
        [true, false, true, false, true],
        'which rows of the batch were inserted',
      )
      check(results[3]?.row.seq === results[0]?.row.seq, 'a repeat within the batch is not its duplicate')
      check(results[3]?.row.via === 'relay', 'a repeat within the batch replaced the first')
      checkEqual(await store.insertInboxMany([]), [], 'an empty batch')
      const read = await store.readInbox({ mesh: MESH, recipients: [testKey(2), testKey(5)] })
      check(read.length === 4, `readInbox found ${read.length} rows, not 4`)
    })

    test('readInbox scopes by mesh and recipients, with afterSeq, unconsumed and limit', async (store) => {
      const a: number[] = []
      const b: number[] = []
      for (let n = 1; n <= 6; n++) {
        a.push((await store.insertInbox(testInboxRow(n, { to: 2 }))).row.seq)
        b.push((await store.insertInbox(testInboxRow(n, { to: 3 }))).row.seq)
      }
      await store.insertInbox(testInboxRow(1, { to: 2, mesh: 'mesh-other' }))

      checkEqual(seqs(await store.readInbox({ mesh: MESH, recipients: [testKey(2)] })), a, 'only key 2')
      checkEqual(seqs(await store.readInbox({ mesh: MESH, recipients: [testKey(9)] })), [], 'an unknown key')
      checkEqual(seqs(await store.readInbox({ mesh: MESH, recipients: [] })), [], 'no recipients')
      checkEqual(
        seqs(await store.readInbox({ mesh: MESH, recipients: [testKey(3), testKey(2)] })),
        [...a, ...b].sort((x, y) => x - y),
        'both keys, in seq order',
      )
      checkEqual(
        seqs(await store.readInbox({ mesh: MESH, recipients: [testKey(2), testKey(3)], limit: 5 })),
        [...a, ...b].sort((x, y) => x - y).slice(0, 5),
        'both keys, limit 5',
      )
      checkEqual(
        seqs(await store.readInbox({ mesh: MESH, recipients: [testKey(2)], afterSeq: a[3] })),
        a.slice(4),
        'afterSeq',
      )
      check(
        (await store.consumeInbox(MESH, [a[0], a[2], b[0]] as number[], T0 + 1_000)) === 3,
        'consumeInbox changed another count',
      )
      checkEqual(
        seqs(await store.readInbox({ mesh: MESH, recipients: [testKey(2)], unconsumed: true, limit: 2 })),
        [a[1], a[3]],
        'unconsumed with a limit',
      )
      const consumed = (await store.readInbox({ mesh: MESH, recipients: [testKey(2)] }))[0]
      check(consumed?.consumedAt === T0 + 1_000, 'consumedAt not stored')
      const other = await store.readInbox({ mesh: 'mesh-other', recipients: [testKey(2)] })
      check(other.length === 1 && other[0]?.mesh === 'mesh-other', 'mesh scoping')
    })

    test('readInbox returns at most 100 rows by default', async (store) => {
      await store.insertInboxMany(Array.from({ length: 120 }, (_, i) => testInboxRow(i + 1)))
      const rows = await store.readInbox({ mesh: MESH, recipients: [testKey(2)] })
      check(rows.length === 100, `the default limit gave ${rows.length} rows`)
      check(rows[99]?.clientMessageId === testMessageId(100), 'the default page is not the oldest rows')
    })

    test('consumeInbox counts only rows of that mesh not consumed yet', async (store) => {
      const one = (await store.insertInbox(testInboxRow(1))).row.seq
      const other = (await store.insertInbox(testInboxRow(1, { mesh: 'mesh-other' }))).row.seq
      check((await store.consumeInbox(MESH, [one, other, 999_999], T0 + 5)) === 1, 'first consume')
      check((await store.consumeInbox(MESH, [one], T0 + 6)) === 0, 'a second consume changed the row')
      const row = (await store.readInbox({ mesh: MESH, recipients: [testKey(2)] }))[0]
      check(row?.consumedAt === T0 + 5, 'a second consume moved consumedAt')
      const dup = await store.insertInbox(testInboxRow(1))
      check(!dup.inserted && dup.row.consumedAt === T0 + 5, 'a duplicate of a consumed row')
    })

    test('pruneInbox forgets rows received before the cut; seq keeps increasing after', async (store) => {
      const old = await store.insertInbox(testInboxRow(1, { receivedAt: T0 }))
      await store.insertInbox(testInboxRow(2, { receivedAt: T0 + 10 }))
      const kept = await store.insertInbox(testInboxRow(3, { receivedAt: T0 + 500 }))
      check((await store.pruneInbox(T0 + 100)) === 2, 'pruneInbox deleted another count')
      checkEqual(
        seqs(await store.readInbox({ mesh: MESH, recipients: [testKey(2)] })),
        [kept.row.seq],
        'rows after pruning',
      )
      const again = await store.insertInbox(testInboxRow(1, { receivedAt: T0 + 600 }))
      check(again.inserted && again.row.seq > kept.row.seq, 'a pruned identity was not inserted anew')
      // Pruning everything must not let seq start over: readers hold cursors.
      await store.pruneInbox(T0 + 10_000)
      const after = await store.insertInbox(testInboxRow(9, { receivedAt: T0 + 20_000 }))
      check(after.row.seq > again.row.seq && after.row.seq > old.row.seq, 'seq went back after a prune')
    })

    test('rejects every call after close() with MESH_ERR_STORE_CLOSED; close is idempotent', async (store) => {
      await store.insertOutbox(testOutboxRow(1))
      await store.close()
      await store.close()
      const calls: [string, () => Promise<unknown>][] = [
        ['insertOutbox', () => store.insertOutbox(testOutboxRow(2))],
        ['insertOutboxMany', () => store.insertOutboxMany([testOutboxRow(2)])],
        ['getOutbox', () => store.getOutbox(testMessageId(1))],
        ['updateOutbox', () => store.updateOutbox(testMessageId(1), { updatedAt: T0 })],
        [
          'updateOutboxMany',
          () => store.updateOutboxMany([{ id: testMessageId(1), patch: { updatedAt: T0 } }]),
        ],
        ['dueOutbox', () => store.dueOutbox(T0, 1)],
        ['claimDue', () => store.claimDue(T0, 1)],
        ['nextDue', () => store.nextDue()],
        ['listOutbox', () => store.listOutbox(['pending'], 1)],
        ['recoverInflight', () => store.recoverInflight(T0)],
        ['requeueDead', () => store.requeueDead(testMessageId(1), testOutboxRow(3), T0)],
        ['pruneOutbox', () => store.pruneOutbox(T0)],
        ['insertInbox', () => store.insertInbox(testInboxRow(1))],
        ['insertInboxMany', () => store.insertInboxMany([testInboxRow(1)])],
        ['readInbox', () => store.readInbox({ mesh: MESH, recipients: [testKey(2)] })],
        ['consumeInbox', () => store.consumeInbox(MESH, [1], T0)],
        ['pruneInbox', () => store.pruneInbox(T0)],
        [
          'saveMeshView',
          () => store.saveMeshView({ mesh: MESH, version: 1, snapshot: new Uint8Array(), savedAt: T0 }),
        ],
        ['loadMeshView', () => store.loadMeshView(MESH)],
        [
          'putRpcAnswer',
          () => store.putRpcAnswer({ mesh: MESH, from: testKey(1), correlationId: 'c', expiresAt: T0 }),
        ],
        ['getRpcAnswer', () => store.getRpcAnswer(MESH, testKey(1), 'c')],
        ['pruneRpcAnswers', () => store.pruneRpcAnswers(T0)],
      ]
      for (const [method, call] of calls) {
        const err = await call().then(
          () => undefined,
          (e: unknown) => e,
        )
        check(isMeshError(err, 'MESH_ERR_STORE_CLOSED'), `${method} after close: ${String(err)}`)
      }
    })
  })
}
