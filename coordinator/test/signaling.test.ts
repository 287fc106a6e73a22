import { describe, expect, it } from 'vitest'
import { storeLegs } from '../store/testing.js'
import {
  createIdentity,
  fingerprintsFromSdp,
  randomBytes,
  signP2pSignature,
  toHex,
  verifyP2pSignature,
  type Capabilities,
  type FrameOf,
  type Identity,
  type P2pRole,
} from '../../protocol/index.js'
import type { MeshClient } from '../../test/support/mesh-client.js'
import { worldsPerTest, type World } from '../../test/support/coordinator-world.js'

const P2P: Capabilities = { p2p: true, transports: ['webrtc', 'ws'] }

/** An SDP with one DTLS fingerprint, as a WebRTC stack would write it. */
function sdp(): string {
  const fingerprint = [...randomBytes(32)].map((b) => b.toString(16).padStart(2, '0').toUpperCase()).join(':')
  return [
    'v=0',
    'o=- 4611731400430051336 2 IN IP4 127.0.0.1',
    's=-',
    't=0 0',
    'a=group:BUNDLE 0',
    'm=application 9 UDP/DTLS/SCTP webrtc-datachannel',
    'c=IN IP4 0.0.0.0',
    'a=mid:0',
    `a=fingerprint:sha-256 ${fingerprint}`,
    'a=setup:actpass',
    'a=sctp-port:5000',
    '',
  ].join('\r\n')
}

/** A signed offer or answer from `from` to `to`, as a runtime sends it (`from` left for the coordinator). */
function description<R extends P2pRole>(
  world: World,
  role: R,
  from: Identity,
  to: Identity,
  sigId: string,
): FrameOf<R extends 'offer' ? 'p2p_offer' : 'p2p_answer'> {
  const text = sdp()
  const signed = signP2pSignature({
    identity: from,
    role,
    mesh: world.mesh,
    to: to.publicKey,
    sigId,
    dtlsFingerprints: fingerprintsFromSdp(text),
    now: world.clock.now(),
  })
  return {
    t: role === 'offer' ? 'p2p_offer' : 'p2p_answer',
    sigId,
    to: to.publicKey,
    sdp: text,
    ...signed,
  } as never
}

function candidate(to: Identity, sigId: string, n = 0): FrameOf<'p2p_candidate'> {
  return {
    t: 'p2p_candidate',
    sigId,
    to: to.publicKey,
    candidate: `candidate:${n} 1 udp 2122260223 127.0.0.1 ${50000 + n} typ host`,
    mid: '0',
  }
}

/** The error frame answering the signaling frame with `sigId` (these frames carry no reqId). */
function errorFor(client: MeshClient, sigId: string): Promise<FrameOf<'error'>> {
  return client.waitFor('error', (f) => f.details?.['sigId'] === sigId)
}

/**
 * A round trip on `client`'s socket: every frame the coordinator relayed to it before this returns has
 * arrived, so a test can assert that something was not relayed.
 */
async function settled(client: MeshClient): Promise<void> {
  await client.request({ t: 'list_peers' })
}

