import { join } from 'node:path'
import { afterEach, beforeAll, describe, expect, it } from 'vitest'
import { openTestStore, type TestStore } from '../../coordinator/store/testing.js'
import { encode } from '../../protocol/codec.js'
import { createIdentity, initCrypto, ManualClock, systemClock, type Identity } from '../../protocol/index.js'
import { worldsPerTest, type World } from '../../test/support/coordinator-world.js'
import { FrameTap } from '../../bench/processes/frame-tap.js'
import { rosterRecord } from '../../test/support/mesh-fixture.js'
import { MeshLog, writeMeshLog } from '../../bench/processes/mesh-log.js'
import { closePeers, tempDir } from '../../test/support/peer-world.js'
import { MeshView } from '../mesh-view.js'
import { MeshViewSaver } from '../mesh-view-saver.js'
import { sqliteStore } from '../node/sqlite-store.js'
import { Peer } from '../peer.js'
import { memoryStore } from '../store/memory.js'
import type { RuntimeStore } from '../store/types.js'

/** The runtime's store file, opened again for each start (a restart of the process would). */
interface StoreFile {
  path: string
  /** Calls of `saveMeshView` over every opening. */
  saves: number
  open(): RuntimeStore
}

function storeFile(): StoreFile {
  const file: StoreFile = {
    path: join(tempDir(), 'runtime.db'),
    saves: 0,
    open() {
      const store = sqliteStore({ path: file.path })
      const save = store.saveMeshView.bind(store)
      store.saveMeshView = (view) => {
        file.saves++
        return save(view)
      }
      return store
    },
  }
  return file
}

