/**
 * The `store` scenario: what grouping the runtime store's small writes per turn buys (issue 21), on the
 * real sqlite driver (`sqliteStore`: WAL, the driver's own pragmas) in a temp directory, at both
 * durability tiers (`synchronous` NORMAL, the default, and FULL).
 *
 * For outbox state updates (`updateOutbox`, a compare-and-set moving a pending row's next attempt, as a
 * retry does, on a backlog of 4,096 rows with 1 KiB envelopes) and inbox inserts (`insertInbox`, a 1 KiB envelope each), three ways side by side:
 * - one row per call, each awaited before the next (one transaction and one commit per row): the
 *   baseline every other figure is printed beside;
 * - the batch method (`updateOutboxMany`, `insertInboxMany`), 256 rows per call;
 * - `coalescingStore`: 256 single calls made in one turn, grouped into one batch by the wrapper (what
 *   the outbox and the inbox get once `Peer` wraps its store).
 *
 * Rows per second; rounds of the three alternate and each figure is the median of its rounds. Before
 * timing, the scenario checks that the three give the same rows.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { sqliteStore } from '../../peer-runtime/node/sqlite-store.js'
import { coalescingStore } from '../../peer-runtime/store/coalescing.js'
import { testInboxRow, testMessageId, testOutboxRow } from '../../peer-runtime/store/compliance.js'
import type { OutboxChange, RuntimeStore } from '../../peer-runtime/store/types.js'
import { median, report } from '../measure.js'

const SCENARIO = 'store'
const BATCH = 256
/** Outbox rows the updates cycle through (a backlog the size of a few dispatch windows). */
const ROWS = 4_096
const T0 = Date.UTC(2026, 0, 1)

type Way = 'one row per call' | 'batch of 256' | 'coalesced, 256 calls a turn'
const WAYS: readonly Way[] = ['one row per call', 'batch of 256', 'coalesced, 256 calls a turn']

export async function storeScenario(opts: { quick: boolean }): Promise<void> {
  const rounds = opts.quick ? 3 : 5
  const ms = opts.quick ? 100 : 400
  const root = await mkdtemp(join(tmpdir(), 'agentmesh-bench-store-'))
  try {
    for (const synchronous of ['normal', 'full'] as const) {
      const store = sqliteStore({ path: join(root, synchronous, 'runtime.db'), synchronous })
      const coalesced = coalescingStore(store)
      try {
        await checkSameRows(store, coalesced)
        // 1 KiB envelopes, as a typical DM: an update reads its row back, envelope included.
        const envelope = new Uint8Array(1024).fill(7)
        await store.insertOutboxMany(
          Array.from({ length: ROWS }, (_, i) => testOutboxRow(i + 1, { envelope })),
        )
        const updates = new Updates()
        const inserts = new Inserts()
        const outbox = await alternate(rounds, ms, {
          'one row per call': () => updates.one(store),
          'batch of 256': () => updates.many(store),
          'coalesced, 256 calls a turn': () => updates.coalesced(coalesced),
        })
        printWays(`updateOutbox, synchronous ${synchronous}`, outbox)
        const inbox = await alternate(rounds, ms, {
          'one row per call': () => inserts.one(store),
          'batch of 256': () => inserts.many(store),
          'coalesced, 256 calls a turn': () => inserts.coalesced(coalesced),
        })
        printWays(`insertInbox, synchronous ${synchronous}`, inbox)
      } finally {
        await store.close()
      }
    }
  } finally {
    await rm(root, { recursive: true, force: true })
  }
}

function printWays(what: string, rates: Record<Way, number>): void {
  const baseline = { name: `${what}, one row per call`, value: rates['one row per call'] }
  report({ scenario: SCENARIO, name: baseline.name, unit: 'rows/s', value: baseline.value })
  for (const way of WAYS.slice(1)) {
    report({ scenario: SCENARIO, name: `${what}, ${way}`, unit: 'rows/s', value: rates[way], baseline })
  }
}

/** Runs each way for `ms` per round, the ways' order rotating each round; the median rows/s of each. */
async function alternate(
  rounds: number,
  ms: number,
  ways: Record<Way, () => Promise<number>>,
): Promise<Record<Way, number>> {
  const seen = Object.fromEntries(WAYS.map((w) => [w, [] as number[]])) as Record<Way, number[]>
  for (let round = 0; round < rounds; round++) {
    for (let k = 0; k < WAYS.length; k++) {
      const way = WAYS[(round + k) % WAYS.length] as Way
      seen[way].push(await rowsPerSecond(ways[way], ms))
    }
  }
  return Object.fromEntries(WAYS.map((w) => [w, median(seen[w])])) as Record<Way, number>
}

