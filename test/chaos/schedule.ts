/**
 * Fault schedules drawn from a seed: the same seed gives the same faults at the same offsets, so a
 * failing run can be replayed (`npm run chaos -- --seed N`). A small PRNG (mulberry32) keeps it free
 * of dependencies and stable across Node versions.
 */

/** A process the harness can `kill -9` and start again. */
export type KillTarget = 'coordinator' | 'daemon' | 'listen'

/** Whose proxy to the coordinator a network fault hits. */
export type ProxyTarget = 'alice' | 'bob'

/** One fault, `atMs` after the traffic started. */
export type Fault =
  | { kind: 'kill'; target: KillTarget; atMs: number; downMs: number }
  | { kind: 'drop'; proxy: ProxyTarget; atMs: number }
  | { kind: 'stall'; proxy: ProxyTarget; atMs: number; ms: number }
  | { kind: 'cut'; proxy: ProxyTarget; atMs: number; mode: 'rst' | 'half' }
  | { kind: 'pg-restart'; atMs: number }

/** mulberry32: a 32-bit seeded PRNG, uniform on [0, 1). */
export function prng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

export interface ScheduleOptions {
  seed: number
  /** The window the faults fall in: about how long the traffic lasts. */
  windowMs: number
  /** Postgres restarts are only possible on the Postgres leg. */
  postgres: boolean
  /** How many faults at least and at most (default 3 to 6). */
  minFaults?: number
  maxFaults?: number
}

/** Draws a schedule from `seed`: faults at sorted random offsets within the first 80% of the window. */
export function drawSchedule(o: ScheduleOptions): Fault[] {
  const rand = prng(o.seed)
  const int = (lo: number, hi: number): number => lo + Math.floor(rand() * (hi - lo + 1))
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!
  const min = o.minFaults ?? 3
  const max = o.maxFaults ?? 6
  const n = int(min, max)
  const kinds = [
    'kill',
    'kill',
    'kill',
    'drop',
    'stall',
    'cut',
    ...(o.postgres ? (['pg-restart'] as const) : []),
  ] satisfies Fault['kind'][]
  const offsets = Array.from({ length: n }, () => Math.round((0.05 + rand() * 0.75) * o.windowMs)).sort(
    (a, b) => a - b,
  )
  return offsets.map((atMs): Fault => {
    const kind = pick(kinds)
    switch (kind) {
      case 'kill':
        return {
          kind,
          target: pick(['coordinator', 'daemon', 'listen'] as const),
          atMs,
          downMs: int(300, 2500),
        }
      case 'drop':
        return { kind, proxy: pick(['alice', 'bob'] as const), atMs }
      case 'stall':
        return { kind, proxy: pick(['alice', 'bob'] as const), atMs, ms: int(500, 4000) }
      case 'cut':
        return { kind, proxy: pick(['alice', 'bob'] as const), atMs, mode: pick(['rst', 'half'] as const) }
      case 'pg-restart':
        return { kind, atMs }
    }
  })
}

/**
 * The issue's scenario as a schedule: `kill -9` of the coordinator twice, of bob's daemon once and of
 * alice's listen once, each started again `downMs` later.
 */
export function issueSchedule(windowMs: number, downMs = 2500): Fault[] {
  const at = (f: number): number => Math.round(f * windowMs)
  return [
    { kind: 'kill', target: 'coordinator', atMs: at(0.1), downMs },
    { kind: 'kill', target: 'daemon', atMs: at(0.3), downMs },
    { kind: 'kill', target: 'coordinator', atMs: at(0.5), downMs },
    { kind: 'kill', target: 'listen', atMs: at(0.65), downMs },
  ]
}

/** One fault in a few words, for the report. */
export function describeFault(f: Fault): string {
  switch (f.kind) {
    case 'kill':
      return `@${f.atMs}ms kill -9 ${f.target} (down ${f.downMs}ms)`
    case 'drop':
      return `@${f.atMs}ms drop ${f.proxy}'s connections`
    case 'stall':
      return `@${f.atMs}ms stall ${f.proxy}'s link ${f.ms}ms`
    case 'cut':
      return `@${f.atMs}ms cut ${f.proxy}'s link (${f.mode})`
    case 'pg-restart':
      return `@${f.atMs}ms restart Postgres (immediate)`
  }
}
