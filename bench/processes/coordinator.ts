/**
 * A bench-only coordinator process: `buildCoordinator` with the limits the scenario chose, on PGlite (in
 * `dataDir`, or in memory) or on Postgres (`databaseUrl`, in `schema`), listening on 127.0.0.1 port 0.
 * Configured by `AGENTMESH_BENCH_COORDINATOR` (JSON, `CoordinatorConfig`); prints `{"url": …}` on stdout
 * once listening and posts the same to the parent. Run by `Children.start('coordinator', 'coordinator')`,
 * or by hand under `node --import tsx` with an IPC channel.
 *
 * Every store call is timed (`timedStore`), so a scenario can tell where the coordinator waits on its
 * store without touching coordinator code: the `storeStats` job returns and resets the figures. The
 * `profileStart` / `profileStop(path)` jobs take a V8 CPU profile of a window (open it in Chrome DevTools),
 * `heapSnapshot(path)` writes a V8 heap snapshot, and `allocationsStart` / `allocationsStop(path)` sample
 * where a window's allocations come from (a `.heapprofile`).
 */
import { writeFile } from 'node:fs/promises'
import { Session } from 'node:inspector/promises'
import { writeHeapSnapshot } from 'node:v8'
import { buildCoordinator } from '../../coordinator/index.js'
import { openStore } from '../../coordinator/store/index.js'
import type { CoordinatorOptions } from '../../coordinator/options.js'
import { createIdentity, initCrypto } from '../../protocol/index.js'
import { serveJobs } from './jobs.js'
import { timedStore } from './timed-store.js'

/** What the scenario chooses. */
export interface CoordinatorConfig {
  adminToken: string
  /** Postgres; else PGlite. */
  databaseUrl?: string
  /** Postgres schema to work in (created by the caller). */
  schema?: string
  /** PGlite data directory; absent: in memory. */
  dataDir?: string
  /** Postgres pool size (the coordinator's default: 10). */
  maxConnections?: number
  limits?: CoordinatorOptions['limits']
}

/** What the process posts once listening. */
export interface CoordinatorReady {
  url: string
  wsUrl: string
  coordinatorPk: Uint8Array
  driver: 'pglite' | 'postgres'
}

const config = JSON.parse(process.env['AGENTMESH_BENCH_COORDINATOR'] ?? '{}') as CoordinatorConfig
await initCrypto()
const store = timedStore(
  await openStore({
    ...(config.databaseUrl !== undefined && { databaseUrl: config.databaseUrl }),
    ...(config.schema !== undefined && { schema: config.schema }),
    ...(config.dataDir !== undefined && { dataDir: config.dataDir }),
    ...(config.maxConnections !== undefined && { maxConnections: config.maxConnections }),
  }),
)
const identity = createIdentity('coordinator')
const coordinator = await buildCoordinator({
  store,
  ownsStore: true,
  identity,
  adminToken: config.adminToken,
  ...(config.limits !== undefined && { limits: config.limits }),
})
const url = await coordinator.listen({ port: 0, host: '127.0.0.1' })
const ready: CoordinatorReady = {
  url,
  wsUrl: `${url.replace(/^http/, 'ws')}/ws`,
  coordinatorPk: identity.publicKey,
  driver: store.driver,
}
process.stdout.write(JSON.stringify({ url, driver: store.driver, pid: process.pid }) + '\n')

// A CPU profile of just the measured window (`--cpu-prof` would also take in startup and idle time).
const inspector = new Session()
inspector.connect()

serveJobs(
  ready,
  {
    storeStats: async () => store.stats(true),
    memory: async () => process.memoryUsage(),
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
    heapSnapshot: async (path: string) => ({ path: writeHeapSnapshot(path) }),
    // Sampled allocations of a window: which functions allocate the bytes the GC then has to reclaim.
    allocationsStart: async () => {
      await inspector.post('HeapProfiler.enable')
      await inspector.post('HeapProfiler.startSampling', {
        samplingInterval: 16_384,
        includeObjectsCollectedByMajorGC: true,
        includeObjectsCollectedByMinorGC: true,
      })
      return {}
    },
    allocationsStop: async (path: string) => {
      const { profile } = await inspector.post('HeapProfiler.stopSampling')
      await writeFile(path, JSON.stringify(profile))
      return { path }
    },
  },
  () => coordinator.close(),
)
