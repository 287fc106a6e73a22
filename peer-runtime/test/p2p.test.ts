import { afterEach, describe, expect, it } from 'vitest'
import { toHex } from '../../protocol/index.js'
import { worldsPerTest } from '../../test/support/coordinator-world.js'
import { closePeers, nextMessages, sessionPeer } from '../../test/support/peer-world.js'

// Signaling rides on the coordinator; the store leg does not matter here, so PGlite only.
describe('Peer P2P-first (webrtc between two peers on loopback)', () => {
  const start = worldsPerTest('pglite')
  afterEach(closePeers)

  it('the first DM goes by relay while the handshake runs; later ones go peer to peer, each arriving once', async () => {
    const world = await start()
    const alice = await sessionPeer(world, await world.member('alice'), { p2p: true, store: 'sqlite' })
    // Bob's store is volatile: P2P acks still come once a message is stored, not when it is read.
    const bob = await sessionPeer(world, await world.member('bob'), { p2p: true, store: 'memory' })
    await Promise.all([alice.whenConnected(), bob.whenConnected()])

    const zero = await alice.send(bob.identity.publicKey, { n: 0 })
    const [first] = await nextMessages(bob, 1)
    expect(first).toMatchObject({ payload: { n: 0 }, via: 'relay' })
    await alice.settled(AbortSignal.timeout(10_000))
    expect(await alice.status(zero.clientMessageId)).toMatchObject({ state: 'done', via: 'relay' })
    await expect.poll(() => alice.p2pWarm(bob.identity.publicKey), { timeout: 10_000 }).toBe(true)

    const ids: string[] = []
    for (let i = 1; i <= 200; i++)
      ids.push((await alice.send(bob.identity.publicKey, { n: i })).clientMessageId)
    const rest = await nextMessages(bob, 200)
    expect(rest.map((m) => (m.payload as { n: number }).n).sort((a, b) => a - b)).toEqual(
      Array.from({ length: 200 }, (_, i) => i + 1),
    )
    expect(rest.filter((m) => m.via === 'p2p').length).toBeGreaterThan(150)
    await alice.settled(AbortSignal.timeout(10_000))
    expect(alice.p2pCounters?.p2pSent).toBeGreaterThan(150)
    expect(alice.p2pCounters?.demotions).toBe(0)
    const bobHex = toHex(bob.identity.publicKey)
    const rows = await Promise.all(ids.map((id) => alice.status(id)))
    expect(rows.every((r) => r?.state === 'done' && r.recipients?.[bobHex] === 'delivered')).toBe(true)
    // Each row names the transport bob says it came by (no demotion, so none was carried twice).
    const cameBy = new Map(rest.map((m) => [m.clientMessageId, m.via]))
    expect(rows.map((r) => [r?.id, r?.via])).toEqual(rows.map((r) => [r?.id, cameBy.get(r!.id)]))
    expect(rows.filter((r) => r?.via === 'p2p').length).toBeGreaterThan(150)

    // Replies ride the session bob accepted.
    await bob.send(alice.identity.publicKey, { reply: true })
    const [reply] = await nextMessages(alice, 1)
    expect(reply).toMatchObject({ payload: { reply: true } })
  })
})
