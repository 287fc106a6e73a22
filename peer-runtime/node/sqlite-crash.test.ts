import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
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
