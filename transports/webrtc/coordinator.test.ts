import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { eventually } from '../../test/support/eventually.js'
import { startWorld, type World } from '../../test/support/coordinator-world.js'
import { MeshClient } from '../../test/support/mesh-client.js'
import { ListedSessions, meshClientSignaling } from '../../test/support/mesh-client-signaling.js'
import {
  createIdentity,
  isMeshError,
  toHex,
  type Capabilities,
  type Identity,
  type MeshError,
} from '../../protocol/index.js'
import { session, type AttestedKey } from '../../test/support/mesh-fixture.js'
import { makeTestFrame, transportCompliance, type ComplianceFixture } from '../compliance.js'
import type { TransportSession } from '../types.js'
import type { WebrtcTransport, WebrtcTransportInit } from './index.js'
import { nodeWebrtcStats, nodeWebrtcTransport } from './node.js'
import { RemoteTransport } from './test/remote-transport.js'

const P2P: Capabilities = { p2p: true, transports: ['webrtc', 'ws'] }
const KIB = 1024

/** One end: a session connected to the coordinator, and a WebRTC transport signaling through it. */
interface End {
  client: MeshClient
  listed: ListedSessions
  transport: WebrtcTransport
  identity: Identity
}

async function end(
  world: World,
  s: AttestedKey<'session'>,
  extra: Partial<WebrtcTransportInit> = {},
): Promise<End> {
  const client = await world.connectSession(s, { capabilities: P2P })
  const listed = new ListedSessions(client)
  const transport = nodeWebrtcTransport({
    identity: s.identity,
    mesh: world.mesh,
    signaling: meshClientSignaling(client),
    vouch: listed.vouch,
    ...extra,
  })
  return { client, listed, transport, identity: s.identity }
}

/** Two members' sessions of `world`'s mesh, each vouching for the other through `list_peers`. */
async function pair(world: World): Promise<[End, End]> {
  const a = await end(world, world.session(await world.member('a')))
  const b = await end(world, world.session(await world.member('b')))
  await Promise.all([a.listed.refresh(), b.listed.refresh()])
  return [a, b]
}

async function closeEnds(...ends: End[]): Promise<void> {
  await Promise.all(ends.map((e) => e.transport.close()))
  await Promise.all(ends.map((e) => e.client.close()))
  await eventually(() => ends.every((e) => e.transport.handles === 0), { what: 'handles released' })
  await eventually(() => nodeWebrtcStats().openConnections === 0 && !nodeWebrtcStats().cleanupPending, {
    what: 'node-datachannel cleanup',
  })
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => undefined,
    (err: unknown) => err,
  )
}

/** The next `count` frames of `session`. */
function receive(session: TransportSession, count: number, signal: AbortSignal): Promise<Uint8Array[]> {
  const frames: Uint8Array[] = []
  return new Promise((resolve, reject) => {
    const done = (): void => {
      session.off('message', onMessage)
      signal.removeEventListener('abort', onAbort)
    }
    const onMessage = (frame: Uint8Array): void => {
      if (frames.push(frame) < count) return
      done()
      resolve(frames)
    }
    const onAbort = (): void => {
      done()
      reject(new Error(`timed out after ${frames.length} of ${count} frames`))
    }
    session.on('message', onMessage)
    signal.addEventListener('abort', onAbort, { once: true })
  })
}

