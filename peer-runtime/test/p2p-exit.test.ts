import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { createIdentity, mintSessionAttestation, type Identity } from '../../protocol/index.js'
import { worldsPerTest, type World } from '../../test/support/coordinator-world.js'
import { peerProcess, type PeerProcess, type PeerProcessStart } from '../../test/support/peer-process.js'
import { tempDir, UNLIMITED_RATE } from '../../test/support/peer-world.js'

function startOf(world: World, member: Identity, key: Identity, sessionId: string): PeerProcessStart {
  return {
    url: world.wsUrl,
    mesh: world.mesh,
    ownerPk: world.owner.publicKey,
    coordinatorPk: world.coordinatorIdentity.publicKey,
    identity: key,
    sessionId,
    attestation: mintSessionAttestation({
      mesh: world.mesh,
      member,
      sessionPk: key.publicKey,
      sessionId,
      now: world.clock.now(),
    }),
    storePath: join(tempDir(), `${sessionId}.db`),
    p2p: true,
  }
}

describe('two peer processes over P2P', () => {
  const start = worldsPerTest('pglite')
  const children: PeerProcess[] = []
  afterEach(async () => {
    for (const c of children.splice(0)) await c.kill().catch(() => undefined)
  })

  it('exchange 1,000 messages peer to peer, then both exit within 2 s of closing (no handle left open)', async () => {
    const world = await start({ limits: { rate: UNLIMITED_RATE } })
    const aKey = createIdentity('session')
    const bKey = createIdentity('session')
    const a = peerProcess(startOf(world, await world.member('a'), aKey, 'a'))
    const b = peerProcess(startOf(world, await world.member('b'), bKey, 'b'))
    children.push(a, b)
    await Promise.all([a.ready, b.ready])

    // Warm the pair up (the first message goes by relay and starts the handshake), then 500 each way.
    await a.send(bKey.publicKey, 1, 10_000)
    await b.send(aKey.publicKey, 1, 10_000)
    const [fromA, fromB] = await Promise.all([
      a.send(bKey.publicKey, 500, 30_000),
      b.send(aKey.publicKey, 500, 30_000),
    ])
    await Promise.all([a.received(501, 10_000), b.received(501, 10_000)])
    expect(fromA.p2pSent + fromB.p2pSent).toBeGreaterThanOrEqual(900)

    const [aMs, bMs] = await Promise.all([a.close(), b.close()])
    expect(aMs).toBeLessThan(2_000)
    expect(bMs).toBeLessThan(2_000)
    expect(a.child.exitCode).toBe(0)
    expect(b.child.exitCode).toBe(0)
  })
})
