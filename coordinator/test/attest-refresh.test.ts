import { describe, expect, it } from 'vitest'
import { mintSessionAttestation, toHex } from '../../protocol/index.js'
import { worldsPerTest } from '../../test/support/coordinator-world.js'
import { rejectionCode } from '../../test/support/rejection.js'
import { storeLegs } from '../store/testing.js'

describe.each(storeLegs())('attest_refresh (%s)', (driver) => {
  const start = worldsPerTest(driver)

  it('takes a fresh attestation for the live session, stores it and announces the presence as updated', async () => {
    const world = await start()
    const member = await world.member('m')
    const s = world.session(member, 'long-lived')
    const session = await world.connectSession(s)
    const watcher = await world.connectMember(await world.member('w'))
    await world.clock.advance(6 * 60 * 60 * 1000)
    const fresh = mintSessionAttestation({
      mesh: world.mesh,
      member,
      sessionPk: s.identity.publicKey,
      sessionId: s.sessionId,
      now: world.clock.now(),
    })
    expect(await session.request({ t: 'attest_refresh', attestation: fresh })).toMatchObject({ t: 'ok' })
    const event = await watcher.waitFor('presence', (f) => f.event === 'updated')
    expect(toHex(event.peer.attestation!.sig)).toBe(toHex(fresh.sig))
    const listed = await watcher.request({ t: 'list_peers' })
    const record = listed.peers.find((p) => toHex(p.pk) === toHex(s.identity.publicKey))
    expect(toHex(record!.attestation!.sig)).toBe(toHex(fresh.sig))
  })

  it('refuses one for another key, one signed by another member, and any from a control-plane presence', async () => {
    const world = await start()
    const member = await world.member('m')
    const other = await world.member('o')
    const s = world.session(member, 'mine')
    const session = await world.connectSession(s)
    const elsewhere = world.session(member, 'mine')
    const now = world.clock.now()
    const forKey = (signer: typeof member, pk: Uint8Array) =>
      mintSessionAttestation({ mesh: world.mesh, member: signer, sessionPk: pk, sessionId: 'mine', now })
    expect(
      await rejectionCode(
        session.request({ t: 'attest_refresh', attestation: forKey(member, elsewhere.identity.publicKey) }),
      ),
    ).toBe('MESH_ERR_FIELD_MISMATCH')
    expect(
      await rejectionCode(
        session.request({ t: 'attest_refresh', attestation: forKey(other, s.identity.publicKey) }),
      ),
    ).toBe('MESH_ERR_WRONG_SIGNER')
    const daemon = await world.connectMember(member)
    expect(
      await rejectionCode(
        daemon.request({ t: 'attest_refresh', attestation: forKey(member, s.identity.publicKey) }),
      ),
    ).toBe('MESH_ERR_MALFORMED_FRAME')
    // The session is still there, with its first attestation.
    expect(await session.request({ t: 'list_peers' })).toMatchObject({ t: 'peers' })
  })
})
