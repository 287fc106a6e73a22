/**
 * The `p2p` scenario: `TransportSession.send` of pre-sealed envelopes over the `webrtc` adapter, beside a
 * raw node-datachannel channel between the same two processes and the `ws-relay` adapter through the
 * coordinator, each figure from the same run (CONVENTIONS.md §11; method in bench/README.md).
 *
 * A sender process and a receiver process (bench/processes/p2p-peer.ts), two members of one mesh on a
 * coordinator process on 127.0.0.1 (Postgres when DATABASE_URL is set, else PGlite): the webrtc session is
 * negotiated through the coordinator's signaling relay, the ws-relay frames go through its accept path.
 *
 * 1. Throughput: messages/s from the first `send` to the receiver's last frame, 1 KiB and 60 KiB, in
 *    rounds whose lane order rotates. Goal: webrtc ≥ 60% of the raw channel.
 * 2. Latency: `send` → the receiver's `message`, at a modest fixed rate, the three lanes in turn message by
 *    message. Goal: webrtc's p50 and p99 below ws-relay's.
 */
import { initCrypto, toHex, type Identity } from '../../protocol/index.js'
import { median, report } from '../measure.js'
import { Children, type ChildHandle } from '../processes/child.js'
import { cpuMeter } from '../processes/cpu.js'
import { seedFor, startMesh, type BenchMesh, type Driver } from '../processes/mesh.js'
import type { RawDescription } from '../processes/p2p-raw.js'
import type { BurstResult, Lane, PacedResult, ReceivedByLane } from '../processes/p2p-peer.js'
import type { DmSize } from '../processes/sealed-frames.js'
import { mergeCounts, perDm } from './relay-report.js'

const SCENARIO = 'p2p'
const LANES: readonly Lane[] = ['webrtc', 'raw', 'relay']
const LANE_NAMES: Record<Lane, string> = {
  webrtc: 'webrtc adapter',
  raw: 'raw node-datachannel',
  relay: 'ws-relay adapter',
}
const SIZES: readonly DmSize[] = ['1KiB', '60KiB']
/** Bound on each setup step (connect, handshake, raw channel): a hung step fails the run instead. */
const SETUP_MS = 20_000
/** The latency figure's fixed rate, messages/s over the three lanes in turn: well under each one's capacity. */
const PACED_RATE = 300

/** Messages per throughput round by lane, and rounds (a first uncounted round of a fifth warms up). */
function counts(size: DmSize, quick: boolean): { perLane: Record<Lane, number>; rounds: number } {
  const p2p = size === '1KiB' ? (quick ? 3000 : 20_000) : quick ? 300 : 2000
  const relay = size === '1KiB' ? (quick ? 1000 : 5000) : quick ? 100 : 500
  return { perLane: { webrtc: p2p, raw: p2p, relay }, rounds: quick ? 1 : 5 }
}

/** Paced messages per lane. */
function pacedCount(quick: boolean): number {
  return quick ? 100 : 1000
}

/** Runs both figures on one coordinator; `quick` shrinks counts and rounds so a test can smoke it. */
export async function p2pScenario(opts: { quick: boolean }): Promise<void> {
  await initCrypto()
  const databaseUrl = process.env['DATABASE_URL'] || undefined
  const driver: Driver = databaseUrl === undefined ? 'pglite' : 'postgres'
  process.stderr.write(
    `  coordinator store: ${driver}${databaseUrl === undefined ? ' (DATABASE_URL not set)' : ''}\n`,
  )
  const children = new Children()
  const stop = (): void => void children.stopAll().finally(() => process.exit(130))
  process.once('SIGINT', stop)
  const m = await startMesh(children, { driver, ...(databaseUrl !== undefined && { databaseUrl }) })
  try {
    const pair = await connectPair(children, m, await m.join(2))
    // AGENTMESH_BENCH_P2P=throughput,latency (either) runs only those figures, e.g. to profile one.
    const only = process.env['AGENTMESH_BENCH_P2P']?.split(',')
    const wanted = (figure: string): boolean => only === undefined || only.includes(figure)
    if (wanted('throughput')) for (const size of SIZES) await throughputFigure(pair, driver, size, opts.quick)
    if (wanted('latency')) for (const size of SIZES) await latencyFigure(pair, driver, size, opts.quick)
    // The raw channel on both ends first: see `closeAll` in p2p-peer.ts.
    await Promise.all([pair.sender.run('rawClose'), pair.receiver.run('rawClose')])
    await Promise.all([pair.sender.run('close'), pair.receiver.run('close')])
  } finally {
    process.off('SIGINT', stop)
    await children.stopAll()
    await m.dispose()
  }
}

