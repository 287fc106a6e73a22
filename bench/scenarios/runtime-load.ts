/**
 * One run of the `runtime` scenario's load shape, through real runtime peers (`runtime-peers.ts`) or
 * through the `relay` scenario's lightweight clients (`load-peers.ts`, pre-sealed frames), on the same
 * coordinator and members: half the peers send, half receive, in 2 + 2 processes, each sender on a fixed
 * schedule (open loop) so that `offered` DMs/s leave in all. CPU is read per side from /proc.
 */
import { cpuMeter } from '../processes/cpu.js'
import type { ChildHandle, Children } from '../processes/child.js'
import type { LoadResults, RunResult as LightRun } from '../processes/load-peers.js'
import { seedFor, type BenchMesh } from '../processes/mesh.js'
import type { RunResult, RunTimes } from '../processes/runtime-peers.js'
import type { Identity } from '../../protocol/index.js'

/** The shape of one run. */
export interface Shape {
  /** Senders and receivers together (half each). */
  peers: number
  perSender: number
  /** DMs/s offered by all senders together. */
  offered: number
}

/** What one run came to. */
export interface LoadStats {
  offered: number
  dispatched: number
  delivered: number
  /** Delivered by 5 s after the last send. */
  deliveredIn5s: number
  latency: Quantiles
  /** Runtime only: `send()` → the row's first attempt, and `send()` → resolved. */
  outboxWait?: Quantiles
  accept?: Quantiles
  /** CPU ms per DM: the senders' processes per DM sent, the receivers' per DM delivered, the coordinator's. */
  cpuMsPerDm: { senders: number; receivers: number; coordinator: number }
  /** Rows (runtime) or send_acks (lightweight) refused with MESH_ERR_RATE_LIMITED. */
  rateLimited: number
  /** Runtime: distinct rows that retried, by code, and send() rejections; lightweight: send_ack states. */
  retried: Record<string, number>
  sendErrors: Record<string, number>
  duplicates: number
  maxScheduleLagMs: number
  dispatchSeconds: number
}

export interface Quantiles {
  p50: number
  p95: number
  p99: number
  max: number
}

const PROCESSES_PER_SIDE = 2
/** After the last send, how long a run waits for the rest to arrive. */
const DRAIN_MS = 30_000

/** The members split into senders and receivers, each side in `PROCESSES_PER_SIDE` slices. */
function sides(members: Identity[]): { senders: Identity[][]; receivers: Identity[][] } {
  const half = members.length >> 1
  const slice = (list: Identity[]): Identity[][] => {
    const per = Math.ceil(list.length / PROCESSES_PER_SIDE)
    return Array.from({ length: PROCESSES_PER_SIDE }, (_, p) => list.slice(p * per, (p + 1) * per))
  }
  return { senders: slice(members.slice(0, half)), receivers: slice(members.slice(half, 2 * half)) }
}

/** 2 sender and 2 receiver processes of runtime peers, connected and consuming; `run` as often as needed. */
export class RuntimeFleet {
  private constructor(
    readonly m: BenchMesh,
    readonly senders: ChildHandle[],
    readonly receivers: ChildHandle[],
    readonly receiverKeys: Uint8Array[],
    readonly senderCount: number,
  ) {}

