/**
 * A coordinator on a test store, listening on 127.0.0.1 port 0, with a mesh, its owner, and helpers to
 * add members, connect them and seal DMs between them: the ground every black-box coordinator test
 * stands on. `worldsPerTest` starts worlds for a `describe` block and closes them after each test.
 */
import { afterEach } from 'vitest'
import { buildCoordinator, type Coordinator, type CoordinatorOptions } from '../../coordinator/index.js'
import { openTestStore, type TestStore } from '../../coordinator/store/testing.js'
import type { StoreDriver } from '../../coordinator/store/types.js'
import {
  createIdentity,
  initCrypto,
  ManualClock,
  sealDirect,
  ulidFactory,
  type Envelope,
  type Identity,
} from '../../protocol/index.js'
import { MeshClient, type ConnectOptions, type HelloOptions, type OpenOptions } from './mesh-client.js'
import { httpMsgpack, invite, joinRecord, newOwner, session, type AttestedKey } from './mesh-fixture.js'

export interface WorldOptions {
  clock?: ManualClock
  limits?: CoordinatorOptions['limits']
  mesh?: string
  /** Reuse a store (a restart test); the world then does not close it. */
  store?: TestStore
  coordinatorIdentity?: Identity
  /** The mesh owner (a restart test passes the first world's). */
  owner?: Identity
}

export interface World {
  coordinator: Coordinator
  store: TestStore
  /** The world's clock: time moves only when a test advances it. */
  clock: ManualClock
  url: string
  wsUrl: string
  mesh: string
  owner: Identity
  coordinatorIdentity: Identity
  adminToken: string
  /** A new member joined through a signed invite. */
  member(displayName?: string): Promise<Identity>
  /** A session of `member`, attested now. */
  session(member: Identity, sessionId?: string): AttestedKey<'session'>
  /** Connects a control-plane presence of `member`. */
  connectMember(member: Identity, o?: WorldConnectOptions): Promise<MeshClient>
  /** Connects a session presence. */
  connectSession(s: AttestedKey<'session'>, o?: WorldConnectOptions): Promise<MeshClient>
  /** Connects with any hello (another mesh's, a service's), closed with the world like the others. */
  connect(o: ConnectOptions): Promise<MeshClient>
  /** Creates another mesh on this coordinator, owned by `owner`; throws unless it is created. */
  createMesh(mesh: string, owner: Identity, displayName?: string): Promise<void>
  /** A DM in this mesh sealed by `from` to `to` (a key or its public key), with a fresh clientMessageId. */
  dm(from: Identity, to: Identity | Uint8Array, payload?: unknown, clientMessageId?: string): Envelope
  /** Whether the coordinator has seen the socket of `pk` go: its presence row is leased, not connected. */
  leased(pk: Uint8Array): Promise<boolean>
  /** Closes clients, coordinator and (unless shared) the store. */
  close(): Promise<void>
}

/** Options of `connectMember` and `connectSession`: the socket's, the instance id and the capabilities. */
export type WorldConnectOptions = OpenOptions & Pick<HelloOptions, 'instanceId' | 'capabilities'>

const ADMIN_TOKEN = 'test-admin-token'
const nextId = ulidFactory()

/** The options of a second coordinator node on `world`'s store: same clock, key, owner and mesh. */
export function sameMesh(world: World): WorldOptions {
  return {
    store: world.store,
    clock: world.clock,
    coordinatorIdentity: world.coordinatorIdentity,
    owner: world.owner,
    mesh: world.mesh,
  }
}

/**
 * Registers an `afterEach` that closes every world the returned `start` made during the test, the last
 * started first (so a node sharing another's store closes before the store's owner). Call it in the body
 * of a `describe`.
 */
export function worldsPerTest(driver: StoreDriver): (o?: WorldOptions) => Promise<World> {
  const open: World[] = []
  afterEach(async () => {
    for (const w of open.splice(0).reverse()) await w.close()
  })
  return async (o) => {
    const world = await startWorld(driver, o)
    open.push(world)
    return world
  }
}

async function createMesh(url: string, mesh: string, owner: Identity, displayName?: string): Promise<void> {
  const created = await httpMsgpack(`${url}/v1/meshes`, {
    method: 'POST',
    token: ADMIN_TOKEN,
    body: { mesh, ownerPk: owner.publicKey, ...(displayName !== undefined && { displayName }) },
  })
  if (created.status !== 201) throw new Error(`mesh creation failed: ${JSON.stringify(created.body)}`)
}

export async function startWorld(driver: StoreDriver, o: WorldOptions = {}): Promise<World> {
  await initCrypto()
  const clock = o.clock ?? new ManualClock(Date.now())
  const store = o.store ?? (await openTestStore(driver))
  const coordinatorIdentity = o.coordinatorIdentity ?? createIdentity('coordinator')
  const coordinator = await buildCoordinator({
    store,
    identity: coordinatorIdentity,
    adminToken: ADMIN_TOKEN,
    clock,
    ...(o.limits !== undefined && { limits: o.limits }),
  })
  const url = await coordinator.listen()
  const wsUrl = `${url.replace(/^http/, 'ws')}/ws`
  const mesh = o.mesh ?? 'test-mesh'
  const owner = o.owner ?? newOwner()
  if (o.store === undefined) await createMesh(url, mesh, owner, 'owner')
  const clients: MeshClient[] = []
  const world: World = {
    coordinator,
    store,
    clock,
    url,
    wsUrl,
    mesh,
    owner,
    coordinatorIdentity,
    adminToken: ADMIN_TOKEN,
    async member(displayName) {
      const newcomer = createIdentity('member')
      const inv = invite({
        signer: owner,
        mesh,
        coordinatorUrl: url,
        coordinatorPk: coordinatorIdentity.publicKey,
        ownerPk: owner.publicKey,
        expiresAt: clock.now() + 3_600_000,
      })
      const res = await httpMsgpack(`${url}/v1/meshes/${mesh}/join`, {
        method: 'POST',
        body: {
          invite: inv,
          join: joinRecord(newcomer, inv),
          ...(displayName !== undefined && { displayName }),
        },
      })
      if (res.status !== 200) throw new Error(`join failed: ${JSON.stringify(res.body)}`)
      return newcomer
    },
    session(member, sessionId) {
      return session(member, mesh, { now: clock.now(), ...(sessionId !== undefined && { sessionId }) })
    },
    connectMember(member, opts = {}) {
      return world.connect({ ...opts, identity: member, mesh, role: 'control-plane' })
    },
    connectSession(s, opts = {}) {
      return world.connect({
        ...opts,
        identity: s.identity,
        mesh,
        role: 'session',
        attestation: s.attestation,
        sessionId: s.sessionId,
      })
    },
    async connect(opts) {
      const client = await MeshClient.connect(wsUrl, opts)
      clients.push(client)
      return client
    },
    createMesh(other, otherOwner, displayName) {
      return createMesh(url, other, otherOwner, displayName)
    },
    dm(from, to, payload = 'hi', clientMessageId = nextId()) {
      const target = to instanceof Uint8Array ? to : to.publicKey
      return sealDirect({ mesh, channel: 'dm', from, to: target, clientMessageId, payload })
    },
    async leased(pk) {
      const rows = await store.query<{ connected: boolean }>('select connected from presence where pk = $1', [
        pk,
      ])
      return rows[0]?.connected === false
    },
    async close() {
      await Promise.all(clients.map((c) => c.terminate().catch(() => undefined)))
      await coordinator.close()
      if (o.store === undefined) await store.close()
    },
  }
  return world
}
