/** What the `relay` scenario's figures share: the scenario's name, and how counts and timings are summed. */
import type { StatementStats } from '../processes/timed-store.js'

export const SCENARIO = 'relay'

/** Sums per-key counts (send_ack states, error codes) over rounds or processes. */
export function mergeCounts(all: Record<string, number>[]): Record<string, number> {
  const out: Record<string, number> = {}
  for (const counts of all) for (const [k, n] of Object.entries(counts)) out[k] = (out[k] ?? 0) + n
  return out
}

export function round2(n: number): number {
  return Math.round(n * 100) / 100
}

/** A store statement's share of the work: calls per DM, and wall ms per DM (time queued for a connection included). */
export interface StatementShare {
  statement: string
  perDm: number
  msPerDm: number
}

/** The `top` store statements that took the most wall time, per DM sent. */
export function topStatements(all: StatementStats[], dms: number, top = 3): StatementShare[] {
  const merged = new Map<string, { calls: number; ms: number }>()
  for (const s of all) {
    const e = merged.get(s.statement) ?? { calls: 0, ms: 0 }
    e.calls += s.calls
    e.ms += s.totalMs
    merged.set(s.statement, e)
  }
  return [...merged.entries()]
    .sort((a, b) => b[1].ms - a[1].ms)
    .slice(0, top)
    .map(([statement, e]) => ({
      statement: statement.slice(0, 48),
      perDm: Math.round((e.calls / dms) * 1000) / 1000,
      msPerDm: Math.round((e.ms / dms) * 1000) / 1000,
    }))
}

/** CPU seconds per process as CPU ms per DM (2 cores give 2,000 CPU ms a second in all). */
export function perDm(seconds: Record<string, number>, dms: number): Record<string, number> {
  return Object.fromEntries(Object.entries(seconds).map(([k, s]) => [k, Math.round((s * 1e6) / dms) / 1000]))
}
