import { afterEach, describe, expect, it } from 'vitest'
import { eventually } from '../../test/support/eventually.js'
import { startWorld, type World, type WorldOptions } from '../../test/support/coordinator-world.js'
import type { MeshClient } from '../../test/support/mesh-client.js'
import { meshClientLink } from '../../test/support/mesh-client-link.js'
import {
  createIdentity,
  decodeEnvelope,
  encodeEnvelope,
  ERROR_CODES,
  isMeshError,
  MAX_PAYLOAD_BYTES,
  MeshError,
  RETRY_CLASS,
  type MeshErrorCode,
  type RetryClass,
  sealDirect,
  ulidFactory,
  type Identity,
} from '../../protocol/index.js'
import { transportCompliance, type ComplianceFixture } from '../compliance.js'
import { waitFor } from '../emitter.js'
import type { PeerRef, TransportSession } from '../types.js'
import { fromError } from '../../peer-runtime/dispatch-result.js'
import { wsRelayTransport, type WsRelayTransport, type WsRelayTransportInit } from './index.js'
import { refusalClass, RETRYABLE_CODES } from './session.js'

/** Rate limits lifted: these tests are about the transport, not the buckets. */
const UNLIMITED = {
  rate: { messageBurst: 1e9, messagesPerSecond: 1e9, byteBurst: 1e12, bytesPerSecond: 1e12 },
}
const nextId = ulidFactory()
/** An envelope's fields around the payload: enough to aim a frame near the size asked for. */
const ENVELOPE_OVERHEAD = 200

interface RelayFixture extends ComplianceFixture {
  world: World
  ids: { a: Identity; b: Identity }
  clients: MeshClient[]
  a: { transport: WsRelayTransport; peer: PeerRef }
  b: { transport: WsRelayTransport; peer: PeerRef }
}

/** A real coordinator (PGlite) and two members' sessions, each with a ws-relay transport over its link. */
async function setup(
  init: Omit<WsRelayTransportInit, 'link'> = {},
  limits: WorldOptions['limits'] = UNLIMITED,
): Promise<RelayFixture> {
  const world = await startWorld('pglite', { limits })
  const [memberA, memberB] = [await world.member('a'), await world.member('b')]
  const [sessionA, sessionB] = [world.session(memberA), world.session(memberB)]
  const clients = [
    await world.connectSession(sessionA, { autoAck: false }),
    await world.connectSession(sessionB, { autoAck: false }),
  ]
  const [clientA, clientB] = clients as [MeshClient, MeshClient]
  // Retries wait on the world's clock, which moves only when a test advances it.
  const a = wsRelayTransport({ clock: world.clock, ...init, link: meshClientLink(clientA, world.mesh) })
  const b = wsRelayTransport({ clock: world.clock, ...init, link: meshClientLink(clientB, world.mesh) })
  const fixture: RelayFixture = {
    world,
    ids: { a: sessionA.identity, b: sessionB.identity },
    clients,
    a: { transport: a, peer: { mesh: world.mesh, pk: sessionA.identity.publicKey } },
    b: { transport: b, peer: { mesh: world.mesh, pk: sessionB.identity.publicKey } },
    teardown: async () => {
      await Promise.all([a.close(), b.close()])
      await world.close()
    },
    handles: () => a.handles + b.handles,
  }
  current = fixture
  return fixture
}

/** The fixture of the running test: compliance frames are sealed between its two keys. */
let current: RelayFixture | undefined

/** A sealed DM of about `size` bytes (never under an empty payload's envelope) from `sender` to the other. */
function makeFrame(size: number, i: number, sender: 'a' | 'b'): Uint8Array {
  const f = current
  if (f === undefined) throw new Error('makeFrame before setup')
  const [from, to] = sender === 'a' ? [f.ids.a, f.ids.b] : [f.ids.b, f.ids.a]
  const payload = new Uint8Array(Math.min(MAX_PAYLOAD_BYTES - 16, Math.max(0, size - ENVELOPE_OVERHEAD)))
  if (payload.byteLength >= 4) new DataView(payload.buffer).setUint32(0, i >>> 0)
  const env = sealDirect({
    mesh: f.world.mesh,
    channel: 'dm',
    from,
    to: to.publicKey,
    clientMessageId: nextId(),
    payload: payload.byteLength >= 4 ? payload : i,
  })
  return encodeEnvelope(env)
}