describe('restart: the runtime resumes from its saved mesh view', () => {
  const start = worldsPerTest('pglite')
  const running: { peer: Peer; store: RuntimeStore }[] = []
  const coordinatorStores: TestStore[] = []
  beforeAll(() => initCrypto())
  afterEach(async () => {
    await stopAll()
    for (const s of coordinatorStores.splice(0)) await s.close()
    await closePeers()
  })

  async function stopAll(): Promise<void> {
    for (const { peer, store } of running.splice(0).reverse()) {
      await peer.close()
      await store.close()
    }
  }

  /** Starts `identity`'s control-plane peer on `world` with a fresh opening of `file`; waits until caught up. */
  async function boot(
    world: World,
    identity: Identity,
    file: StoreFile,
    o: { viewSaveDelayMs?: number } = {},
  ): Promise<{ peer: Peer; tap: FrameTap }> {
    const tap = new FrameTap()
    const store = file.open()
    const peer = new Peer({
      url: world.wsUrl,
      mesh: world.mesh,
      ownerPk: world.owner.publicKey,
      coordinatorPk: world.coordinatorIdentity.publicKey,
      identity,
      role: 'control-plane',
      store,
      socket: tap.socket,
      clock: systemClock,
      connection: { backoffBaseMs: 50, backoffCapMs: 500 },
      ...o,
    })
    running.push({ peer, store })
    await peer.start()
    await peer.whenConnected(AbortSignal.timeout(10_000))
    return { peer, tap }
  }

  it('fetches no event when nothing changed between two starts, and only the new ones after changes', async () => {
    const world = await start()
    const alice = await world.member('alice')
    await world.member('bob')
    const file = storeFile()

    const first = await boot(world, alice, file)
    expect(first.peer.stateVersion).toBe(3)
    expect(first.tap.eventsReceived).toBe(3) // genesis and two joins: a cold start replays the log
    await stopAll()

    const second = await boot(world, alice, file)
    expect(second.peer.stateVersion).toBe(3)
    expect(second.tap.meshEventRequests).toBe(0)
    expect(second.tap.eventsReceived).toBe(0)
    await stopAll()

    const carol = await world.member('carol')
    await world.member('dave')
    const third = await boot(world, alice, file)
    expect(third.peer.stateVersion).toBe(5)
    expect(third.tap.meshEventRequests).toBe(1)
    expect(third.tap.eventsReceived).toBe(2)
    // The restored roster vouches for members as the replayed one did: carol is sealable at once.
    await expect(third.peer.send(carol.publicKey, 'hi')).resolves.toMatchObject({ state: 'pending' })
  })

  it('saves once for a burst of live changes (on close here), and the next start fetches nothing', async () => {
    const world = await start()
    const alice = await world.member('alice')
    const file = storeFile()
    const first = await boot(world, alice, file, { viewSaveDelayMs: 60_000 })
    const savesAfterCatchUp = file.saves
    expect(savesAfterCatchUp).toBe(1)
    for (let i = 0; i < 8; i++) await world.member(`m${i}`)
    await expect.poll(() => first.peer.stateVersion, { timeout: 10_000 }).toBe(10)
    expect(first.tap.meshEventRequests).toBe(1) // the system pushes applied in order: no catch-up
    expect(file.saves).toBe(savesAfterCatchUp) // live changes wait for the delay (a minute here)
    await stopAll()
    expect(file.saves).toBe(savesAfterCatchUp + 1)

    const second = await boot(world, alice, file)
    expect(second.peer.stateVersion).toBe(10)
    expect(second.tap.eventsReceived).toBe(0)
  })

  it('replays the whole log when the saved view is unreadable or was made under another coordinator key', async () => {
    const world = await start()
    const alice = await world.member('alice')
    const file = storeFile()
    const seed = file.open()
    await seed.saveMeshView({ mesh: world.mesh, version: 2, snapshot: encode({ not: 'a view' }), savedAt: 0 })
    await seed.close()
    const first = await boot(world, alice, file)
    expect(first.tap.eventsReceived).toBe(2)
    await stopAll()

    // A view of the same mesh and owner, verified under another coordinator key, at a higher version.
    const other = new MeshLog({
      mesh: world.mesh,
      owner: world.owner,
      coordinator: createIdentity('coordinator'),
    })
    other.appendGroupChanges(5, [world.owner.publicKey])
    const foreign = new MeshView({
      mesh: world.mesh,
      ownerPk: world.owner.publicKey,
      coordinatorPk: other.coordinator.publicKey,
    })
    foreign.applyEvents(other.since(0))
    const reseed = file.open()
    await reseed.saveMeshView({ mesh: world.mesh, version: 6, snapshot: foreign.snapshot(), savedAt: 0 })
    await reseed.close()
    const second = await boot(world, alice, file)
    expect(second.peer.stateVersion).toBe(2)
    expect(second.tap.eventsReceived).toBe(2)
  })

  /**
   * A coordinator whose store holds `log`, pinned to the log's coordinator key and owner. With `store`,
   * the log replaces the mesh's log there, as a restore from a backup would (start it after the
   * coordinator that cached the old one closed).
   */
  async function worldOn(log: MeshLog, store?: TestStore): Promise<World> {
    if (store === undefined) {
      store = await openTestStore('pglite')
      coordinatorStores.push(store)
    } else await store.query('delete from mesh_event where mesh = $1', [log.mesh])
    await writeMeshLog(store, log)
    return start({
      store,
      coordinatorIdentity: log.coordinator,
      owner: log.owner,
      mesh: log.mesh,
    })
  }

  it('catches up a log longer than one frame holds: the coordinator pages mesh_events by size', async () => {
    const owner = createIdentity('member')
    const log = new MeshLog({ mesh: 'long-mesh', owner, coordinator: createIdentity('coordinator') })
    log.appendGroupChanges(699, [owner.publicKey])
    const world = await worldOn(log)
    const { peer, tap } = await boot(world, owner, storeFile())
    expect(peer.stateVersion).toBe(700)
    expect(tap.eventsReceived).toBe(700)
    // 700 events of ~150 bytes exceed the 72 KiB frame: two pages where 1,000 a page would be one.
    expect(tap.meshEventRequests).toBe(2)
  })

  it('a coordinator behind the saved version (restored from a backup) is followed: the view is replayed from its log', async () => {
    const owner = createIdentity('member')
    const coordinator = createIdentity('coordinator')
    const mesh = 'backup-mesh'
    const before = new MeshLog({ mesh, owner, coordinator })
    before.appendGroupChanges(10, [owner.publicKey])
    const file = storeFile()
    const worldA = await worldOn(before)
    const first = await boot(worldA, owner, file)
    expect(first.peer.stateVersion).toBe(11)
    await stopAll()
    await worldA.close()

    // The backup knew five group changes; since then it made two others, of a group only it has.
    const restored = new MeshLog({ mesh, owner, coordinator })
    restored.appendGroupChanges(5, [owner.publicKey])
    restored.append('group', { name: 'after-restore', members: [owner.publicKey] })
    restored.append('group', { name: 'after-restore', members: [owner.publicKey] })
    const worldB = await worldOn(restored, worldA.store)
    const second = await boot(worldB, owner, file)
    expect(second.peer.stateVersion).toBe(8)
    // One request to check whether its log still holds our version 11, then the full replay.
    expect(second.tap.eventsReceived).toBe(8)
    await expect(second.peer.sendGroup('@after-restore', 'hi')).resolves.toMatchObject({ state: 'pending' })
  })

  it('a saved view the newer events do not apply on (a log that forked below it) is replayed from genesis', async () => {
    const owner = createIdentity('member')
    const coordinator = createIdentity('coordinator')
    const [x, y] = [createIdentity('member'), createIdentity('member')]
    const mesh = 'fork-mesh'
    const roster = (log: MeshLog, seq: number, action: 'add' | 'remove', subject: Identity): void => {
      const role = action === 'add' ? ('member' as const) : undefined
      const record = rosterRecord({ signer: owner, mesh, seq, action, subjectPk: subject.publicKey, role })
      log.append('roster', { record })
    }
    const ours = new MeshLog({ mesh, owner, coordinator })
    roster(ours, 1, 'add', x)
    const file = storeFile()
    const worldA = await worldOn(ours)
    await boot(worldA, owner, file)
    await stopAll()
    await worldA.close()

    // The coordinator's log added y at version 2 instead, then removed it: on our view (x at seq 1) the
    // removal of y is a roster conflict.
    const theirs = new MeshLog({ mesh, owner, coordinator })
    roster(theirs, 1, 'add', y)
    roster(theirs, 2, 'remove', y)
    theirs.appendGroupChanges(2, [owner.publicKey])
    const worldB = await worldOn(theirs, worldA.store)
    const second = await boot(worldB, owner, file)
    expect(second.peer.stateVersion).toBe(5)
    expect(second.tap.eventsReceived).toBe(3 + 5)
    // x came only from the discarded view: it is no longer vouched for.
    await expect(second.peer.send(x.publicKey, 'hi')).rejects.toMatchObject({ code: 'MESH_ERR_UNKNOWN_KEY' })
  })
})

describe('MeshViewSaver', () => {
  beforeAll(() => initCrypto())

  it('writes a burst of changes once, after the delay; flush writes only when something changed', async () => {
    const clock = new ManualClock()
    const store = memoryStore()
    let saves = 0
    const save = store.saveMeshView.bind(store)
    store.saveMeshView = (v) => {
      saves++
      return save(v)
    }
    const owner = createIdentity('member')
    const log = new MeshLog({ mesh: 'saver', owner, coordinator: createIdentity('coordinator') })
    log.appendGroupChanges(1000, [owner.publicKey])
    const view = new MeshView({
      mesh: 'saver',
      ownerPk: owner.publicKey,
      coordinatorPk: log.coordinator.publicKey,
    })
    const saver = new MeshViewSaver({
      view,
      store,
      clock,
      delayMs: 1000,
      onError: (e) => {
        throw e
      },
    })
    for (const record of log.since(0)) {
      view.applyEvents([record])
      saver.changed()
    }
    await clock.advance(999)
    expect(saves).toBe(0)
    await clock.advance(1)
    await saver.flush()
    expect(saves).toBe(1)
    expect((await store.loadMeshView('saver'))?.version).toBe(1001)
    await saver.flush()
    expect(saves).toBe(1)
  })
})
