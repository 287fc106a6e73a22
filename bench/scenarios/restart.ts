/**
 * The `restart` scenario: how long a runtime takes from opening its store to `whenConnected()` (connected,
 * mesh state caught up, peers listed) on a mesh whose log holds 100 and 100,000 events, started warm (its
 * saved mesh view: it asks only for events since) beside cold (no saved view: the full replay every start
 * did before, the same-run baseline). The log is written straight into the coordinator's store
 * (`bench/processes/mesh-log.ts`): group changes, the cheapest event a runtime accepts (one coordinator
 * signature each). Cold and warm starts alternate; each figure is the median of its rounds.
 *
 * The coordinator (embedded PGlite, in memory) and the runtime (better-sqlite3 in a temp dir) run in the
 * bench process. The coordinator replays its own log once, at the first hello; an untimed first start
 * takes that cost and leaves the saved view the warm starts use.
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { buildCoordinator } from '../../coordinator/index.js'
import { migrate } from '../../coordinator/store/migrate.js'
import { openPgliteStore } from '../../coordinator/store/pglite.js'
import { createIdentity, initCrypto, systemClock } from '../../protocol/index.js'
import { MeshView } from '../../peer-runtime/mesh-view.js'
import { sqliteStore } from '../../peer-runtime/node/sqlite-store.js'
import { Peer } from '../../peer-runtime/peer.js'
import { FrameTap } from '../processes/frame-tap.js'
import { MeshLog, writeMeshLog } from '../processes/mesh-log.js'
import { median, report } from '../measure.js'

const SCENARIO = 'restart'

/** One start: its time and what it fetched. */
interface Start {
  ms: number
  events: number
  requests: number
  version: number
}

export async function restartScenario(opts: { quick: boolean }): Promise<void> {
  await initCrypto()
  const sizes = opts.quick ? [100, 1_000] : [100, 100_000]
  const rounds = opts.quick ? 1 : 3
  const coordinatorKey = createIdentity('coordinator')
  const store = await openPgliteStore()
  const root = await mkdtemp(join(tmpdir(), 'agentmesh-bench-restart-'))
  try {
    await migrate(store, { now: 0 })
    const coordinator = await buildCoordinator({ store, identity: coordinatorKey, clock: systemClock })
    try {
      const url = await coordinator.listen()
      const wsUrl = `${url.replace(/^http/, 'ws')}/ws`
      let smallWarm: number | undefined
      for (const events of sizes) {
        // A mesh of its own per size, written before any hello makes the coordinator load it.
        const log = new MeshLog({
          mesh: `bench-restart-${events}`,
          owner: createIdentity('member'),
          coordinator: coordinatorKey,
        })
        log.appendGroupChanges(events - 1, [log.owner.publicKey])
        await writeMeshLog(store, log)
        const warm = await measure({ wsUrl, log, rounds, dir: join(root, String(events)), smallWarm })
        smallWarm ??= warm
      }
    } finally {
      await coordinator.close()
    }
  } finally {
    await store.close()
    await rm(root, { recursive: true, force: true })
  }
}

/** Prints the figures for `log`'s mesh; returns the warm restart's median. */
async function measure(o: {
  wsUrl: string
  log: MeshLog
  rounds: number
  dir: string
  smallWarm: number | undefined
}): Promise<number> {
  const { log } = o
  await mkdir(o.dir, { recursive: true })
  const start = (file: string): Promise<Start> => boot(o.wsUrl, log, join(o.dir, file))
  const first = await start('warm.db')
  check(first, log.version, 'first start')
  const cold: Start[] = []
  const warm: Start[] = []
  for (let r = 0; r < o.rounds; r++) {
    // Alternate which goes first, so drift on a shared machine hits both alike.
    if (r % 2 === 0) {
      cold.push(await start(`cold-${r}.db`))
      warm.push(await start('warm.db'))
    } else {
      warm.push(await start('warm.db'))
      cold.push(await start(`cold-${r}.db`))
    }
  }
  for (const s of cold) check(s, log.version, 'cold start')
  for (const s of warm) {
    check(s, log.version, 'warm start')
    if (s.events !== 0) throw new Error(`a warm start fetched ${s.events} events, expected none`)
  }
  const warmMs = median(warm.map((s) => s.ms))
  const coldMs = median(cold.map((s) => s.ms))
  // What keeping signed events and verifying them again at each start would cost at least.
  const t0 = performance.now()
  const view = new MeshView({
    mesh: log.mesh,
    ownerPk: log.owner.publicKey,
    coordinatorPk: log.coordinator.publicKey,
  })
  view.applyEvents(log.since(0))
  const reverify = performance.now() - t0
  const events = log.version.toLocaleString('en')
  report({
    scenario: SCENARIO,
    name: `restart, ${events} events in the log`,
    unit: 'ms',
    value: warmMs,
    baseline: { name: 'full replay (no saved view)', value: coldMs },
    events: log.version,
    eventsFetchedWarm: 0,
    eventsFetchedCold: cold[0]!.events,
    requestsCold: cold[0]!.requests,
    snapshotBytes: view.snapshot().length,
    // The ratio rounds to 0 at 100,000 events: how many times faster, said the other way round.
    timesFaster: Math.round((coldMs / warmMs) * 10) / 10,
    goal: 'warm ≤ 2× the warm restart at 100 events (independent of the log)',
    met: warmMs <= 2 * (o.smallWarm ?? warmMs),
  })
  report({
    scenario: SCENARIO,
    name: `verify ${events} saved signed events (no network)`,
    unit: 'ms',
    value: reverify,
    baseline: { name: 'full replay (no saved view)', value: coldMs },
  })
  return warmMs
}

/** Opens the runtime's store at `file`, starts a `Peer` and waits until it is connected and caught up. */
async function boot(wsUrl: string, log: MeshLog, file: string): Promise<Start> {
  const tap = new FrameTap()
  const t0 = performance.now()
  const store = sqliteStore({ path: file })
  const peer = new Peer({
    url: wsUrl,
    mesh: log.mesh,
    ownerPk: log.owner.publicKey,
    coordinatorPk: log.coordinator.publicKey,
    identity: log.owner,
    role: 'control-plane',
    store,
    socket: tap.socket,
    clock: systemClock,
  })
  try {
    await peer.start()
    await peer.whenConnected(AbortSignal.timeout(300_000))
    const ms = performance.now() - t0
    return { ms, events: tap.eventsReceived, requests: tap.meshEventRequests, version: peer.stateVersion }
  } finally {
    await peer.close()
    await store.close()
  }
}

function check(s: Start, version: number, what: string): void {
  if (s.version !== version) throw new Error(`${what} reached version ${s.version}, not ${version}`)
}