  static async start(
    children: Children,
    m: BenchMesh,
    members: Identity[],
    o: { p2p: boolean; label: string },
  ): Promise<RuntimeFleet> {
    const s = sides(members)
    const profDir = process.env['AGENTMESH_BENCH_CPU_PROF']
    const spawn = (name: string, prof: boolean): Promise<ChildHandle> =>
      children.start(name, 'runtime-peers', {
        ...(prof && profDir !== undefined && { nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${profDir}`] }),
      })
    // The processes start side by side; their peers connect one process after another (100 hellos and
    // catch-ups at once outlasted the open's timeout on a busy machine).
    const [receivers, senders] = await Promise.all([
      Promise.all(s.receivers.map((_, p) => spawn(`${o.label} receivers ${p + 1}`, p === 0))),
      Promise.all(s.senders.map((_, p) => spawn(`${o.label} senders ${p + 1}`, p === 0))),
    ])
    const groups: [ChildHandle, Identity[]][] = [
      ...receivers.map((proc, p): [ChildHandle, Identity[]] => [proc, s.receivers[p]!]),
      ...senders.map((proc, p): [ChildHandle, Identity[]] => [proc, s.senders[p]!]),
    ]
    for (const [proc, ids] of groups) {
      const args = {
        wsUrl: m.wsUrl,
        mesh: m.mesh,
        ownerPk: m.ownerPk,
        coordinatorPk: m.coordinator.ready.coordinatorPk,
        seeds: ids.map(seedFor),
        p2p: o.p2p,
      }
      await proc.run('open', args, 600_000)
    }
    // The receivers consume before anything is sent.
    await Promise.all(receivers.map((proc) => proc.run('consume')))
    return new RuntimeFleet(
      m,
      senders,
      receivers,
      s.receivers.flat().map((x) => x.publicKey),
      s.senders.flat().length,
    )
  }

  async run(shape: Shape): Promise<LoadStats> {
    const intervalMs = (this.senderCount * 1000) / shape.offered
    const meter = this.#meter()
    const startAt = Date.now() + 1000
    const per = Math.ceil(this.senderCount / this.senders.length)
    const runs = await Promise.all(
      this.senders.map((proc, p) =>
        proc.run<RunResult>(
          'run',
          {
            recipients: this.receiverKeys,
            perPeer: shape.perSender,
            startAt,
            intervalMs,
            totalPeers: this.senderCount,
            firstIndex: p * per,
            drainMs: DRAIN_MS,
          },
          900_000,
        ),
      ),
    )
    const dispatched = runs.reduce((n, r) => n + r.dispatched, 0)
    const sendErrors = merge(runs.map((r) => r.sendErrors))
    const lastSendAt = Math.max(...runs.map((r) => r.lastSendAt))
    await arrivals(this.receivers, dispatched - sum(sendErrors), lastSendAt + DRAIN_MS)
    const cpu = meter.stop()
    const times = await Promise.all(
      [...this.senders, ...this.receivers].map((p) => p.run<RunTimes>('results')),
    )
    const joined = joinTimes(
      times.map((t) => ({ ids: t.sentIds, at: t.sentAt })),
      times.map((t) => ({ ids: t.receivedIds, at: t.receivedAt })),
      lastSendAt + 5000,
    )
    const retried = merge(runs.map((r) => r.retriedRows))
    return {
      offered: shape.offered,
      dispatched,
      ...joined,
      outboxWait: quantiles(times.flatMap((t) => [...t.waitMs])),
      accept: quantiles(times.flatMap((t) => [...t.acceptMs])),
      cpuMsPerDm: {
        senders: perDm(cpu['senders']!, dispatched),
        receivers: perDm(cpu['receivers']!, joined.delivered),
        coordinator: perDm(cpu['coordinator']!, dispatched),
      },
      rateLimited: retried['MESH_ERR_RATE_LIMITED'] ?? 0,
      retried,
      sendErrors,
      duplicates: times.reduce((n, t) => n + t.duplicates, 0),
      maxScheduleLagMs: round2(Math.max(...runs.map((r) => r.maxLagMs))),
      dispatchSeconds: round2((lastSendAt - Math.min(...runs.map((r) => r.firstSendAt))) / 1000),
    }
  }

  /**
   * Lets what a run left on its way go out (not counted), so that the next run does not start behind
   * it; resolves with the seconds it took, or NaN when the outboxes were not idle within `timeoutMs`.
   */
  async drain(timeoutMs: number): Promise<number> {
    const start = performance.now()
    try {
      await Promise.all(this.senders.map((p) => p.run('settle', { timeoutMs }, timeoutMs + 10_000)))
    } catch {
      return NaN
    } finally {
      await arrivals(this.receivers, Infinity, Date.now() + 30_000)
      await Promise.all([...this.senders, ...this.receivers].map((p) => p.run('results')))
    }
    return round2((performance.now() - start) / 1000)
  }

  #meter(): ReturnType<typeof cpuMeter> {
    return cpuMeter({
      senders: this.senders.map((p) => p.pid),
      receivers: this.receivers.map((p) => p.pid),
      coordinator: [this.m.coordinator.pid],
    })
  }

  /** Closes every peer (a process whose peers do not close within 60 s is stopped all the same). */
  async stop(): Promise<void> {
    const all = [...this.senders, ...this.receivers]
    await Promise.all(all.map((p) => p.run('close', undefined, 60_000).catch(() => undefined)))
    for (const p of all) await p.stop()
  }
}

/** The same shape through the `relay` scenario's lightweight clients (pre-sealed frames, acks only). */
export async function lightweightRun(
  children: Children,
  m: BenchMesh,
  members: Identity[],
  shape: Shape,
): Promise<LoadStats> {
  const s = sides(members)
  const senderCount = s.senders.flat().length
  const receiverKeys = s.receivers.flat().map((x) => x.publicKey)
  const procs: ChildHandle[] = []
  try {
    const start = async (name: string, ids: Identity[], firstIndex: number): Promise<ChildHandle> => {
      const proc = await children.start(name, 'load-peers')
      procs.push(proc)
      await proc.run('connect', { wsUrl: m.wsUrl, mesh: m.mesh, seeds: ids.map(seedFor), firstIndex })
      return proc
    }
    // load-peers.ts sends to `peers[r]`, r < length - 1, skipping its own index: with first indices past
    // the list, one key more (never drawn) makes the draw uniform over the receivers.
    const per = Math.ceil(senderCount / s.senders.length)
    const [receivers, senders] = await Promise.all([
      Promise.all(s.receivers.map((ids, p) => start(`light receivers ${p + 1}`, ids, 0))),
      Promise.all(s.senders.map((ids, p) => start(`light senders ${p + 1}`, ids, 1e6 + p * per))),
    ])
    const peers = [...receiverKeys, receiverKeys[0]!]
    await Promise.all(
      senders.map((proc) => proc.run('prepare', { peers, perPeer: shape.perSender, size: '1KiB' })),
    )
    const meter = cpuMeter({
      senders: senders.map((p) => p.pid),
      receivers: receivers.map((p) => p.pid),
      coordinator: [m.coordinator.pid],
    })
    const startAt = Date.now() + 1000
    const intervalMs = (senderCount * 1000) / shape.offered
    const runs = await Promise.all(
      senders.map((proc) =>
        proc.run<LightRun>(
          'run',
          { startAt, intervalMs, totalPeers: senderCount, drainMs: DRAIN_MS },
          900_000,
        ),
      ),
    )
    const dispatched = runs.reduce((n, r) => n + r.dispatched, 0)
    const lastSendAt = startAt + Math.max(...runs.map((r) => r.dispatchMs))
    await arrivals(receivers, dispatched, Date.now() + 5000)
    const cpu = meter.stop()
    const results = await Promise.all(procs.map((p) => p.run<LoadResults>('results')))
    // load-peers.ts notes its dispatch span, not its last send's time: the receivers' 5 s window counts
    // from the schedule's end, which is at most `maxLagMs` early.
    const joined = joinTimes(
      results.map((r) => ({ ids: r.sentIds, at: r.sentAt })),
      results.map((r) => ({ ids: r.receivedIds, at: r.receivedAt })),
      results.reduce((t, r) => r.sentAt.reduce((a, b) => Math.max(a, b), t), lastSendAt) + 5000,
    )
    const replies = merge(runs.map((r) => r.replies))
    return {
      offered: shape.offered,
      dispatched,
      ...joined,
      cpuMsPerDm: {
        senders: perDm(cpu['senders']!, dispatched),
        receivers: perDm(cpu['receivers']!, joined.delivered),
        coordinator: perDm(cpu['coordinator']!, dispatched),
      },
      rateLimited: replies['MESH_ERR_RATE_LIMITED'] ?? 0,
      retried: replies,
      sendErrors: {},
      duplicates: 0,
      maxScheduleLagMs: round2(Math.max(...runs.map((r) => r.maxLagMs))),
      dispatchSeconds: round2(Math.max(...runs.map((r) => r.dispatchMs)) / 1000),
    }
  } finally {
    for (const p of procs) await p.stop()
  }
}

/** Waits until the receivers hold `expected` messages, their count stops moving for 3 s, or `deadline`. */
async function arrivals(receivers: ChildHandle[], expected: number, deadline: number): Promise<void> {
  let seen = -1
  let still = performance.now()
  for (;;) {
    const count = (await Promise.all(receivers.map((p) => p.run<number>('received')))).reduce(
      (a, b) => a + b,
      0,
    )
    if (count >= expected) return
    if (count !== seen) {
      seen = count
      still = performance.now()
    } else if (performance.now() - still > 3000) return
    if (Date.now() > deadline) return
    await new Promise((r) => setTimeout(r, 200))
  }
}

/** Distinct DMs received, those by `by`, and each one's latency (ms) from its send. */
function joinTimes(
  sent: { ids: string[]; at: Float64Array }[],
  received: { ids: string[]; at: Float64Array }[],
  by: number,
): { delivered: number; deliveredIn5s: number; latency: Quantiles } {
  const sentAt = new Map<string, number>()
  for (const s of sent) s.ids.forEach((id, i) => sentAt.set(id, s.at[i]!))
  const seen = new Set<string>()
  const latencies: number[] = []
  let inTime = 0
  for (const r of received) {
    r.ids.forEach((id, i) => {
      const at = sentAt.get(id)
      if (at === undefined || seen.has(id)) return
      seen.add(id)
      latencies.push(r.at[i]! - at)
      if (r.at[i]! <= by) inTime++
    })
  }
  return { delivered: seen.size, deliveredIn5s: inTime, latency: quantiles(latencies) }
}

/** p50 / p95 / p99 / max by nearest rank (NaN values left out). */
export function quantiles(values: number[]): Quantiles {
  const sorted = values.filter((v) => !Number.isNaN(v)).sort((a, b) => a - b)
  const q = (p: number): number =>
    sorted.length === 0
      ? NaN
      : round2(sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))]!)
  return { p50: q(0.5), p95: q(0.95), p99: q(0.99), max: q(1) }
}

function merge(all: Record<string, number>[]): Record<string, number> {
  const out: Record<string, number> = {}
  for (const counts of all) for (const [k, n] of Object.entries(counts)) out[k] = (out[k] ?? 0) + n
  return out
}

function sum(counts: Record<string, number>): number {
  return Object.values(counts).reduce((a, b) => a + b, 0)
}

function perDm(seconds: number, dms: number): number {
  return dms === 0 ? NaN : Math.round((seconds * 1e6) / dms) / 1000
}

export function round2(n: number): number {
  return Math.round(n * 100) / 100
}