/** The two peer processes, connected on every lane. */
interface Pair {
  sender: ChildHandle
  receiver: ChildHandle
  coordinatorPid: number
  handshakeMs: number
}

async function connectPair(children: Children, m: BenchMesh, members: Identity[]): Promise<Pair> {
  const [a, b] = members as [Identity, Identity]
  const { wsUrl, mesh } = m
  // AGENTMESH_BENCH_CPU_PROF=<dir>: the peers write V8 CPU profiles there when they stop (as the coordinator).
  const profDir = process.env['AGENTMESH_BENCH_CPU_PROF']
  const nodeArgs = profDir ? ['--cpu-prof', `--cpu-prof-dir=${profDir}`] : []
  const receiver = await children.start('p2p receiver', 'p2p-peer', { nodeArgs })
  const sender = await children.start('p2p sender', 'p2p-peer', { nodeArgs })
  await receiver.run('connect', { wsUrl, mesh, seed: seedFor(b), peerPk: a.publicKey }, SETUP_MS)
  await sender.run('connect', { wsUrl, mesh, seed: seedFor(a), peerPk: b.publicKey }, SETUP_MS)
  // The webrtc handshake goes through the coordinator's signaling relay, as in production.
  const { handshakeMs } = await sender.run<{ handshakeMs: number }>('open', undefined, SETUP_MS)
  await receiver.run('accepted', 'webrtc', SETUP_MS)
  process.stderr.write(`  webrtc handshake through the coordinator: ${Math.round(handshakeMs)} ms\n`)
  await openRaw(sender, receiver)
  const pair = { sender, receiver, coordinatorPid: m.coordinator.pid, handshakeMs }
  // Correctness first: on every lane and size, what arrives is what was sent, byte for byte.
  for (const size of SIZES) for (const lane of LANES) await probe(pair, lane, size)
  return pair
}

/**
 * The raw channel, its descriptions over IPC (introducing it is not what it stands for). libdatachannel
 * now and then fails a fresh connection within milliseconds (the adapter retries once for the same reason,
 * transports/webrtc/index.ts), so a failed attempt is retried with new connections.
 */
async function openRaw(sender: ChildHandle, receiver: ChildHandle): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      const offer = await sender.run<RawDescription>('rawOffer', undefined, SETUP_MS)
      const answer = await receiver.run<RawDescription>('rawAnswer', offer, SETUP_MS)
      // The offerer holds the answer before the answerer learns where to send its checks.
      await sender.run('rawAccept', answer, SETUP_MS)
      await receiver.run('rawCandidates', offer.candidates, SETUP_MS)
      await Promise.all([
        sender.run('rawOpened', undefined, SETUP_MS),
        receiver.run('rawOpened', undefined, SETUP_MS),
      ])
      return
    } catch (err) {
      if (attempt === 3) throw err
      process.stderr.write(
        `  raw channel, attempt ${attempt} failed (${String(err).split('\n')[0]}); again\n`,
      )
    }
  }
}