describe.each(storeLegs())('signaling relay (%s)', (driver) => {
  const start = worldsPerTest(driver)
  let world: World

  /** Two sessions of two members, connected; both advertise p2p unless told otherwise. */
  async function pair(o: { aCaps?: Capabilities; bCaps?: Capabilities } = {}) {
    const s1 = world.session(await world.member('one'))
    const s2 = world.session(await world.member('two'))
    const a = await world.connectSession(s1, { capabilities: o.aCaps ?? P2P })
    const b = await world.connectSession(s2, { capabilities: o.bCaps ?? P2P })
    return { a, b, ka: s1.identity, kb: s2.identity }
  }

  it('relays an offer with `from` stamped to the sender, then the answer, candidates and a reject back', async () => {
    world = await start()
    const { a, b, ka, kb } = await pair()
    const forged = createIdentity('session').publicKey
    const offer = description(world, 'offer', ka, kb, 'sig-1')
    a.send({ ...offer, from: forged })

    const got = await b.waitFor('p2p_offer')
    expect(got.from).toEqual(ka.publicKey)
    expect(got).toMatchObject({ sigId: 'sig-1', to: kb.publicKey, sdp: offer.sdp })
    expect(toHex(got.signed)).toBe(toHex(offer.signed))
    expect(toHex(got.sig)).toBe(toHex(offer.sig))
    // What arrived is what the sender signed: the receiver's checks of §4.7 pass on it.
    const verified = verifyP2pSignature(got, {
      role: 'offer',
      mesh: world.mesh,
      from: got.from!,
      to: kb.publicKey,
      sigId: got.sigId,
      sdp: got.sdp,
      now: world.clock.now(),
    })
    expect(verified.from).toEqual(ka.publicKey)

    const answer = description(world, 'answer', kb, ka, 'sig-1')
    b.send(answer)
    const gotAnswer = await a.waitFor('p2p_answer')
    expect(gotAnswer).toMatchObject({ sigId: 'sig-1', from: kb.publicKey, sdp: answer.sdp })
    expect(toHex(gotAnswer.sig)).toBe(toHex(answer.sig))

    b.send(candidate(ka, 'sig-1', 1))
    a.send({ ...candidate(kb, 'sig-1', 2), from: forged })
    expect(await a.waitFor('p2p_candidate')).toMatchObject({ sigId: 'sig-1', from: kb.publicKey, mid: '0' })
    expect((await b.waitFor('p2p_candidate')).from).toEqual(ka.publicKey)

    b.send({ t: 'p2p_reject', sigId: 'sig-2', to: ka.publicKey, reason: 'busy' })
    expect(await a.waitFor('p2p_reject')).toMatchObject({
      sigId: 'sig-2',
      from: kb.publicKey,
      reason: 'busy',
    })
    expect(a.frames('error')).toEqual([])
    expect(b.frames('error')).toEqual([])
  })

  it('refuses a peer that does not advertise p2p, and a sender that does not', async () => {
    world = await start()
    const { a, b, ka, kb } = await pair({ bCaps: { p2p: false, transports: ['ws'] } })
    a.send(description(world, 'offer', ka, kb, 'to-plain'))
    const err = await errorFor(a, 'to-plain')
    expect(err).toMatchObject({ code: 'MESH_ERR_PEER_UNREACHABLE', permanent: false })
    expect(err.reqId).toBeUndefined()
    expect(err.details).toMatchObject({ sigId: 'to-plain', to: toHex(kb.publicKey) })

    b.send(candidate(ka, 'from-plain'))
    expect((await errorFor(b, 'from-plain')).code).toBe('MESH_ERR_PEER_UNREACHABLE')
    await settled(a)
    await settled(b)
    expect(a.frames('p2p_candidate')).toEqual([])
    expect(b.frames('p2p_offer')).toEqual([])
  })

  it('refuses a target that is offline or was never online', async () => {
    world = await start()
    const { a, b, ka, kb } = await pair()
    await b.close()
    a.send(description(world, 'offer', ka, kb, 'gone'))
    expect((await errorFor(a, 'gone')).code).toBe('MESH_ERR_PEER_UNREACHABLE')

    const never = world.session(await world.member('three')).identity
    a.send(candidate(never, 'never'))
    const err = await errorFor(a, 'never')
    expect(err).toMatchObject({ code: 'MESH_ERR_PEER_UNREACHABLE', details: { to: toHex(never.publicKey) } })
  })

  it('does not relay across meshes, even to a key live in the other one', async () => {
    world = await start()
    const m2 = await world.member('two')
    const a = await world.connectSession(world.session(await world.member('one')), { capabilities: P2P })
    const ka = a.identity
    // m2 owns a second mesh on the same coordinator and is online there only.
    await world.createMesh('other-mesh', m2, 'two')
    const elsewhere = await world.connect({
      identity: m2,
      mesh: 'other-mesh',
      role: 'control-plane',
      capabilities: P2P,
    })

    a.send(description(world, 'offer', ka, m2, 'cross'))
    expect((await errorFor(a, 'cross')).code).toBe('MESH_ERR_PEER_UNREACHABLE')
    elsewhere.send(candidate(ka, 'cross-back'))
    expect((await errorFor(elsewhere, 'cross-back')).code).toBe('MESH_ERR_PEER_UNREACHABLE')
    await settled(elsewhere)
    await settled(a)
    expect(elsewhere.frames('p2p_offer')).toEqual([])
    expect(a.frames('p2p_candidate')).toEqual([])
  })

  it('allows 10 offers in any rolling minute per presence', async () => {
    world = await start()
    const clock = world.clock
    const { a, b, ka, kb } = await pair()
    const offer = async (sigId: string): Promise<void> => {
      a.send(description(world, 'offer', ka, kb, sigId))
      await b.waitFor('p2p_offer', (f) => f.sigId === sigId)
    }

    await offer('o-0')
    await clock.advance(30_000)
    for (let i = 1; i < 10; i++) await offer(`o-${i}`)
    a.send(description(world, 'offer', ka, kb, 'o-10'))
    const err = await errorFor(a, 'o-10')
    expect(err).toMatchObject({
      code: 'MESH_ERR_SIGNAL_LIMIT',
      permanent: false,
      details: { sigId: 'o-10', retryAfterMs: 30_000 },
    })
    // Answers, candidates and offers the other way are not offers of a's.
    b.send(description(world, 'answer', kb, ka, 'o-0'))
    b.send(candidate(ka, 'o-0'))
    b.send(description(world, 'offer', kb, ka, 'from-b'))
    await a.waitFor('p2p_offer', (f) => f.sigId === 'from-b')

    // The first offer leaves the window: one slot frees, the nine later ones still hold theirs.
    await clock.advance(30_000)
    await offer('o-11')
    a.send(description(world, 'offer', ka, kb, 'o-12'))
    expect((await errorFor(a, 'o-12')).details).toMatchObject({ retryAfterMs: 30_000 })
    await clock.advance(30_000)
    for (let i = 13; i < 22; i++) await offer(`o-${i}`)
    await settled(b)
    expect(b.frames('p2p_offer').map((f) => f.sigId)).not.toContain('o-10')
  })

  it('gives a new connection of the key a fresh offer budget', async () => {
    world = await start()
    const s1 = world.session(await world.member('one'))
    const a = await world.connectSession(s1, { capabilities: P2P })
    const b = await world.connectSession(world.session(await world.member('two')), { capabilities: P2P })
    const kb = b.identity
    for (let i = 0; i < 10; i++) a.send(description(world, 'offer', s1.identity, kb, `first-${i}`))
    a.send(description(world, 'offer', s1.identity, kb, 'over'))
    expect((await errorFor(a, 'over')).code).toBe('MESH_ERR_SIGNAL_LIMIT')
    await a.close()

    const again = await world.connectSession(s1, { capabilities: P2P })
    again.send(description(world, 'offer', s1.identity, kb, 'fresh'))
    expect((await b.waitFor('p2p_offer', (f) => f.sigId === 'fresh')).from).toEqual(s1.identity.publicKey)
  })

  it('allows 200 candidates per signaling id and sender, and forgets the count after 5 min', async () => {
    world = await start()
    const { a, b, ka, kb } = await pair()
    for (let i = 0; i < 200; i++) a.send(candidate(kb, 'busy-sig', i))
    a.send(candidate(kb, 'busy-sig', 200))
    const err = await errorFor(a, 'busy-sig')
    expect(err).toMatchObject({
      code: 'MESH_ERR_SIGNAL_LIMIT',
      details: { sigId: 'busy-sig', to: toHex(kb.publicKey) },
    })

    // Another signaling id has its own count, and so has the other side of the same one.
    a.send(candidate(kb, 'other-sig'))
    await b.waitFor('p2p_candidate', (f) => f.sigId === 'other-sig')
    b.send(candidate(ka, 'busy-sig'))
    await a.waitFor('p2p_candidate', (f) => f.sigId === 'busy-sig')
    await settled(b)
    expect(b.frames('p2p_candidate').filter((f) => f.sigId === 'busy-sig')).toHaveLength(200)
    expect(a.frames('error')).toHaveLength(1)

    // A signaling id's count is dropped once no signed offer could still be using it (5 min).
    const clock = world.clock
    for (let i = 0; i < 10; i++) {
      await clock.advance(30_000)
      await Promise.all([settled(a), settled(b)])
    }
    a.send(candidate(kb, 'busy-sig', 201))
    await b.waitFor('p2p_candidate', (f) => f.sigId === 'busy-sig' && f.candidate.includes(' 50201 '))
  })

  it('counts relayed signaling frames', async () => {
    world = await start()
    const { a, b, ka, kb } = await pair()
    a.send(description(world, 'offer', ka, kb, 'm-1'))
    await b.waitFor('p2p_offer')
    b.send(candidate(ka, 'm-1'))
    await a.waitFor('p2p_candidate')
    const metrics = await world.coordinator.context.metrics.registry.metrics()
    expect(metrics).toContain('agentmesh_signaling_relayed_total{type="p2p_offer"} 1')
    expect(metrics).toContain('agentmesh_signaling_relayed_total{type="p2p_candidate"} 1')
  })
})
