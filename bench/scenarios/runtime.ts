/**
 * The `runtime` scenario (issue 21): the path users take. Real `Peer`s with durable sqlite stores, the
 * coordinator's default limits, relay only, receivers reading with `peer.messages()`; senders and
 * receivers in separate processes (2 + 2), the coordinator in its own (PGlite), every process bundled and
 * under plain node (bench/processes/child.ts). Beside it, in the same run and on the same coordinator and
 * members: the `relay` scenario's lightweight clients (pre-sealed frames) in the same shape, and a floor
 * (`runtime-floor.ts`: seal, open, batched sqlite writes, codec and the same frames, one process).
 *
 * Figures: CPU per DM per side against the floor, memory per idle peer, latency and delivery at the
 * offered rate beside the lightweight clients, the sender's outbox wait, rows refused with
 * `MESH_ERR_RATE_LIMITED`, the highest rate with p99 under 250 ms, and the same shape with P2P on.
 * Method in bench/README.md.
 */
import { initCrypto, type Identity } from '../../protocol/index.js'
import { median, report, type Figure } from '../measure.js'
import { Children, memoryOf } from '../processes/child.js'
import { cpuMeter } from '../processes/cpu.js'
import { seedFor, startMesh, type BenchMesh } from '../processes/mesh.js'
import type { FloorEchoReady } from '../processes/runtime-floor-echo.js'
import { lightweightRun, round2, RuntimeFleet, type LoadStats, type Shape } from './runtime-load.js'

const SCENARIO = 'runtime'
const P99_GOAL_MS = 250
const MIB = 1024 * 1024
/** Each trial of the rate search offers this many seconds of DMs. */
const TRIAL_SECONDS = 10

export async function runtimeScenario(opts: { quick: boolean }): Promise<void> {
  await initCrypto()
  const quick = opts.quick
  // 100 peers: 50 senders × 2,000 DMs (100 × 1,000 in all) to 50 receivers, 40/s per sender at 2,000/s.
  const shape: Shape = quick
    ? { peers: 12, perSender: 100, offered: 300 }
    : { peers: 100, perSender: 2000, offered: 2000 }
  // AGENTMESH_BENCH_RUNTIME=search,p2p (either or none) keeps only those of the optional parts (e.g. to
  // profile the main run alone); the floor, memory, lightweight and main runs always run.
  const only = process.env['AGENTMESH_BENCH_RUNTIME']?.split(',')
  const wanted = (part: string): boolean => only === undefined || only.includes(part)
  const children = new Children()
  const stop = (): void => void children.stopAll().finally(() => process.exit(130))
  process.once('SIGINT', stop)
  const label = `${shape.peers} peers, ${(shape.peers / 2) * shape.perSender} DMs`
  try {
    const a = await freshMesh(children, shape.peers)
    let ours: LoadStats
    try {
      const floor = await floorCpu(children, a.m.mesh, quick)
      await idleMemory(children, a.m, a.members)
      const light = await lightweightRun(children, a.m, a.members, shape)
      const fleet = await RuntimeFleet.start(children, a.m, a.members, { p2p: false, label: 'relay-only' })
      ours = await fleet.run(shape)
      await fleet.stop()
      reportCpu(ours, light, floor)
      reportLoad(`runtime relay-only, ${label}, ${shape.offered}/s offered`, ours, {
        name: 'lightweight clients, same shape',
        stats: light,
      })
      reportWaits(ours)
      report({
        scenario: SCENARIO,
        name: 'rows refused with MESH_ERR_RATE_LIMITED',
        unit: 'rows',
        value: ours.rateLimited,
        baseline: { name: 'lightweight clients, send_acks refused', value: light.rateLimited },
        goal: '0 at the default limits',
        met: ours.rateLimited === 0,
        retriedRows: ours.retried,
        sendErrors: ours.sendErrors,
      })
    } finally {
      await a.m.dispose()
    }

    // Each later part on a fresh coordinator: a run the machine could not carry can leave the previous
    // one with a backlog (or, seen at 2,000/s, no longer accepting connections).
    if (quick || !wanted('search')) await rateSearch(undefined, shape, ours)
    else {
      const b = await freshMesh(children, shape.peers)
      try {
        const fleet = await RuntimeFleet.start(children, b.m, b.members, { p2p: false, label: 'search' })
        await rateSearch(fleet, shape, ours)
        await fleet.stop()
      } finally {
        await b.m.dispose()
      }
    }

    if (quick || !wanted('p2p')) {
      process.stderr.write(`  P2P on: skipped (${quick ? '--quick' : 'AGENTMESH_BENCH_RUNTIME'})\n`)
    } else {
      const c = await freshMesh(children, shape.peers)
      try {
        const p2p = await RuntimeFleet.start(children, c.m, c.members, { p2p: true, label: 'p2p' })
        const withP2P = await p2p.run(shape)
        await p2p.stop()
        reportLoad(`runtime P2P on (default settings), ${label}, ${shape.offered}/s offered`, withP2P, {
          name: 'runtime relay-only, same run, its own coordinator',
          stats: ours,
        })
      } finally {
        await c.m.dispose()
      }
    }
  } finally {
    process.off('SIGINT', stop)
    await children.stopAll()
  }
}

