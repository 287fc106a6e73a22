import { describe, expect, it } from 'vitest'
import {
  createIdentity,
  openSystemEnvelope,
  signAdminRequest,
  toHex,
  verifySystemEvent,
  type Identity,
} from '../../protocol/index.js'
import { worldsPerTest } from '../../test/support/coordinator-world.js'
import { MeshClient } from '../../test/support/mesh-client.js'
import { httpMsgpack, invite, joinRecord, rosterRecord } from '../../test/support/mesh-fixture.js'
import { rejectionCode } from '../../test/support/rejection.js'
import { storeLegs } from '../store/testing.js'

describe.each(storeLegs())('mesh state and membership (%s)', (driver) => {
  const start = worldsPerTest(driver)

  it('applies an owner-signed roster record, logs it signed, and tells every online peer', async () => {
    const world = await start()
    const owner = await world.connectMember(world.owner)
    const watcher = await world.connectSession(world.session(await world.member('w')))
    const before = watcher.helloAck.stateVersion
    const newcomer = createIdentity('member')
    const record = rosterRecord({
      signer: world.owner,
      mesh: world.mesh,
      seq: 1,
      action: 'add',
      subjectPk: newcomer.publicKey,
      role: 'member',
      displayName: 'newcomer',
      issuedAt: world.clock.now(),
    })
    const result = await owner.admin('roster', { record })
    expect(result.result).toEqual({ stateVersion: before + 1 })

    // The system envelope every online peer gets is signed by the coordinator and follows the version.
    const push = await watcher.waitFor('push', (p) => p.deliveryId.startsWith('system-'))
    const env = watcher.pushes().find((p) => p.frame === push)!.envelope!
    const [mesh, version, prevVersion, kind] = openSystemEnvelope(env, world.coordinatorIdentity.publicKey)
    expect([mesh, version, prevVersion, kind]).toEqual([world.mesh, before + 1, before, 'roster'])

    // mesh_events hands out the same log, each entry verifiable with the pinned coordinator key.
    const log = await watcher.request({ t: 'mesh_events', since: 0 })
    const versions = log.events.map(
      (e) =>
        verifySystemEvent(e, { coordinatorPk: world.coordinatorIdentity.publicKey, mesh: world.mesh })
          .version,
    )
    expect(versions).toEqual(Array.from({ length: before + 1 }, (_, i) => i + 1))

    // The new member can now say hello.
    const joined = await world.connectMember(newcomer)
    expect(joined.helloAck.stateVersion).toBe(before + 1)
  })

  it('refuses a roster change without a valid owner or admin signature, and changes nothing', async () => {
    const world = await start()
    const plain = await world.member('plain')
    const client = await world.connectMember(plain)
    const version = client.helloAck.stateVersion
    const stranger = createIdentity('member')
    const bySelf = rosterRecord({
      signer: plain,
      mesh: world.mesh,
      seq: 1,
      action: 'add',
      subjectPk: stranger.publicKey,
      role: 'member',
    })
    // A plain member may not even call the method…
    expect(await rejectionCode(client.admin('roster', { record: bySelf }))).toBe('MESH_ERR_NOT_AUTHORIZED')
    // …and an owner-level call carrying a record signed by a plain member is refused by the roster.
    const owner = await world.connectMember(world.owner)
    expect(await rejectionCode(owner.admin('roster', { record: bySelf }))).toBe('MESH_ERR_NOT_AUTHORIZED')
    // A tampered record does not verify.
    const forged = { ...bySelf, signer: world.owner.publicKey }
    expect(await rejectionCode(owner.admin('roster', { record: forged }))).toBe('MESH_ERR_BAD_SIGNATURE')
    // An owner's signature made for another connection's challenge is not replayable on this one.
    const replayed = signAdminRequest({
      identity: world.owner,
      mesh: world.mesh,
      method: 'group_set',
      args: { name: 'g', members: [] },
      challengeNonce: owner.challenge.nonce,
    })
    expect(await rejectionCode(client.request({ t: 'admin', ...replayed }))).toBe('MESH_ERR_WRONG_CHALLENGE')
    const log = await owner.request({ t: 'mesh_events', since: version })
    expect(log.events).toEqual([])
    expect(await rejectionCode(world.connectMember(stranger))).toBe('MESH_ERR_UNKNOWN_KEY')
  })

  it('revokes a member: its sessions close 4002, hellos are refused, queued messages are dropped with a receipt', async () => {
    const world = await start()
    const owner = await world.connectMember(world.owner)
    const senderKey = world.session(await world.member('sender'))
    const doomed = await world.member('doomed')
    const doomedSession = world.session(doomed)
    const sender = await world.connectSession(senderKey)
    const live = await world.connectSession(doomedSession)
    const offline = world.session(doomed)
    await (await world.connectSession(offline)).close()
    const env = world.dm(senderKey.identity, offline.identity, 'never read')
    expect((await sender.sendEnvelope(env)).state).toBe('queued')

    await owner.admin('revoke', { pk: doomed.publicKey })
    expect((await live.closed).code).toBe(4002)
    const receipt = await sender.waitFor('delivery_receipt')
    expect(receipt).toMatchObject({ clientMessageId: env.clientMessageId, status: 'dropped_revoked' })
    expect(await world.store.query('select 1 from delivery')).toEqual([])

    const again = await MeshClient.open(world.wsUrl)
    const refused = again.hello({
      identity: doomedSession.identity,
      mesh: world.mesh,
      role: 'session',
      attestation: doomedSession.attestation,
      sessionId: doomedSession.sessionId,
    })
    expect(await rejectionCode(refused)).toBe('MESH_ERR_REVOKED')
    expect((await again.closed).code).toBe(4002)
    const dm = world.dm(senderKey.identity, doomed, 'x')
    expect(await rejectionCode(sender.sendEnvelope(dm))).toBe('MESH_ERR_REVOKED')
  })

  it('kicks a session with 4001 and skips a control-plane presence', async () => {
    const world = await start()
    const owner = await world.connectMember(world.owner)
    const m = await world.member()
    const daemon = await world.connectMember(m)
    const s = world.session(m)
    const session = await world.connectSession(s)
    expect((await owner.admin('kick', { pk: s.identity.publicKey })).result).toEqual({ kicked: true })
    expect((await session.closed).code).toBe(4001)
    expect((await owner.admin('kick', { pk: m.publicKey })).result).toEqual({
      kicked: false,
      reason: 'skipped_control_plane',
    })
    const peers = await daemon.request({ t: 'list_peers', includeDaemons: true })
    expect(peers.peers.map((p) => toHex(p.pk))).toContain(toHex(m.publicKey))
  })
})

describe.each(storeLegs())('joins (%s)', (driver) => {
  const start = worldsPerTest(driver)

  it('refuses an invite that names another coordinator key (the joiner would pin the wrong one)', async () => {
    const world = await start()
    const joinWith = async (coordinatorPk: Uint8Array, who: Identity) => {
      const inv = invite({
        signer: world.owner,
        mesh: world.mesh,
        coordinatorUrl: world.url,
        coordinatorPk,
        ownerPk: world.owner.publicKey,
        maxUses: 1,
      })
      return {
        inv,
        res: await httpMsgpack(`${world.url}/v1/meshes/${world.mesh}/join`, {
          method: 'POST',
          body: { invite: inv, join: joinRecord(who, inv) },
        }),
      }
    }
    const { res } = await joinWith(createIdentity('coordinator').publicKey, createIdentity('member'))
    expect(res.status).toBe(400)
    expect(res.body).toMatchObject({
      error: { code: 'MESH_ERR_FIELD_MISMATCH', details: { field: 'coordinatorPk' } },
    })
    const ok = await joinWith(world.coordinatorIdentity.publicKey, createIdentity('member'))
    expect(ok.res.status).toBe(200)
  })
})
