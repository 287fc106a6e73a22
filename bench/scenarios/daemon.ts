/**
 * The `daemon` scenario: sends per second through the daemon's IPC (`POST /v1/send` with an id, over
 * `daemon.sock` and over 127.0.0.1), each into the durable outbox, beside direct `Peer.send` on the same
 * session's peer in the daemon's own process, in alternating rounds of the same run (method in
 * bench/README.md). A round runs from the first send until the outbox is idle again (every row handed to
 * the coordinator), so both sides pay for their deliveries; the accept alone is printed beside it. The
 * coordinator and the daemon are each their own process; the recipient is a member that never connects,
 * so every message ends queued by the coordinator.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { initCrypto, ulidFactory } from '../../protocol/index.js'
import { DaemonClient, type DaemonAddress } from '../../peer-runtime/node/daemon/client.js'
import type { RegisteredSession } from '../../peer-runtime/node/daemon/daemon.js'
import { daemonPaths, readAdminToken } from '../../peer-runtime/node/daemon/files.js'
import { readMeshConfig } from '../../peer-runtime/node/home.js'
import { createInvite, createMesh, joinMesh } from '../../peer-runtime/node/home-membership.js'
import { median, report } from '../measure.js'
import { Children, type ChildHandle } from '../processes/child.js'
import type { AgentCollectResult, AgentSendResult } from '../processes/daemon-agent.js'
import type { BurstResult } from '../processes/dm-peer.js'
import { seedFor, startMesh, type BenchMesh } from '../processes/mesh.js'
import type { RawRelayReady } from '../processes/raw-relay.js'
import type { DaemonProcessReady } from './daemon-process.js'

const SCENARIO = 'daemon'
/** The coordinator's admin token in bench processes (bench/processes/mesh.ts). */
const BENCH_ADMIN_TOKEN = 'bench-admin-token'
const TEXT = 'x'.repeat(1024 - 12) // a ~1 KiB payload `{text}` once encoded
const nextId = ulidFactory()

interface Variant {
  name: string
  via: 'socket' | 'tcp'
  window: number
}

const VARIANTS: Variant[] = [
  { name: 'IPC send over daemon.sock, 16 in flight', via: 'socket', window: 16 },
  { name: 'IPC send over 127.0.0.1, 16 in flight', via: 'tcp', window: 16 },
  { name: 'IPC send over daemon.sock, 1 in flight', via: 'socket', window: 1 },
]

