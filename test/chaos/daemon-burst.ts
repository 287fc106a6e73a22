/**
 * Crash safety of the daemon's store under load: a burst of DMs over bob's daemon IPC, and a `kill -9`
 * of the daemon at seeded points of it (when so many sends were answered 202). While the daemon is
 * down, every runtime store file of bob's home is opened read-only: `PRAGMA integrity_check` must say
 * ok, and every send answered 202 so far must be a row of an outbox. Then the daemon starts again and
 * the burst goes on (the sender retries what got no answer, with the same id).
 */
import { readdir } from 'node:fs/promises'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import { prng } from './schedule.js'
import { instantiate, type Template } from './template.js'
import { sendAll } from './traffic.js'
import { ChaosWorld } from './world.js'

export interface BurstResult {
  messages: number
  kills: number
  acked: number
  /** Integrity checks run (one per store file per kill). */
  checks: number
  problems: string[]
  durationMs: number
}

/** `kills` points in (0, messages), sorted, from `seed`. */
export function killPoints(seed: number, messages: number, kills: number): number[] {
  const rand = prng(seed)
  const points = new Set<number>()
  while (points.size < Math.min(kills, messages - 1)) points.add(1 + Math.floor(rand() * (messages - 1)))
  return [...points].sort((a, b) => a - b)
}

/** Checks every store file in `dir`: integrity, and the outbox ids it holds. */
function inspectStores(dir: string, files: string[]): { problems: string[]; ids: Set<string> } {
  const problems: string[] = []
  const ids = new Set<string>()
  for (const f of files) {
    const db = new Database(join(dir, f), { readonly: true, fileMustExist: true })
    try {
      const rows = db.pragma('integrity_check') as { integrity_check: string }[]
      const verdict = rows.map((r) => r.integrity_check).join('; ')
      if (verdict !== 'ok') problems.push(`${f}: integrity_check says ${verdict}`)
      const hasOutbox = db
        .prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'outbox'`)
        .get()
      if (hasOutbox !== undefined) {
        for (const r of db.prepare('SELECT id FROM outbox').all() as { id: string }[]) ids.add(r.id)
      }
    } finally {
      db.close()
    }
  }
  return { problems, ids }
}

/** Runs the burst with its kills; product failures land in `problems`. */
export async function burstWithKills(o: {
  template: Template
  seed: number
  messages: number
  kills: number
  log?: (text: string) => void
}): Promise<BurstResult> {
  const t0 = Date.now()
  const log = o.log ?? (() => {})
  const world = await ChaosWorld.create({ store: o.template.store, ...(await instantiate(o.template)), log })
  const problems: string[] = []
  let checks = 0
  try {
    await world.startCoordinator()
    await world.startDaemon()
    const points = killPoints(o.seed, o.messages, o.kills)
    log(`  kill points (sends answered): ${points.join(', ')}`)
    const acked = new Set<string>()
    let nextPoint = 0
    let killing: Promise<void> | undefined
    const kill = async (at: number): Promise<void> => {
      await world.killDaemon()
      // Down: the store files as the kill left them (with their -wal), read-only.
      const dir = world.storeDir()
      const files = (await readdir(dir)).filter((f) => f.endsWith('.db'))
      const snapshot = new Set(acked)
      const seen = inspectStores(dir, files)
      checks += files.length
      problems.push(...seen.problems.map((p) => `after the kill at ${at}: ${p}`))
      const missing = [...snapshot].filter((id) => !seen.ids.has(id))
      if (missing.length > 0)
        problems.push(
          `after the kill at ${at}: ${missing.length} sends answered 202 are in no outbox (e.g. ${missing.slice(0, 3).join(', ')})`,
        )
      log(
        `  kill at ${at}: ${files.length} store files ok=${seen.problems.length === 0}, ${snapshot.size} acked all stored=${missing.length === 0}`,
      )
      await world.startDaemon()
    }
    const result = await sendAll({
      client: () => world.session!,
      to: world.alicePk,
      count: o.messages,
      tag: `burst-${o.seed}`,
      signal: AbortSignal.timeout(600_000),
      onAck: (id) => {
        acked.add(id)
        if (killing === undefined && nextPoint < points.length && acked.size >= points[nextPoint]!) {
          const at = acked.size
          nextPoint++
          killing = kill(at).finally(() => (killing = undefined))
        }
      },
    })
    while (killing !== undefined) await killing
    for (const [id, why] of result.refused) problems.push(`send ${id} refused: ${why}`)
    if (nextPoint < points.length) problems.push(`only ${nextPoint} of ${points.length} kills happened`)

    // The end: every answered send is still a row (the daemon down once more, for a last look).
    await world.killDaemon()
    const dir = world.storeDir()
    const files = (await readdir(dir)).filter((f) => f.endsWith('.db'))
    const seen = inspectStores(dir, files)
    checks += files.length
    problems.push(...seen.problems.map((p) => `at the end: ${p}`))
    const missing = [...result.acked.keys()].filter((id) => !seen.ids.has(id))
    if (missing.length > 0) problems.push(`at the end: ${missing.length} sends answered 202 are in no outbox`)
    return {
      messages: o.messages,
      kills: nextPoint,
      acked: result.acked.size,
      checks,
      problems,
      durationMs: Date.now() - t0,
    }
  } finally {
    await world.close()
  }
}
