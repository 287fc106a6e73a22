import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { pathToFileURL } from 'node:url'
import Database from 'better-sqlite3'
import { afterAll, describe, expect, it } from 'vitest'
import { testMessageId } from '../store/compliance.js'
import { sqliteStore } from './sqlite-store.js'

const root = mkdtempSync(join(tmpdir(), 'agentmesh-sqlite-crash-'))
afterAll(() => rmSync(root, { recursive: true, force: true }))
const child = join(import.meta.dirname, '../../test/support/store-child.ts')

/** mulberry32: a small seeded generator, so a failing run can be replayed. */
function seeded(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/**
 * Runs `store-child.ts insert` from `first` and `kill -9`s it once it has reported `after` commits (it
 * keeps writing while the parent reads, so the kill lands anywhere in its loop). Resolves with every
 * number it reported committed.
 */
async function insertUntilKilled(path: string, first: number, after: number): Promise<number[]> {
  const proc = spawn(process.execPath, ['--import', 'tsx', child, 'insert', path, String(first)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  const committed: number[] = []
  const exited = once(proc, 'exit')
  for await (const line of createInterface({ input: proc.stdout })) {
    const [word, ...numbers] = line.split(' ')
    if (word !== 'ok') throw new Error(`the child said: ${line}`)
    committed.push(...numbers.map(Number))
    if (committed.length >= after && proc.signalCode === null) proc.kill('SIGKILL')
  }
  const [code, signal] = (await exited) as [number | null, string | null]
  expect({ code, signal }).toEqual({ code: null, signal: 'SIGKILL' })
  return committed
}

describe('sqlite store: kill -9 while writing', () => {
  it('leaves the file consistent and keeps every write it acknowledged, at seeded kill points', async () => {
    const seed = Number(process.env['AGENTMESH_CRASH_SEED'] ?? 19)
    const random = seeded(seed)
    const path = join(root, 'crash', 'runtime.db')
    const acknowledged: number[] = []
    for (let round = 0; round < 3; round++) {
      const after = 20 + Math.floor(random() * 600)
      acknowledged.push(...(await insertUntilKilled(path, round * 1_000_000 + 1, after)))

      const db = new Database(path)
      expect(db.pragma('integrity_check', { simple: true }), `seed ${seed}, round ${round}`).toBe('ok')
      db.close()
      // Opening takes over the dead child's lock; every acknowledged row is there, whole.
      const store = sqliteStore({ path })
      const missing: number[] = []
      for (const n of acknowledged) {
        const row = await store.getOutbox(testMessageId(n))
        if (row === undefined || row.envelope.length !== 64 || row.envelope[0] !== (n & 0xff)) missing.push(n)
      }
      expect(missing, `seed ${seed}, round ${round}: acknowledged rows lost`).toEqual([])
      await store.close()
    }
    expect(acknowledged.length).toBeGreaterThan(60)
  }, 60_000)
})

/** Rows per round of the coalesced child: a batch long enough (tens of ms) for a kill to land inside it. */
const BATCH = 2_048

/**
 * A child writing through the coalescing store: per round, BATCH new rows in one insert, then
 * `updating <round>`, then BATCH `updateOutbox` calls in one turn (one coalesced batch); each caller
 * prints `ok <n>` once its own promise resolved.
 */
const COALESCED_CHILD = `
import { sqliteStore } from ${JSON.stringify(pathToFileURL(join(import.meta.dirname, 'sqlite-store.ts')).href)}
import { coalescingStore } from ${JSON.stringify(pathToFileURL(join(import.meta.dirname, '../store/coalescing.ts')).href)}
import { testMessageId, testOutboxRow } from ${JSON.stringify(pathToFileURL(join(import.meta.dirname, '../store/compliance.ts')).href)}
const [path, first] = process.argv.slice(2)
const store = coalescingStore(sqliteStore({ path }))
for (let round = Number(first); ; round++) {
  const ns = Array.from({ length: ${BATCH} }, (_, k) => round * ${BATCH} + k)
  await store.insertOutboxMany(ns.map((n) => testOutboxRow(n)))
  process.stdout.write('updating ' + round + '\\n')
  await Promise.all(
    ns.map((n) =>
      store
        .updateOutbox(testMessageId(n), { state: 'accepted', attempts: 1, updatedAt: round }, ['pending'])
        .then((row) => process.stdout.write((row?.state === 'accepted' ? 'ok ' : 'bad ') + n + '\\n')),
    ),
  )
}
`

describe('sqlite store: kill -9 in the middle of coalesced batches', () => {
  it('keeps every update a caller was told of, and each batch whole or not at all', async () => {
    const script = join(root, 'coalesced-child.mts')
    writeFileSync(script, COALESCED_CHILD)
    const path = join(root, 'coalesced', 'runtime.db')
    const seed = Number(process.env['AGENTMESH_CRASH_SEED'] ?? 23)
    const random = seeded(seed)
    const acknowledged: number[] = []
    for (let run = 0; run < 3; run++) {
      // Killed just after it says it is updating a round: during that round's batch, or just before it.
      const killAt = 2 + Math.floor(random() * 3)
      const proc = spawn(process.execPath, ['--import', 'tsx', script, path, String(run * 1_000)], {
        stdio: ['ignore', 'pipe', 'inherit'],
      })
      const exited = once(proc, 'exit')
      let updating = 0
      for await (const line of createInterface({ input: proc.stdout })) {
        const [word, n] = line.split(' ')
        if (word === 'updating') {
          if (++updating >= killAt && proc.signalCode === null) proc.kill('SIGKILL')
        } else if (word === 'ok') acknowledged.push(Number(n))
        else throw new Error(`the child said: ${line}`)
      }
      const [code, signal] = (await exited) as [number | null, string | null]
      expect({ code, signal }).toEqual({ code: null, signal: 'SIGKILL' })

      const db = new Database(path)
      expect(db.pragma('integrity_check', { simple: true }), `seed ${seed}, run ${run}`).toBe('ok')
      // A batch is one transaction: the rows of a round are all accepted or all still pending.
      const split = db
        .prepare(
          `SELECT CAST((created_at - ?) / ${BATCH} AS INTEGER) AS round, count(DISTINCT state) AS states,
             count(*) AS n FROM outbox GROUP BY round HAVING states > 1 OR n != ${BATCH}`,
        )
        .all(Date.UTC(2026, 0, 1))
      expect(split, `seed ${seed}, run ${run}: a round with part of its batch stored`).toEqual([])
      db.close()
      const store = sqliteStore({ path })
      const lost: number[] = []
      for (const n of acknowledged) {
        const row = await store.getOutbox(testMessageId(n))
        if (row?.state !== 'accepted' || row.attempts !== 1) lost.push(n)
      }
      expect(lost, `seed ${seed}, run ${run}: acknowledged updates lost`).toEqual([])
      await store.close()
    }
    expect(acknowledged.length).toBeGreaterThanOrEqual(3 * BATCH)
  }, 60_000)
})