describe('webrtc negotiated through a real coordinator, in one process', () => {
  let world: World
  beforeAll(async () => {
    world = await startWorld('pglite')
  })
  afterAll(async () => {
    await world?.close()
  })

  it('connects two node-datachannel peers and carries frames both ways', async () => {
    const [a, b] = await pair(world)
    try {
      const accepted = new Promise<TransportSession>((resolve) => b.transport.onSession(resolve))
      const sa = await a.transport.open(
        { mesh: world.mesh, pk: b.identity.publicKey },
        { signal: AbortSignal.timeout(10_000) },
      )
      const sb = await accepted
      expect(toHex(sb.peer.pk)).toBe(toHex(a.identity.publicKey))
      const signal = AbortSignal.timeout(10_000)
      const toB = receive(sb, 1, signal)
      sa.send(makeTestFrame(64 * KIB, 1))
      expect((await toB)[0]).toEqual(makeTestFrame(64 * KIB, 1))
      const toA = receive(sa, 1, signal)
      sb.send(makeTestFrame(1, 2))
      expect((await toA)[0]).toEqual(makeTestFrame(1, 2))
      await sa.close()
    } finally {
      await closeEnds(a, b)
    }
  })

  it('refuses to signal a peer of another mesh: PEER_UNREACHABLE, never connected', async () => {
    const [a] = await pair(world)
    const otherOwner = createIdentity('member')
    await world.createMesh('other-mesh', otherOwner)
    const outsider = session(otherOwner, 'other-mesh', { now: world.clock.now() })
    const far = await world.connect({
      identity: outsider.identity,
      mesh: 'other-mesh',
      role: 'session',
      attestation: outsider.attestation,
      sessionId: outsider.sessionId,
      capabilities: P2P,
    })
    const farTransport = nodeWebrtcTransport({
      identity: outsider.identity,
      mesh: 'other-mesh',
      signaling: meshClientSignaling(far),
      vouch: () => true,
    })
    const offers: unknown[] = []
    far.on('frame', (f) => f.t.startsWith('p2p_') && offers.push(f))
    try {
      const err = await rejection(
        a.transport.open(
          { mesh: world.mesh, pk: outsider.identity.publicKey },
          { signal: AbortSignal.timeout(10_000) },
        ),
      )
      expect(isMeshError(err, 'MESH_ERR_PEER_UNREACHABLE'), String(err)).toBe(true)
      expect((err as MeshError).details).toMatchObject({ to: toHex(outsider.identity.publicKey) })
      await far.request({ t: 'list_peers' }) // a round trip: anything relayed to `far` has arrived
      expect(offers).toEqual([])
      expect(farTransport.activeSessions).toBe(0)
      expect(a.transport.activeSessions).toBe(0)
    } finally {
      await farTransport.close()
      await far.close()
      await closeEnds(a)
    }
  })

  it("refuses an unauthenticated socket's p2p_offer with HELLO_REQUIRED; it never reaches the peer", async () => {
    const [, b] = await pair(world)
    const anon = await MeshClient.open(world.wsUrl)
    const heard: string[] = []
    b.client.on('frame', (f) => f.t.startsWith('p2p_') && heard.push(f.t))
    try {
      anon.send({
        t: 'p2p_offer',
        sigId: 'anon-1',
        to: b.identity.publicKey,
        sdp: 'v=0\r\n',
        signed: new Uint8Array(8),
        sig: new Uint8Array(64),
      })
      const error = await anon.waitFor('error')
      expect(error.code).toBe('MESH_ERR_HELLO_REQUIRED')
      await b.client.request({ t: 'list_peers' })
      expect(heard).toEqual([])
      expect(b.transport.activeSessions).toBe(0)
    } finally {
      await anon.close()
      await closeEnds(b)
    }
  })
})

describe('webrtc through a real coordinator: the compliance suite', () => {
  let w: World
  beforeAll(async () => {
    w = await startWorld('pglite')
  })
  afterAll(async () => {
    await w?.close()
  })

  const setup = async (): Promise<ComplianceFixture> => {
    const [a, b] = await pair(w)
    return {
      a: { transport: a.transport, peer: { mesh: w.mesh, pk: a.identity.publicKey } },
      b: { transport: b.transport, peer: { mesh: w.mesh, pk: b.identity.publicKey } },
      teardown: () => closeEnds(a, b),
      handles: () => a.transport.handles + b.transport.handles,
    }
  }
  transportCompliance('webrtc over the coordinator (node-datachannel)', setup, { runner: { describe, it } })
})

describe('webrtc through a real coordinator: the compliance suite, the accepting side in another process', () => {
  let w: World
  beforeAll(async () => {
    w = await startWorld('pglite')
  })
  afterAll(async () => {
    await w?.close()
  })

  const setup = async (): Promise<ComplianceFixture> => {
    const a = await end(w, w.session(await w.member('here')))
    const s = w.session(await w.member('there'))
    const b = await RemoteTransport.start({
      wsUrl: w.wsUrl,
      mesh: w.mesh,
      identity: s.identity,
      attestation: s.attestation,
      sessionId: s.sessionId,
    })
    await a.listed.refresh()
    return {
      a: { transport: a.transport, peer: { mesh: w.mesh, pk: a.identity.publicKey } },
      b: { transport: b, peer: { mesh: w.mesh, pk: b.pk } },
      teardown: async () => {
        await closeEnds(a)
        // Once its sessions closed, the other process lets go of everything and ends by itself, quickly.
        const closedAt = Date.now()
        await b.close()
        expect(b.handles).toBe(0)
        expect(await b.finish()).toBe(0)
        expect(Date.now() - closedAt).toBeLessThan(2_000)
        // The coordinator (in this process) has seen both sockets go.
        await eventually(async () => (await w.leased(b.pk)) && (await w.leased(a.identity.publicKey)), {
          what: 'the coordinator saw both sessions leave',
        })
      },
      handles: () => a.transport.handles + b.handles,
    }
  }
  transportCompliance('webrtc over the coordinator, two processes', setup, { runner: { describe, it } })
})