/** A coordinator process at its default limits (`{}`: nothing lifted, unlike the relay scenario) and `n` members. */
async function freshMesh(children: Children, n: number): Promise<{ m: BenchMesh; members: Identity[] }> {
  const m = await startMesh(children, { driver: 'pglite', limits: {} })
  try {
    return { m, members: await m.join(n) }
  } catch (err) {
    await m.dispose()
    throw err
  }
}

/** The floor's CPU ms per DM, each side, median of alternating rounds (after an uncounted warm-up). */
async function floorCpu(
  children: Children,
  mesh: string,
  quick: boolean,
): Promise<{ sender: number; receiver: number }> {
  const count = quick ? 2000 : 20_000
  const rounds = quick ? 1 : 3
  const warmup = Math.min(2000, count)
  const echo = await children.start<FloorEchoReady>('floor echo', 'runtime-floor-echo')
  const floor = await children.start('floor', 'runtime-floor')
  try {
    const pushes = await floor.run<Uint8Array[]>('prepare', { mesh, count: warmup + rounds * count })
    let used = 0
    const side = async (kind: 'sender' | 'receiver', n: number): Promise<number> => {
      if (kind === 'receiver') {
        await echo.run('load', pushes.slice(used, used + n))
        used += n
      }
      const meter = cpuMeter({ floor: [floor.pid] })
      await floor.run(kind, { url: echo.ready.url, count: n })
      return (meter.stop()['floor']! * 1000) / n
    }
    await side('sender', warmup)
    await side('receiver', warmup)
    const s: number[] = []
    const r: number[] = []
    for (let i = 0; i < rounds; i++) {
      if (i % 2 === 0) {
        s.push(await side('sender', count))
        r.push(await side('receiver', count))
      } else {
        r.push(await side('receiver', count))
        s.push(await side('sender', count))
      }
    }
    const out = { sender: round3(median(s)), receiver: round3(median(r)) }
    process.stderr.write(
      `  floor (one process, ${count} DMs × ${rounds}): ${out.sender} ms/DM sending, ${out.receiver} ms/DM receiving\n`,
    )
    return out
  } finally {
    await floor.stop()
    await echo.stop()
  }
}

/** RSS of a process holding every member's started, connected, idle `Peer`, less the same process holding none. */
async function idleMemory(children: Children, m: BenchMesh, members: Identity[]): Promise<void> {
  const proc = await children.start('idle peers', 'runtime-peers', { nodeArgs: ['--expose-gc'] })
  try {
    const empty = await proc.run<NodeJS.MemoryUsage>('memory')
    await proc.run(
      'open',
      {
        wsUrl: m.wsUrl,
        mesh: m.mesh,
        ownerPk: m.ownerPk,
        coordinatorPk: m.coordinator.ready.coordinatorPk,
        seeds: members.map(seedFor),
        p2p: false,
      },
      300_000,
    )
    await new Promise((r) => setTimeout(r, 2000))
    const full = await proc.run<NodeJS.MemoryUsage>('memory')
    const n = members.length
    const per = (k: keyof NodeJS.MemoryUsage): number => round2((full[k] - empty[k]) / n / MIB)
    const value = per('rss')
    report({
      scenario: SCENARIO,
      name: `memory per idle peer (${n} started, connected, relay only)`,
      unit: 'MiB',
      value,
      goal: '≤ 8 MiB per idle peer',
      met: value <= 8,
      heapUsedMiB: per('heapUsed'),
      externalMiB: per('external'),
      arrayBuffersMiB: per('arrayBuffers'),
      rssEmptyMiB: round2(empty.rss / MIB),
      rssFullMiB: round2(full.rss / MIB),
      peakRssMiB: round2((memoryOf(proc.pid)?.peakRss ?? NaN) / MIB),
      peers: n,
    })
    await proc.run('close', undefined, 120_000)
  } finally {
    await proc.stop()
  }
}

function reportCpu(ours: LoadStats, light: LoadStats, floor: { sender: number; receiver: number }): void {
  for (const side of ['sender', 'receiver'] as const) {
    const key = side === 'sender' ? 'senders' : 'receivers'
    const value = ours.cpuMsPerDm[key]
    report({
      scenario: SCENARIO,
      name: `CPU per DM, ${side} side, runtime relay-only`,
      unit: 'µs/DM',
      value: value * 1000,
      baseline: { name: 'floor, same run', value: floor[side] * 1000 },
      goal: '≤ ×2 the floor',
      met: value <= 2 * floor[side],
      lightweightUsPerDm: round2(light.cpuMsPerDm[key] * 1000),
      coordinatorUsPerDm: round2(ours.cpuMsPerDm.coordinator * 1000),
      offeredPerSecond: ours.offered,
    })
  }
}