async function probe(pair: Pair, lane: Lane, size: DmSize): Promise<void> {
  const count = 3
  await pair.sender.run('prepare', { lane, count, size })
  await pair.receiver.run('arm', { lanes: [lane], count, keep: true })
  const [sent, got] = await Promise.all([
    pair.sender.run<BurstResult>('burst', { lane, keep: true }),
    pair.receiver.run<ReceivedByLane>('received', 30_000),
  ])
  const received = got[lane]?.frames ?? []
  // The webrtc and raw channels are ordered; ws-relay is not (capabilities.ordered: false).
  const key = (frames: Uint8Array[]): string[] => frames.map(toHex)
  const [want, have] =
    lane === 'relay' ? [key(sent.frames!).sort(), key(received).sort()] : [key(sent.frames!), key(received)]
  if (want.length !== have.length || want.some((hex, i) => hex !== have[i])) {
    throw new Error(`${lane} ${size}: the frames received differ from the frames sent`)
  }
}

// ── 1. throughput ────────────────────────────────────────────────────────────

interface Round {
  perSecond: number
  frameBytes: number
  refused: number
  /** CPU seconds per process over the burst (user + system, every thread: libdatachannel's too). */
  cpu: Record<string, number>
}

/** One burst of `count` on `lane`: first send → the receiver's last frame, on the shared wall clock. */
async function timedBurst(pair: Pair, lane: Lane, count: number, size: DmSize): Promise<Round> {
  await pair.sender.run('prepare', { lane, count, size })
  await pair.receiver.run('arm', { lanes: [lane], count })
  const meter = cpuMeter({
    sender: [pair.sender.pid],
    receiver: [pair.receiver.pid],
    coordinator: [pair.coordinatorPid],
  })
  const [sent, byLane] = await Promise.all([
    pair.sender.run<BurstResult>('burst', { lane }),
    pair.receiver.run<ReceivedByLane>('received', 120_000),
  ])
  const cpu = meter.stop()
  const got = byLane[lane]!
  if (got.wrongSize !== 0) throw new Error(`${lane} ${size}: ${got.wrongSize} frames not whole`)
  return {
    perSecond: (count * 1000) / (got.lastAt - sent.startedAt),
    frameBytes: sent.frameBytes,
    refused: sent.refused,
    cpu,
  }
}

async function throughputFigure(pair: Pair, driver: Driver, size: DmSize, quick: boolean): Promise<void> {
  const c = counts(size, quick)
  for (const lane of LANES) await timedBurst(pair, lane, Math.ceil(c.perLane[lane] / 5), size)
  const rounds: Record<Lane, Round[]> = { webrtc: [], raw: [], relay: [] }
  // Each round rotates the order, so drift on a shared machine hits every lane alike.
  for (let r = 0; r < c.rounds; r++) {
    for (let k = 0; k < LANES.length; k++) {
      const lane = LANES[(r + k) % LANES.length]!
      rounds[lane].push(await timedBurst(pair, lane, c.perLane[lane], size))
    }
  }
  const rate = (lane: Lane): number => median(rounds[lane].map((x) => x.perSecond))
  const [webrtc, raw, relay] = [rate('webrtc'), rate('raw'), rate('relay')]
  const detail = (lane: Lane): Record<string, unknown> => ({
    frameBytes: rounds[lane][0]!.frameBytes,
    messages: c.perLane[lane],
    rounds: c.rounds,
    perRound: rounds[lane].map((x) => Math.round(x.perSecond)),
    refusedPerRound: median(rounds[lane].map((x) => x.refused)),
    cpuMsPerMessage: cpuPerMessage(rounds[lane], c.perLane[lane], lane !== 'relay'),
  })
  report({
    scenario: SCENARIO,
    name: `send ${size}, webrtc`,
    unit: 'messages/s',
    value: webrtc,
    baseline: { name: `${LANE_NAMES.raw}, same processes`, value: raw },
    goal: 'webrtc ≥ 60% of raw node-datachannel',
    met: webrtc >= 0.6 * raw,
    mbPerSecond: Math.round((webrtc * rounds.webrtc[0]!.frameBytes) / 1e4) / 100,
    ...detail('webrtc'),
    raw: detail('raw'),
    handshakeMs: Math.round(pair.handshakeMs),
  })
  report({
    scenario: SCENARIO,
    name: `send ${size}, ws-relay (${driver})`,
    unit: 'messages/s',
    value: relay,
    baseline: { name: `${LANE_NAMES.webrtc}, same run`, value: webrtc },
    driver,
    ...detail('relay'),
  })
}

