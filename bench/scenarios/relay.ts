/**
 * The `relay` scenario: the coordinator as a message relay, each figure beside a baseline measured in
 * the same run (CONVENTIONS.md §11; method and how to read it in bench/README.md). Every party is its own
 * process on 127.0.0.1 (bench/processes/), the coordinator included, as in production; every process is
 * stopped in `finally`.
 *
 * 1. Online DMs (this file): a sender process and a receiver process, DMs through the coordinator on the
 *    fast path, beside a bare `ws` relay process in the same topology; 1 KiB and 60 KiB, 64 in flight.
 *    On PGlite, and on Postgres when DATABASE_URL is set.
 * 2. Queued DMs committed on Postgres beside raw batched inserts of the same rows (relay-queued.ts).
 * 3. claudemesh's published load shape: 100 peers × 1,000 DMs at 5,000/s offered (relay-load.ts).
 */
import { initCrypto } from '../../protocol/index.js'
import { median, report } from '../measure.js'
import { Children, type ChildHandle } from '../processes/child.js'
import { cpuMeter } from '../processes/cpu.js'
import type { BurstResult } from '../processes/dm-peer.js'
import { seedFor, startMesh, type Driver } from '../processes/mesh.js'
import type { RawRelayReady } from '../processes/raw-relay.js'
import type { DmSize } from '../processes/sealed-frames.js'
import { loadFigure } from './relay-load.js'
import { queuedFigure } from './relay-queued.js'
import { mergeCounts, perDm, SCENARIO, topStatements } from './relay-report.js'

/** Runs every figure; `quick` shrinks counts and rounds so a test can smoke it. */
export async function relayScenario(opts: { quick: boolean }): Promise<void> {
  await initCrypto()
  const databaseUrl = process.env['DATABASE_URL'] || undefined
  const drivers: Driver[] = databaseUrl === undefined ? ['pglite'] : ['pglite', 'postgres']
  const children = new Children()
  const stop = (): void => void children.stopAll().finally(() => process.exit(130))
  process.once('SIGINT', stop)
  // AGENTMESH_BENCH_RELAY=online,queued,load (any of them) runs only those figures, e.g. to profile one.
  const only = process.env['AGENTMESH_BENCH_RELAY']?.split(',')
  const wanted = (figure: string): boolean => only === undefined || only.includes(figure)
  try {
    if (wanted('online'))
      for (const driver of drivers) await onlineFigures(children, driver, databaseUrl, opts.quick)
    if (wanted('queued')) await queuedFigure(children, databaseUrl, opts.quick)
    if (wanted('load'))
      for (const driver of drivers) await loadFigure(children, driver, databaseUrl, opts.quick)
  } finally {
    process.off('SIGINT', stop)
    await children.stopAll()
  }
}

// ── 1. online DMs ────────────────────────────────────────────────────────────

const WINDOW = 64

/** DMs per round, by size; a first short round on each side warms the JIT and is not counted. */
function countsFor(size: DmSize, quick: boolean): { messages: number; warmup: number; rounds: number } {
  if (size === '1KiB')
    return quick ? { messages: 2000, warmup: 300, rounds: 1 } : { messages: 12_000, warmup: 2000, rounds: 5 }
  return quick ? { messages: 300, warmup: 100, rounds: 1 } : { messages: 2500, warmup: 500, rounds: 5 }
}

async function onlineFigures(
  children: Children,
  driver: Driver,
  databaseUrl: string | undefined,
  quick: boolean,
): Promise<void> {
  const m = await startMesh(children, { driver, ...(databaseUrl !== undefined && { databaseUrl }) })
  const started: ChildHandle[] = []
  try {
    const members = await m.join(2)
    const a = members[0]!
    const b = members[1]!
    const relay = await children.start<RawRelayReady>('raw relay', 'raw-relay')
    started.push(relay)
    const receiver = await children.start('receiver', 'dm-peer')
    started.push(receiver)
    const sender = await children.start('sender', 'dm-peer')
    started.push(sender)
    await receiver.run('receiver', {
      wsUrl: m.wsUrl,
      mesh: m.mesh,
      seed: seedFor(b),
      rawUrl: relay.ready.url,
    })
    await sender.run('senders', {
      wsUrl: m.wsUrl,
      mesh: m.mesh,
      seeds: [seedFor(a)],
      rawUrl: relay.ready.url,
    })

    for (const size of ['1KiB', '60KiB'] as const) {
      const c = countsFor(size, quick)
      // CPU seconds of the relay in the middle (coordinator or raw relay) over the counted rounds.
      const cpu = { coordinator: 0, raw: 0 }
      const burst = async (via: 'coordinator' | 'raw', messages: number): Promise<BurstResult> => {
        const meter = cpuMeter({ relay: [via === 'raw' ? relay.pid : m.coordinator.pid] })
        const result = await sender.run<BurstResult>('burst', {
          via,
          recipients: [b.publicKey],
          perConnection: messages,
          window: WINDOW,
          size,
        })
        cpu[via] += meter.stop()['relay']!
        return result
      }
      await burst('coordinator', c.warmup)
      await burst('raw', c.warmup)
      await m.storeStats()
      cpu.coordinator = cpu.raw = 0
      const ours: BurstResult[] = []
      const raw: BurstResult[] = []
      // Alternating order, as compareRates does, so drift on a shared machine hits both alike.
      for (let r = 0; r < c.rounds; r++) {
        if (r % 2 === 0) {
          ours.push(await burst('coordinator', c.messages))
          raw.push(await burst('raw', c.messages))
        } else {
          raw.push(await burst('raw', c.messages))
          ours.push(await burst('coordinator', c.messages))
        }
      }
      const store = await m.storeStats()
      const value = median(ours.map((x) => x.perSecond))
      const baseline = median(raw.map((x) => x.perSecond))
      const sent = c.messages * c.rounds
      report({
        scenario: SCENARIO,
        name: `online DM ${size}, ${driver}`,
        unit: 'messages/s',
        value,
        baseline: { name: 'raw ws relay, same topology', value: baseline },
        goal: 'coordinator ≥ 50% of the raw relay',
        met: value >= 0.5 * baseline,
        bytes: ours[0]!.envelopeBytes,
        window: WINDOW,
        messages: c.messages,
        rounds: c.rounds,
        replies: mergeCounts(ours.map((x) => x.replies)),
        cpuMsPerMessage: perDm(cpu, sent),
        store: topStatements(store.statements, sent),
      })
    }
  } finally {
    for (const c of started.reverse()) await c.stop()
    await m.dispose()
  }
}