/** Calls `step` (which resolves with how many rows it wrote) for about `ms`, after a short warm-up. */
async function rowsPerSecond(step: () => Promise<number>, ms: number): Promise<number> {
  const warmEnd = performance.now() + Math.min(50, ms / 4)
  while (performance.now() < warmEnd) await step()
  let rows = 0
  const start = performance.now()
  let now = start
  while (now - start < ms) {
    rows += await step()
    now = performance.now()
  }
  return (rows * 1000) / (now - start)
}

/** A retry's update: the row stays pending, its attempt count and next attempt move on. */
class Updates {
  #n = 0

  #change(): OutboxChange {
    const n = ++this.#n
    const at = T0 + n
    return {
      id: testMessageId((n % ROWS) + 1),
      patch: { attempts: n & 0xff, nextAttemptAt: at, updatedAt: at },
      expect: ['pending'],
    }
  }

  async one(store: RuntimeStore): Promise<number> {
    const c = this.#change()
    await store.updateOutbox(c.id, c.patch, c.expect)
    return 1
  }

  async many(store: RuntimeStore): Promise<number> {
    await store.updateOutboxMany(Array.from({ length: BATCH }, () => this.#change()))
    return BATCH
  }

  async coalesced(store: RuntimeStore): Promise<number> {
    const calls: Promise<unknown>[] = []
    for (let i = 0; i < BATCH; i++) {
      const c = this.#change()
      calls.push(store.updateOutbox(c.id, c.patch, c.expect))
    }
    await Promise.all(calls)
    return BATCH
  }
}

/** New inbox rows, 1 KiB envelopes, each a fresh identity. */
class Inserts {
  #n = 0
  readonly #envelope = new Uint8Array(1024).fill(7)

  #row(): ReturnType<typeof testInboxRow> {
    return testInboxRow(++this.#n, { envelope: this.#envelope, receivedAt: T0 + this.#n })
  }

  async one(store: RuntimeStore): Promise<number> {
    await store.insertInbox(this.#row())
    return 1
  }

  async many(store: RuntimeStore): Promise<number> {
    await store.insertInboxMany(Array.from({ length: BATCH }, () => this.#row()))
    return BATCH
  }

  async coalesced(store: RuntimeStore): Promise<number> {
    const calls: Promise<unknown>[] = []
    for (let i = 0; i < BATCH; i++) calls.push(store.insertInbox(this.#row()))
    await Promise.all(calls)
    return BATCH
  }
}

/**
 * The three ways give the same rows: a few updates (one a compare-and-set that fails) one at a time,
 * as a batch and coalesced, each on its own rows, read back.
 */
async function checkSameRows(store: RuntimeStore, coalesced: RuntimeStore): Promise<void> {
  const base = 10_000_000
  const ways: ((ids: string[]) => Promise<unknown[]>)[] = [
    async (ids) => {
      const out = []
      for (const id of ids)
        out.push(await store.updateOutbox(id, { state: 'inflight', updatedAt: T0 }, ['pending']))
      return out
    },
    (ids) =>
      store.updateOutboxMany(
        ids.map((id) => ({ id, patch: { state: 'inflight', updatedAt: T0 }, expect: ['pending'] })),
      ),
    (ids) =>
      Promise.all(
        ids.map((id) => coalesced.updateOutbox(id, { state: 'inflight', updatedAt: T0 }, ['pending'])),
      ),
  ]
  const seen: string[] = []
  for (const [w, way] of ways.entries()) {
    const ids = [1, 2, 3].map((k) => testMessageId(base + w * 10 + k))
    await store.insertOutboxMany(
      ids.slice(0, 2).map((id, k) => ({ ...testOutboxRow(base + w * 10 + k + 1), id })),
    )
    // The third id is missing: its compare-and-set resolves undefined in every way.
    const results = await way(ids)
    seen.push(JSON.stringify(results.map((r) => (r as { state?: string } | undefined)?.state ?? null)))
  }
  if (new Set(seen).size !== 1 || seen[0] !== JSON.stringify(['inflight', 'inflight', null])) {
    throw new Error(`the three ways disagree: ${seen.join(' / ')}`)
  }
}