/** CPU ms per message of each process over the rounds (sealing is done before the meter starts). */
function cpuPerMessage(rounds: Round[], perRound: number, p2p: boolean): Record<string, number> {
  const total = mergeCounts(rounds.map((r) => r.cpu))
  if (p2p) delete total['coordinator'] // idle: nothing of a P2P burst goes through it
  return perDm(total, perRound * rounds.length)
}

// ── 2. latency ───────────────────────────────────────────────────────────────

/**
 * Send → arrival of each paced message, ms, per lane: `count` per lane, the lanes taken in turn message by
 * message on one schedule (so a busy moment of the machine hits them alike).
 */
async function pacedRound(
  pair: Pair,
  count: number,
  size: DmSize,
): Promise<{ samples: Record<Lane, number[]>; maxLagMs: number }> {
  for (const lane of LANES) await pair.sender.run('prepare', { lane, count, size })
  await pair.receiver.run('arm', { lanes: LANES, count, arrivals: true })
  const [sent, got] = await Promise.all([
    pair.sender.run<PacedResult>('paced', { lanes: LANES, perSecond: PACED_RATE }),
    pair.receiver.run<ReceivedByLane>('received', 120_000),
  ])
  const samples = { webrtc: [], raw: [], relay: [] } as Record<Lane, number[]>
  for (const lane of LANES) {
    const out = sent.sent[lane]!
    const sentAt = new Map(out.ids.map((id, i) => [id, out.sentAt[i]!]))
    const arrivals = got[lane]!.arrivals!
    samples[lane] = arrivals.ids.map((id, i) => {
      const at = sentAt.get(id)
      if (at === undefined) throw new Error(`${lane}: a message that was never sent arrived`)
      return arrivals.at[i]! - at
    })
  }
  return { samples, maxLagMs: sent.maxLagMs }
}

async function latencyFigure(pair: Pair, driver: Driver, size: DmSize, quick: boolean): Promise<void> {
  // A few uncounted messages first: the throughput bursts before may still hold the machine.
  await pacedRound(pair, 20, size)
  const { samples, maxLagMs } = await pacedRound(pair, pacedCount(quick), size)
  const stats = (lane: Lane): Percentiles => percentiles(samples[lane])
  const [webrtc, relay, raw] = [stats('webrtc'), stats('relay'), stats('raw')]
  report({
    scenario: SCENARIO,
    name: `latency ${size}, webrtc p50`,
    unit: 'ms',
    value: webrtc.p50,
    baseline: { name: `ws-relay p50 (${driver})`, value: relay.p50 },
    goal: "webrtc p50 and p99 below ws-relay's",
    met: webrtc.p50 < relay.p50 && webrtc.p99 < relay.p99,
    measures: "send() → the receiver's message event, one way, on the shared wall clock",
    perSecond: PACED_RATE,
    lanesInTurn: LANES,
    messagesPerLane: samples.webrtc.length,
    maxScheduleLagMs: Math.round(maxLagMs * 10) / 10,
    webrtc,
    relay,
    raw,
  })
  const line = (p: Percentiles): string => `${p.p50} / ${p.p95} / ${p.p99} / ${p.max}`
  process.stderr.write(
    `    p50 / p95 / p99 / max ms: webrtc ${line(webrtc)}, ws-relay ${line(relay)}, raw ${line(raw)}\n`,
  )
}

interface Percentiles {
  p50: number
  p95: number
  p99: number
  max: number
}

/** Nearest-rank percentiles of `values`, ms with three decimals. */
function percentiles(values: number[]): Percentiles {
  const sorted = [...values].sort((x, y) => x - y)
  const at = (q: number): number => {
    const v = sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!
    return Math.round(v * 1000) / 1000
  }
  return { p50: at(0.5), p95: at(0.95), p99: at(0.99), max: at(1) }
}