export async function daemonScenario(opts: { quick: boolean }): Promise<void> {
  await initCrypto()
  const count = opts.quick ? 200 : 2000
  const rounds = opts.quick ? 1 : 3
  const children = new Children()
  const root = await mkdtemp(join(tmpdir(), 'agentmesh-bench-daemon-'))
  const clients: DaemonClient[] = []
  const m = await startMesh(children, { driver: 'pglite' })
  try {
    const home = join(root, 'daemon-home')
    await createMesh({
      home,
      mesh: 'bench-daemon',
      coordinatorUrl: m.url,
      adminToken: BENCH_ADMIN_TOKEN,
      displayName: 'daemon',
    })
    const { token: invite } = await createInvite({
      home,
      mesh: 'bench-daemon',
      expiresAt: Date.now() + 3_600_000,
    })
    const away = join(root, 'recipient-home')
    await joinMesh({ home: away, token: invite, displayName: 'recipient' })
    const to = (await readMeshConfig(away, 'bench-daemon')).memberPk

    // AGENTMESH_BENCH_CPU_PROF=<dir>: the daemon process writes a V8 CPU profile there when it stops.
    const profDir = process.env['AGENTMESH_BENCH_CPU_PROF']
    const daemon = await children.start<DaemonProcessReady>('daemon', '../scenarios/daemon-process', {
      env: { AGENTMESH_BENCH_DAEMON_HOME: home },
      ...(profDir !== undefined && { nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${profDir}`] }),
    })
    const adminToken = await readAdminToken(daemonPaths(home).token)
    const admin = new DaemonClient({ socketPath: daemon.ready.socket }, adminToken)
    clients.push(admin)
    const session = await admin.call<RegisteredSession>('POST', '/v1/sessions', { sessionId: 'bench' })
    await daemon.run('connected', { sessionId: 'bench' })
    const client = (address: DaemonAddress): DaemonClient => {
      const c = new DaemonClient(address, session.token)
      clients.push(c)
      return c
    }
    const socket = client({ socketPath: daemon.ready.socket })
    const tcp = client({ port: daemon.ready.port })

    type Timing = { acceptMs: number; idleMs: number }
    const ipcRound = async (c: DaemonClient, n: number, window: number): Promise<Timing> => {
      let next = 0
      const start = performance.now()
      const worker = async (): Promise<void> => {
        while (next < n) {
          next++
          const res = await c.request('POST', '/v1/send', { body: { to, id: nextId(), text: TEXT } })
          if (res.status !== 202)
            throw new Error(`POST /v1/send answered ${res.status}: ${JSON.stringify(res.body)}`)
        }
      }
      await Promise.all(Array.from({ length: window }, worker))
      const acceptMs = performance.now() - start
      await settle()
      return { acceptMs, idleMs: performance.now() - start }
    }
    const directRound = (n: number, window: number): Promise<Timing> =>
      daemon.run<Timing>('direct', { sessionId: 'bench', to, count: n, window, text: TEXT })
    const settle = (): Promise<unknown> => daemon.run('settle', { sessionId: 'bench' })

    // Warm-up, not counted: both paths, then an idle outbox.
    await ipcRound(socket, Math.min(300, count), 16)
    await directRound(Math.min(300, count), 16)

    // AGENTMESH_BENCH_DAEMON_PROF=<dir>: a CPU profile of the daemon process over one IPC round and
    // one direct round, each in its own file (ipc.cpuprofile, direct.cpuprofile).
    const splitProf = process.env['AGENTMESH_BENCH_DAEMON_PROF']
    if (splitProf !== undefined) {
      await daemon.run('profileStart')
      await ipcRound(socket, count, 16)
      await daemon.run('profileStop', join(splitProf, 'ipc.cpuprofile'))
      await daemon.run('profileStart')
      await directRound(count, 16)
      await daemon.run('profileStop', join(splitProf, 'direct.cpuprofile'))
    }

    const rate = (ms: number): number => (count * 1000) / ms
    for (const v of VARIANTS) {
      const ours: Timing[] = []
      const base: Timing[] = []
      const c = v.via === 'socket' ? socket : tcp
      for (let r = 0; r < rounds; r++) {
        // Ours first in even rounds, the baseline first in odd ones; each starts on an idle outbox.
        const order = r % 2 === 0 ? ['ipc', 'direct'] : ['direct', 'ipc']
        for (const side of order) {
          if (side === 'ipc') ours.push(await ipcRound(c, count, v.window))
          else base.push(await directRound(count, v.window))
        }
      }
      const value = median(ours.map((t) => rate(t.idleMs)))
      const baseline = median(base.map((t) => rate(t.idleMs)))
      report({
        scenario: SCENARIO,
        name: v.name,
        unit: 'sends/s',
        value,
        baseline: { name: `Peer.send in the daemon process, ${v.window} in flight`, value: baseline },
        // The accept alone (first send → last 202 / last resolve), which leaves deliveries behind.
        acceptRate: Math.round(median(ours.map((t) => rate(t.acceptMs)))),
        baselineAcceptRate: Math.round(median(base.map((t) => rate(t.acceptMs)))),
        messages: count,
        rounds,
        payloadBytes: 1024,
        goal: 'IPC ≥ 50% of direct Peer.send',
        met: value >= 0.5 * baseline,
      })
    }
    await daemon.stop()
    await e2eFigure(children, m, root, opts.quick)
  } finally {
    for (const c of clients) c.close()
    await children.stopAll()
    await m.dispose()
    await rm(root, { recursive: true, force: true })
  }
}

/**
 * Durable end-to-end DMs between two daemons on one coordinator: bob's agent sends through his
 * daemon's IPC (`POST /v1/send`, 64 in flight) to alice's session, whose agent follows her daemon's
 * `GET /v1/events`; each daemon, each agent and the coordinator is its own process. Rate = N ÷ (first
 * send → last arrival at alice's agent); latency is send → arrival per DM. Baseline, alternating rounds
 * of the same run: the relay figure's raw `ws` relay between two lean processes (dm-peer.ts), the same
 * window and ~1 KiB sealed DMs, first send → last ack.
 */
async function e2eFigure(children: Children, m: BenchMesh, root: string, quick: boolean): Promise<void> {
  const count = quick ? 300 : 3000
  const rounds = quick ? 1 : 3
  const window = 64
  const started: ChildHandle[] = []
  try {
    const alice = join(root, 'e2e-alice')
    const bob = join(root, 'e2e-bob')
    await createMesh({
      home: alice,
      mesh: 'bench-e2e',
      coordinatorUrl: m.url,
      adminToken: BENCH_ADMIN_TOKEN,
      displayName: 'alice',
    })
    const { token: invite } = await createInvite({
      home: alice,
      mesh: 'bench-e2e',
      expiresAt: Date.now() + 3_600_000,
    })
    await joinMesh({ home: bob, token: invite, displayName: 'bob' })
    const session = async (home: string, name: string) => {
      const d = await children.start<DaemonProcessReady>(`daemon ${name}`, '../scenarios/daemon-process', {
        env: { AGENTMESH_BENCH_DAEMON_HOME: home },
      })
      started.push(d)
      const admin = new DaemonClient(
        { socketPath: d.ready.socket },
        await readAdminToken(daemonPaths(home).token),
      )
      try {
        const s = await admin.call<RegisteredSession>('POST', '/v1/sessions', { sessionId: name })
        await d.run('connected', { sessionId: name })
        return { daemon: d, session: s, address: { socketPath: d.ready.socket } }
      } finally {
        admin.close()
      }
    }
    const a = await session(alice, 'inbox')
    const b = await session(bob, 'sender')
    const reader = await children.start('agent alice', 'daemon-agent')
    const writer = await children.start('agent bob', 'daemon-agent')
    started.push(reader, writer)
    await reader.run('follow', { address: a.address, token: a.session.token })

    // The raw baseline's processes (relay.ts's online figure): two members' lean sockets and the raw relay.
    const [rx, tx] = await m.join(2)
    const relay = await children.start<RawRelayReady>('raw relay', 'raw-relay')
    const receiver = await children.start('raw receiver', 'dm-peer')
    const sender = await children.start('raw sender', 'dm-peer')
    started.push(relay, receiver, sender)
    await receiver.run('receiver', {
      wsUrl: m.wsUrl,
      mesh: m.mesh,
      seed: seedFor(rx!),
      rawUrl: relay.ready.url,
    })
    await sender.run('senders', {
      wsUrl: m.wsUrl,
      mesh: m.mesh,
      seeds: [seedFor(tx!)],
      rawUrl: relay.ready.url,
    })

    let tag = 0
    const ours = async (n: number) => {
      const burst = `e2e-${tag++}`
      const sent = await writer.run<AgentSendResult>(
        'send',
        {
          address: b.address,
          token: b.session.token,
          to: a.session.sessionPk,
          count: n,
          window,
          bytes: 1024,
          burst,
        },
        600_000,
      )
      const got = await reader.run<AgentCollectResult>(
        'collect',
        { burst, count: n, timeoutMs: 60_000 },
        120_000,
      )
      const ms = got.lastArrivalAt - sent.firstSendAt
      return { n, sent, got, rate: (got.received * 1000) / ms }
    }
    const raw = (n: number): Promise<BurstResult> =>
      sender.run<BurstResult>('burst', {
        via: 'raw',
        recipients: [rx!.publicKey],
        perConnection: n,
        window,
        size: '1KiB',
      })

    await ours(Math.min(200, count))
    await raw(Math.min(2000, count))
    const mine: Awaited<ReturnType<typeof ours>>[] = []
    const base: BurstResult[] = []
    for (let r = 0; r < rounds; r++) {
      if (r % 2 === 0) {
        mine.push(await ours(count))
        base.push(await raw(count))
      } else {
        base.push(await raw(count))
        mine.push(await ours(count))
      }
    }
    const value = median(mine.map((x) => x.rate))
    const latencies = mine.flatMap((x) => x.got.latenciesMs).sort((p, q) => p - q)
    const received = mine.reduce((t, x) => t + x.got.received, 0)
    const sentTotal = mine.reduce((t, x) => t + x.n, 0)
    const delivered = (100 * received) / sentTotal
    report({
      scenario: SCENARIO,
      name: 'durable DMs, daemon to daemon',
      unit: 'DMs/s',
      value,
      baseline: {
        name: `raw ws relay, two lean processes, ${window} in flight`,
        value: median(base.map((x) => x.perSecond)),
      },
      deliveredPct: Math.round(delivered * 100) / 100,
      duplicates: mine.reduce((t, x) => t + x.got.duplicates, 0),
      p50Ms: round1(pick(latencies, 0.5)),
      p99Ms: round1(pick(latencies, 0.99)),
      maxMs: round1(latencies.at(-1) ?? 0),
      acceptRate: Math.round(
        median(mine.map((x) => (x.n * 1000) / (x.sent.lastAcceptAt - x.sent.firstSendAt))),
      ),
      statuses: mine.reduce<Record<string, number>>((t, x) => {
        for (const [k, v] of Object.entries(x.sent.statuses)) t[k] = (t[k] ?? 0) + v
        return t
      }, {}),
      messages: count,
      rounds,
      window,
      payloadBytes: 1024,
      limits: 'coordinator rate limits and queue quotas lifted (bench LOAD_LIMITS)',
      goal: '≥ 5,000 DMs/s, 100% delivered',
      met: value >= 5000 && received === sentTotal,
    })
  } finally {
    await Promise.all(started.map((c) => c.stop()))
  }
}

/** The value at quantile `q` of sorted `values`, by nearest rank. */
function pick(values: number[], q: number): number {
  if (values.length === 0) return 0
  return values[Math.min(values.length - 1, Math.max(0, Math.ceil(q * values.length) - 1))]!
}

function round1(x: number): number {
  return Math.round(x * 10) / 10
}