transportCompliance('ws-relay', () => setup(), {
  runner: { describe, it },
  makeFrame,
  acceptsOnFirstFrame: true,
  peerSeesClose: false,
})

describe('ws-relay over a real coordinator', () => {
  const fixtures: RelayFixture[] = []
  afterEach(async () => {
    for (const f of fixtures.splice(0)) await f.teardown()
  })
  const start = async (...args: Parameters<typeof setup>): Promise<RelayFixture> => {
    const f = await setup(...args)
    fixtures.push(f)
    return f
  }
  const signal = (): AbortSignal => AbortSignal.timeout(10_000)

  it('says what it promises: relayed, unordered, envelope-sized frames', async () => {
    const f = await start()
    expect(f.a.transport.kind).toBe('ws-relay')
    expect(f.a.transport.capabilities).toEqual({ p2p: false, ordered: false, maxFrameBytes: 64 * 1024 })
  })

  it('queues a DM to a peer that is offline, and delivers it when the peer connects', async () => {
    const f = await start()
    const member = await f.world.member('offline')
    const sa = await f.a.transport.open({ mesh: f.world.mesh, pk: member.publicKey }, { signal: signal() })
    const env = sealDirect({
      mesh: f.world.mesh,
      channel: 'dm',
      from: f.ids.a,
      to: member.publicKey,
      clientMessageId: nextId(),
      payload: 'while you were out',
    })
    const bytes = encodeEnvelope(env)
    expect(sa.send(bytes)).toBe(true)
    await sa.close() // resolves once the coordinator acknowledged: stored, since nobody holds the key
    const [clientA] = f.clients as [MeshClient]
    expect(clientA.frames('send_ack').at(-1)).toMatchObject({ state: 'queued', recipientOnline: false })

    const client = await f.world.connectMember(member, { autoAck: false })
    // The queued copy is pushed right after the hello, before this transport exists: the link holds it.
    const c = wsRelayTransport({ link: meshClientLink(client, f.world.mesh) })
    try {
      const arrived = new Promise<[TransportSession, Uint8Array]>((resolve) =>
        c.onSession((session) => session.once('message', (frame) => resolve([session, frame]))),
      )
      const [sc, frame] = await arrived
      expect(sc.peer.pk).toEqual(f.ids.a.publicKey)
      expect(new Uint8Array(frame)).toEqual(new Uint8Array(bytes))
      const receipt = await clientA.waitFor('delivery_receipt', undefined, { signal: signal() })
      expect(receipt).toMatchObject({ clientMessageId: env.clientMessageId, status: 'delivered' })
    } finally {
      await c.close()
    }
  })

  it('closes the session with the code of a permanent refusal', async () => {
    const f = await start()
    const stranger = createIdentity('session')
    const sa = await f.a.transport.open({ mesh: f.world.mesh, pk: stranger.publicKey }, { signal: signal() })
    const closed = waitFor(sa, 'close', { signal: signal() })
    const env = sealDirect({
      mesh: f.world.mesh,
      channel: 'dm',
      from: f.ids.a,
      to: stranger.publicKey,
      clientMessageId: nextId(),
      payload: 'anyone there?',
    })
    expect(sa.send(encodeEnvelope(env))).toBe(true)
    const [err] = await closed
    expect(isMeshError(err, 'MESH_ERR_UNKNOWN_KEY')).toBe(true)
    expect(sa.open).toBe(false)
    expect(f.a.transport.handles).toBe(0)
  })

  it('resends the same bytes after retryAfterMs when rate limited', async () => {
    const f = await start({}, { rate: { messageBurst: 1, messagesPerSecond: 1 } })
    const sa = await f.a.transport.open(f.b.peer, { signal: signal() })
    const accepted = new Promise<TransportSession>((resolve) => f.b.transport.onSession(resolve))
    const frames = [makeFrame(64, 1, 'a'), makeFrame(64, 2, 'a')]
    const got: Uint8Array[] = []
    expect(sa.send(frames[0]!)).toBe(true)
    const sb = await accepted
    sb.on('message', (frame) => got.push(frame))
    expect(sa.send(frames[1]!)).toBe(true)
    // The second send is refused with retryAfterMs and waits on the (manual) clock, still in flight.
    await eventually(() => f.a.transport.handles === 2, { what: 'a retry timer' })
    expect(sa.bufferedAmount).toBe(frames[1]!.byteLength)
    expect(sa.open).toBe(true)
    await f.world.clock.advance(1_000)
    await eventually(() => got.length === 1, { what: 'the retried frame' })
    expect(new Uint8Array(got[0]!)).toEqual(new Uint8Array(frames[1]!))
    expect(decodeEnvelope(got[0]!).clientMessageId).toBe(decodeEnvelope(frames[1]!).clientMessageId)
    await sa.close()
  })

  it('refuses frames that are not envelopes from its key to the peer, and stays open', async () => {
    const f = await start()
    const sa = await f.a.transport.open(f.b.peer, { signal: signal() })
    for (const bad of [new Uint8Array([1, 2, 3]), makeFrame(64, 1, 'b')]) {
      expect(() => sa.send(bad)).toThrow(expect.objectContaining({ code: 'MESH_ERR_INVALID_ENVELOPE' }))
    }
    const stranger = createIdentity('session')
    const elsewhere = sealDirect({
      mesh: f.world.mesh,
      channel: 'dm',
      from: f.ids.a,
      to: stranger.publicKey,
      clientMessageId: nextId(),
      payload: 'x',
    })
    expect(() => sa.send(encodeEnvelope(elsewhere))).toThrow(
      expect.objectContaining({ code: 'MESH_ERR_INVALID_ENVELOPE' }),
    )
    expect(sa.open).toBe(true)
    expect(sa.bufferedAmount).toBe(0)
  })

  it('returns false past maxInFlight and drains once acks come back', async () => {
    const f = await start({ maxInFlight: 4 })
    const sa = await f.a.transport.open(f.b.peer, { signal: signal() })
    const frames = Array.from({ length: 5 }, (_, i) => makeFrame(128, i, 'a'))
    expect(frames.map((frame) => sa.send(frame))).toEqual([true, true, true, true, false])
    await waitFor(sa, 'drain', { signal: signal() })
    expect(sa.send(frames[4]!)).toBe(true)
    await sa.close()
    expect(sa.bufferedAmount).toBe(0)
  })

  it('ends every session with MESH_ERR_TRANSPORT_CLOSED when the connection drops', async () => {
    const f = await start()
    const sa = await f.a.transport.open(f.b.peer, { signal: signal() })
    const closed = waitFor(sa, 'close', { signal: signal() })
    await f.clients[0]!.terminate()
    const [err] = await closed
    expect(isMeshError(err, 'MESH_ERR_TRANSPORT_CLOSED')).toBe(true)
    await expect(f.a.transport.open(f.b.peer, { signal: signal() })).rejects.toMatchObject({
      code: 'MESH_ERR_TRANSPORT_CLOSED',
    })
  })
})

