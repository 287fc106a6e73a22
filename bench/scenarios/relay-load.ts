/**
 * Figure 3 of the `relay` scenario: claudemesh's published load shape. 100 peers (members' control-plane
 * connections, in two client processes) each send 1,000 pre-sealed 1 KiB DMs to random other peers,
 * paced so that 5,000 DMs/s are offered in all (open loop, ~20 s), rate limits lifted; every receiver
 * acks. Reports the share delivered (distinct clientMessageIds seen by receivers), end-to-end latency
 * (sender's send → receiver's arrival, one wall clock), and the coordinator process's peak RSS (VmHWM).
 *
 * The baseline is claudemesh's published figures for the same shape, printed as the reference: they were
 * not measured here.
 */
import { report } from '../measure.js'
import { memoryOf, type ChildHandle, type Children } from '../processes/child.js'
import { cpuMeter } from '../processes/cpu.js'
import type { LoadResults, RunResult } from '../processes/load-peers.js'
import { seedFor, startMesh, type Driver } from '../processes/mesh.js'
import { mergeCounts, perDm, round2, SCENARIO, topStatements } from './relay-report.js'

/** claudemesh's published run of this shape. */
const CLAUDEMESH = {
  deliveredPercent: 88.8,
  p99Ms: 23_000,
  peakRssGB: 1.16,
  dispatched: 100_000,
  dispatchSeconds: 17.8,
}

const OFFERED_PER_SECOND = 5000
/** How long after its last send a client waits for outstanding send_acks; what is still missing then counts as lost. */
const DRAIN_MS = 30_000
const PROCESSES = 2

