import { afterEach, describe, expect, it } from 'vitest'
import {
  createIdentity,
  ManualClock,
  mintSessionAttestation,
  toHex,
  type MeshError,
  type Signed,
} from '../../protocol/index.js'
import { worldsPerTest } from '../../test/support/coordinator-world.js'
import { closePeers, memberPeer, sessionPeer } from '../../test/support/peer-world.js'
import { rejectionCode } from '../../test/support/rejection.js'
import type { DownInfo } from '../connection.js'
import type { Peer } from '../peer.js'

/** The error a peer's connection stops with (kicked, revoked, replaced). */
function stoppedOf(peer: Peer): Promise<MeshError | undefined> {
  return new Promise((resolve) => peer.once('stopped', resolve))
}

// The connection's rules do not depend on the store driver: PGlite only.
describe("the peer runtime's coordinator connection", () => {
  const start = worldsPerTest('pglite')
  afterEach(closePeers)

  it('kicked (4001): stops for good with a code, no reconnect', async () => {
    const world = await start()
    const member = await world.member('m')
    const peer = await sessionPeer(world, member, { sessionId: 'kicked' })
    await peer.whenConnected()
    const owner = await world.connectMember(world.owner)
    const stopped = stoppedOf(peer)
    expect((await owner.admin('kick', { pk: peer.identity.publicKey })).result).toEqual({ kicked: true })
    const err = await stopped
    expect(err?.code).toBe('MESH_ERR_NOT_AUTHORIZED')
    expect(peer.connected).toBe(false)
    expect(await rejectionCode(peer.send(member.publicKey, 'after the kick'))).toBe('MESH_ERR_NOT_AUTHORIZED')
  })

  it('revoked (4002): stops with MESH_ERR_REVOKED', async () => {
    const world = await start()
    const member = await world.member('doomed')
    const peer = await memberPeer(world, member)
    await peer.whenConnected()
    const owner = await world.connectMember(world.owner)
    const stopped = stoppedOf(peer)
    await owner.admin('revoke', { pk: member.publicKey })
    const err = await stopped
    expect(err?.code).toBe('MESH_ERR_REVOKED')
  })

  it('replaced (4003) by another process holding the same key: the older one stops with MESH_ERR_SESSION_REPLACED, the newer stays', async () => {
    const world = await start()
    const member = await world.member('m')
    const first = await sessionPeer(world, member, { sessionId: 'twice' })
    await first.whenConnected()
    const stopped = stoppedOf(first)
    const second = await sessionPeer(world, member, { sessionId: 'twice', identity: first.identity })
    await second.whenConnected()
    const err = await stopped
    expect(err?.code).toBe('MESH_ERR_SESSION_REPLACED')
    expect(second.connected).toBe(true)
    expect(first.connected).toBe(false)
  })

  it('refuses a coordinator whose key is not the pinned one, and keeps trying', async () => {
    const world = await start()
    const member = await world.member('m')
    const failures: DownInfo[] = []
    const peer = await sessionPeer(world, member, {
      coordinatorPk: createIdentity('coordinator').publicKey,
      onFailed: (info) => failures.push(info),
    })
    await expect.poll(() => failures.length, { timeout: 10_000 }).toBeGreaterThan(1)
    expect(failures[0]?.error?.code).toBe('MESH_ERR_COORDINATOR_MISMATCH')
    expect(failures[0]?.error?.details).toMatchObject({ got: toHex(world.coordinatorIdentity.publicKey) })
    expect(peer.connected).toBe(false)
  })

  it('a hello the coordinator refuses is reported with its code (an attestation by another member)', async () => {
    const world = await start()
    const member = await world.member('m')
    const failures: DownInfo[] = []
    await sessionPeer(world, member, {
      attestedBy: createIdentity('member'),
      onFailed: (info) => failures.push(info),
    })
    await expect.poll(() => failures.length, { timeout: 10_000 }).toBeGreaterThan(0)
    expect(failures[0]?.error?.code).toBe('MESH_ERR_UNKNOWN_KEY')
  })

  it('re-mints the session attestation at half its TTL and sends attest_refresh; the coordinator hands out the new one', async () => {
    const world = await start()
    const member = await world.member('m')
    const clock = new ManualClock(world.clock.now())
    const key = createIdentity('session')
    const minted: Signed[] = []
    const source = (): Signed => {
      const att = mintSessionAttestation({
        mesh: world.mesh,
        member,
        sessionPk: key.publicKey,
        sessionId: 'long',
        now: clock.now(),
      })
      minted.push(att)
      return att
    }
    const peer = await sessionPeer(world, member, {
      sessionId: 'long',
      identity: key,
      clock,
      attestation: source,
    })
    await peer.whenConnected()
    const before = minted.length
    await clock.advance(6 * 60 * 60 * 1000)
    await expect
      .poll(
        async () => {
          const rows = await world.store.query<{ attestation_sig: Uint8Array }>(
            'select attestation_sig from presence where pk = $1',
            [key.publicKey],
          )
          return toHex(rows[0]!.attestation_sig) === toHex(minted.at(-1)!.sig) && minted.length > before
        },
        { timeout: 10_000 },
      )
      .toBe(true)
    expect(peer.connected).toBe(true)
  })
})