function reportLoad(name: string, s: LoadStats, baseline: { name: string; stats: LoadStats }): void {
  report({
    scenario: SCENARIO,
    name,
    unit: 'ms p99',
    value: s.latency.p99,
    baseline: { name: baseline.name, value: baseline.stats.latency.p99 },
    goal: `100% delivered within 5 s of the last send, p99 < ${P99_GOAL_MS} ms`,
    met: meets(s),
    p50Ms: s.latency.p50,
    p95Ms: s.latency.p95,
    maxMs: s.latency.max,
    deliveredPercent: percent(s.delivered, s.dispatched),
    deliveredIn5sPercent: percent(s.deliveredIn5s, s.dispatched),
    dispatched: s.dispatched,
    dispatchSeconds: s.dispatchSeconds,
    maxScheduleLagMs: s.maxScheduleLagMs,
    duplicates: s.duplicates,
    cpuMsPerDm: s.cpuMsPerDm,
    ...(s.outboxWait !== undefined && { outboxWaitMs: s.outboxWait }),
    baselineStats: {
      p50Ms: baseline.stats.latency.p50,
      deliveredPercent: percent(baseline.stats.delivered, baseline.stats.dispatched),
      cpuMsPerDm: baseline.stats.cpuMsPerDm,
    },
  })
}

function reportWaits(s: LoadStats): void {
  const wait = s.outboxWait!
  const figure: Figure = {
    scenario: SCENARIO,
    name: "sender's outbox wait, send() → first attempt",
    unit: 'ms p99',
    value: wait.p99,
    p50Ms: wait.p50,
    p95Ms: wait.p95,
    maxMs: wait.max,
    // send() → resolved (sealed and stored), the part of the wait the caller sees.
    acceptMs: s.accept,
    offeredPerSecond: s.offered,
  }
  report(figure)
}

/**
 * The highest offered rate whose trial delivered everything within 5 s of its last send with p99 under
 * the goal: trials of `TRIAL_SECONDS` from a low rate up, on a fresh coordinator, each after the previous
 * one's backlog went out, until one misses (or leaves a backlog that does not go out in 2 minutes). The
 * main run (its own coordinator) counts as a trial at the offered rate.
 */
async function rateSearch(fleet: RuntimeFleet | undefined, shape: Shape, main: LoadStats): Promise<void> {
  const trials: ReturnType<typeof trialOf>[] = [trialOf(main)]
  if (fleet !== undefined) {
    const senders = shape.peers / 2
    for (const f of [0.125, 0.25, 0.5, 0.75]) {
      const offered = f * shape.offered
      const perSender = Math.max(1, Math.round((offered * TRIAL_SECONDS) / senders))
      const t = trialOf(await fleet.run({ ...shape, offered, perSender }))
      const drainSeconds = await fleet.drain(120_000)
      trials.push({ ...t, drainSeconds })
      process.stderr.write(`    trial ${offered}/s: p99 ${t.p99Ms} ms, ${t.deliveredIn5sPercent}% in 5 s\n`)
      if (!t.met || Number.isNaN(drainSeconds)) break
    }
  }
  const ok = trials.filter((t) => t.met).map((t) => t.offered)
  const value = ok.length === 0 ? 0 : Math.max(...ok)
  report({
    scenario: SCENARIO,
    name: 'highest offered rate with p99 < 250 ms, runtime relay-only',
    unit: 'DMs/s',
    value,
    goal: `all delivered within 5 s of the last send, p99 < ${P99_GOAL_MS} ms (0: no rate tried met it)`,
    met: value >= shape.offered,
    ...(fleet !== undefined && { trialSeconds: TRIAL_SECONDS }),
    trials,
  })
}

function trialOf(s: LoadStats): {
  offered: number
  p50Ms: number
  p99Ms: number
  outboxWaitP99Ms: number
  maxScheduleLagMs: number
  deliveredIn5sPercent: number
  met: boolean
  drainSeconds?: number
} {
  return {
    offered: s.offered,
    p50Ms: s.latency.p50,
    p99Ms: s.latency.p99,
    outboxWaitP99Ms: s.outboxWait?.p99 ?? NaN,
    maxScheduleLagMs: s.maxScheduleLagMs,
    deliveredIn5sPercent: percent(s.deliveredIn5s, s.dispatched),
    met: meets(s),
  }
}

function meets(s: LoadStats): boolean {
  return s.dispatched > 0 && s.deliveredIn5s === s.dispatched && s.latency.p99 < P99_GOAL_MS
}

function percent(n: number, of: number): number {
  return of === 0 ? NaN : round2((n * 100) / of)
}

function round3(n: number): number {
  return Math.round(n * 1000) / 1000
}