describe('one table of retry classes (protocol/errors.ts RETRY_CLASS)', () => {
  it("the relay session and the runtime's outbox classify every code the same way", () => {
    const outboxClass = (code: MeshErrorCode): RetryClass => {
      const r = fromError(new MeshError(code, 'refused'))
      return r.kind === 'dead' ? 'final' : r.kind === 'retry' ? (r.counted ? 'retry' : 'wait') : 'final'
    }
    for (const code of Object.keys(ERROR_CODES) as MeshErrorCode[]) {
      expect([code, refusalClass(new MeshError(code, 'refused'))]).toEqual([code, RETRY_CLASS[code]])
      expect([code, outboxClass(code)]).toEqual([code, RETRY_CLASS[code]])
    }
    // The cases the two used to disagree on, and the ones each sender leans on.
    expect(RETRY_CLASS.MESH_ERR_RATE_LIMITED).toBe('wait')
    expect(RETRY_CLASS.MESH_ERR_DISCONNECTED).toBe('wait')
    expect(RETRY_CLASS.MESH_ERR_QUEUE_FULL).toBe('retry')
    expect(RETRY_CLASS.MESH_ERR_SHUTTING_DOWN).toBe('retry')
    expect(RETRY_CLASS.MESH_ERR_INTERNAL).toBe('retry')
    expect(RETRY_CLASS.MESH_ERR_UNKNOWN_KEY).toBe('final')
    expect(RETRYABLE_CODES.has('MESH_ERR_SHUTTING_DOWN')).toBe(true)
    expect(RETRYABLE_CODES.has('MESH_ERR_REVOKED')).toBe(false)
  })
})
