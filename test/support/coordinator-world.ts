/**
 * A coordinator on a test store, listening on 127.0.0.1 port 0, with a mesh, its owner, and helpers to
 * add members and connect them: the ground every black-box coordinator test stands on.
 */
import { buildCoordinator, type Coordinator, type CoordinatorOptions } from '../../coordinator/index.js'
import { openTestStore, type TestStore } from '../../coordinator/store/testing.js'
import type { StoreDriver } from '../../coordinator/store/types.js'
import { createIdentity, initCrypto, ManualClock, type Identity } from '../../protocol/index.js'
import { MeshClient, type HelloOptions, type OpenOptions } from './mesh-client.js'
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
  /** Closes clients, coordinator and (unless shared) the store. */
  close(): Promise<void>
}

/** Options of `connectMember` and `connectSession`: the socket's, the instance id and the capabilities. */
export type WorldConnectOptions = OpenOptions & Pick<HelloOptions, 'instanceId' | 'capabilities'>

const ADMIN_TOKEN = 'test-admin-token'

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
  if (o.store === undefined) {
    const created = await httpMsgpack(`${url}/v1/meshes`, {
      method: 'POST',
      token: ADMIN_TOKEN,
      body: { mesh, ownerPk: owner.publicKey, displayName: 'owner' },
    })
    if (created.status !== 201) throw new Error(`mesh creation failed: ${JSON.stringify(created.body)}`)
  }
  const clients: MeshClient[] = []
  const track = (c: MeshClient): MeshClient => {
    clients.push(c)
    return c
  }
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
    async connectMember(member, opts = {}) {
      return track(
        await MeshClient.connect(wsUrl, { ...opts, identity: member, mesh, role: 'control-plane' }),
      )
    },
    async connectSession(s, opts = {}) {
      return track(
        await MeshClient.connect(wsUrl, {
          ...opts,
          identity: s.identity,
          mesh,
          role: 'session',
          attestation: s.attestation,
          sessionId: s.sessionId,
        }),
      )
    },
    async close() {
      await Promise.all(clients.map((c) => c.terminate().catch(() => undefined)))
      await coordinator.close()
      if (o.store === undefined) await store.close()
    },
  }
  return world
}
