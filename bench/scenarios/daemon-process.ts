/**
 * The daemon's bench process (forked by `daemon.ts`): a real `Daemon` on a prepared home, and a job
 * that runs the same-run baseline in the same process, direct `Peer.send` calls on the registered
 * session's peer (the same peer and the same durable outbox the IPC sends go through).
 */
import { writeFile } from 'node:fs/promises'
import { Session } from 'node:inspector/promises'
import { initCrypto } from '../../protocol/index.js'
import { startDaemon, type Daemon } from '../../peer-runtime/node/daemon/daemon.js'
import { serveJobs } from '../processes/jobs.js'

/** What the process posts once its daemon listens. */
export interface DaemonProcessReady {
  socket: string
  port: number
  pid: number
}

await initCrypto()
const home = process.env['AGENTMESH_BENCH_DAEMON_HOME']
if (home === undefined) throw new Error('AGENTMESH_BENCH_DAEMON_HOME is unset')
const daemon: Daemon = await startDaemon({ home, peer: { p2p: false } })

function sessionPeer(sessionId: string) {
  const s = daemon.sessions().find((x) => x.registration.sessionId === sessionId)
  if (s === undefined) throw new Error(`no session ${sessionId}`)
  return s.presence.peer
}

// A CPU profile of one measured window (`--cpu-prof` would take in every round, both sides, and idle time).
const inspector = new Session()
inspector.connect()

serveJobs(
  { socket: daemon.socketPath, port: daemon.port, pid: process.pid } satisfies DaemonProcessReady,
  {
    /**
     * `count` direct sends with `window` in flight; resolves with the ms until the last send resolved
     * (`acceptMs`) and until the outbox was idle again (`idleMs`: every row handed to the coordinator).
     */
    direct: async (a: { sessionId: string; to: string; count: number; window: number; text: string }) => {
      const peer = sessionPeer(a.sessionId)
      let next = 0
      const start = performance.now()
      const worker = async (): Promise<void> => {
        while (next < a.count) {
          next++
          await peer.send(a.to, { text: a.text })
        }
      }
      await Promise.all(Array.from({ length: a.window }, worker))
      const acceptMs = performance.now() - start
      await peer.settled(AbortSignal.timeout(300_000))
      return { acceptMs, idleMs: performance.now() - start }
    },
    /** Waits until the session's outbox has nothing pending or in flight (between rounds). */
    settle: async (a: { sessionId: string }) => {
      await sessionPeer(a.sessionId).settled(AbortSignal.timeout(300_000))
      return true
    },
    profileStart: async () => {
      await inspector.post('Profiler.enable')
      await inspector.post('Profiler.start')
      return {}
    },
    profileStop: async (path: string) => {
      const { profile } = await inspector.post('Profiler.stop')
      await writeFile(path, JSON.stringify(profile))
      return { path }
    },
    connected: async (a: { sessionId: string }) => {
      await sessionPeer(a.sessionId).whenConnected(AbortSignal.timeout(30_000))
      return true
    },
  },
  () => daemon.close(),
)