export async function loadFigure(
  children: Children,
  driver: Driver,
  databaseUrl: string | undefined,
  quick: boolean,
): Promise<void> {
  const peerCount = quick ? 20 : 100
  const perPeer = quick ? 100 : 1000
  const intervalMs = (peerCount * 1000) / OFFERED_PER_SECOND
  const m = await startMesh(children, { driver, ...(databaseUrl !== undefined && { databaseUrl }) })
  // What the coordinator holds before any load: on PGlite, mostly the embedded database.
  const rssAtStart = memoryOf(m.coordinator.pid)?.rss ?? NaN
  const procs: ChildHandle[] = []
  let sampler: NodeJS.Timeout | undefined
  try {
    const members = await m.join(peerCount)
    const keys = members.map((x) => x.publicKey)
    const share = Math.ceil(peerCount / PROCESSES)
    for (let p = 0; p < PROCESSES; p++) {
      const proc = await children.start(`load peers ${p + 1}`, 'load-peers')
      procs.push(proc)
      const mine = members.slice(p * share, (p + 1) * share)
      await proc.run('connect', {
        wsUrl: m.wsUrl,
        mesh: m.mesh,
        seeds: mine.map(seedFor),
        firstIndex: p * share,
      })
    }
    await Promise.all(procs.map((proc) => proc.run('prepare', { peers: keys, perPeer, size: '1KiB' })))

    // The coordinator's memory at its largest: RSS from /proc, and how V8 splits it at that moment.
    let peak: NodeJS.MemoryUsage | undefined
    sampler = setInterval(() => {
      void m.coordinator.run<NodeJS.MemoryUsage>('memory', undefined, 5000).then(
        (u) => {
          if (u.rss > (peak?.rss ?? 0)) peak = u
        },
        () => undefined,
      )
    }, 500)
    await m.storeStats()
    const meter = cpuMeter({
      coordinator: [m.coordinator.pid],
      clients: procs.map((proc) => proc.pid),
      ...(driver === 'postgres' && { postgres: { command: 'postgres' } }),
    })
    // AGENTMESH_BENCH_ALLOC_PROF=<dir>: where the coordinator's allocations come from during the load.
    const allocDir = process.env['AGENTMESH_BENCH_ALLOC_PROF']
    if (allocDir !== undefined) await m.coordinator.run('allocationsStart')
    const startAt = Date.now() + 1000
    const runs = await Promise.all(
      procs.map((proc) =>
        proc.run<RunResult>(
          'run',
          { startAt, intervalMs, totalPeers: peerCount, drainMs: DRAIN_MS },
          600_000,
        ),
      ),
    )
    const dispatched = runs.reduce((n, r) => n + r.dispatched, 0)
    if (allocDir !== undefined) {
      await m.coordinator.run('allocationsStop', `${allocDir}/load-${driver}-${Date.now()}.heapprofile`)
    }
    // AGENTMESH_BENCH_HEAP_SNAPSHOT=<dir>: what the coordinator's heap holds once the load has been sent.
    const snapshotDir = process.env['AGENTMESH_BENCH_HEAP_SNAPSHOT']
    if (snapshotDir !== undefined) {
      await m.coordinator.run('heapSnapshot', `${snapshotDir}/load-${driver}-${Date.now()}.heapsnapshot`)
    }
    // Pushes of queued DMs may still be on their way: wait until the receivers' count stops moving.
    let seen = -1
    for (let i = 0; i < 50; i++) {
      const now = (await Promise.all(procs.map((p) => p.run<number>('received')))).reduce((a, b) => a + b, 0)
      if (now === dispatched || now === seen) break
      seen = now
      await new Promise((r) => setTimeout(r, 200))
    }
    const memory = memoryOf(m.coordinator.pid)
    clearInterval(sampler)
    const cpu = meter.stop()
    const store = await m.storeStats()
    const results = await Promise.all(procs.map((p) => p.run<LoadResults>('results')))
    const { delivered, latencies } = join(results)
    const deliveredPercent = (delivered * 100) / dispatched
    const p = (q: number): number => round2(percentile(latencies, q))
    const peakRssMB = Math.max(memory?.peakRss ?? 0, peak?.rss ?? 0) / 1e6
    const mb = (bytes: number | undefined): number => round2((bytes ?? NaN) / 1e6)
    const p99 = p(0.99)
    report({
      scenario: SCENARIO,
      name: `load shape ${peerCount} peers × ${perPeer} DMs, ${driver}`,
      unit: '% delivered',
      value: deliveredPercent,
      baseline: { name: 'claudemesh (published)', value: CLAUDEMESH.deliveredPercent },
      goal: '100% delivered, p99 < 250 ms, peak RSS < 300 MB',
      met: delivered === dispatched && p99 < 250 && peakRssMB < 300,
      p50Ms: p(0.5),
      p95Ms: p(0.95),
      p99Ms: p99,
      maxMs: p(1),
      peakRssMB: round2(peakRssMB),
      rssAtStartMB: round2(rssAtStart / 1e6),
      atPeakMB: {
        rss: mb(peak?.rss),
        heapTotal: mb(peak?.heapTotal),
        heapUsed: mb(peak?.heapUsed),
        external: mb(peak?.external),
      },
      offeredPerSecond: OFFERED_PER_SECOND,
      dispatched,
      dispatchSeconds: round2(Math.max(...runs.map((r) => r.dispatchMs)) / 1000),
      maxScheduleLagMs: round2(Math.max(...runs.map((r) => r.maxLagMs))),
      drainSeconds: DRAIN_MS / 1000,
      replies: mergeCounts(runs.map((r) => r.replies)),
      cpuMsPerDm: perDm(cpu, dispatched),
      store: topStatements(store.statements, dispatched),
      reference: CLAUDEMESH,
    })
  } finally {
    clearInterval(sampler)
    for (const proc of procs) await proc.stop()
    await m.dispose()
  }
}

/** Distinct messages received, and each one's latency (ms) from its send. */
function join(results: LoadResults[]): { delivered: number; latencies: number[] } {
  const sentAt = new Map<string, number>()
  for (const r of results) r.sentIds.forEach((id, i) => sentAt.set(id, r.sentAt[i]!))
  const seen = new Set<string>()
  const latencies: number[] = []
  for (const r of results) {
    r.receivedIds.forEach((id, i) => {
      const sent = sentAt.get(id)
      if (sent === undefined || seen.has(id)) return
      seen.add(id)
      latencies.push(r.receivedAt[i]! - sent)
    })
  }
  latencies.sort((a, b) => a - b)
  return { delivered: seen.size, latencies }
}

/** The q-quantile (nearest rank) of sorted values; NaN when there are none. */
function percentile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!
}
