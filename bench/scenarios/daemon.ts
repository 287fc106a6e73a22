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
import { Children } from '../processes/child.js'
import { startMesh } from '../processes/mesh.js'
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
  } finally {
    for (const c of clients) c.close()
    await children.stopAll()
    await m.dispose()
    await rm(root, { recursive: true, force: true })
  }
}
