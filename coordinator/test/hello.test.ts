import { describe, expect, it } from 'vitest'
import {
  createIdentity,
  decode,
  encode,
  PROTOCOL_VERSION,
  randomBytes,
  signFields,
  type FrameOf,
} from '../../protocol/index.js'
import { worldsPerTest, type World } from '../../test/support/coordinator-world.js'
import { MeshClient, type HelloOptions } from '../../test/support/mesh-client.js'
import { service, session } from '../../test/support/mesh-fixture.js'
import { rejection, rejectionCode } from '../../test/support/rejection.js'
import { storeLegs } from '../store/testing.js'

/** Says a hello that the coordinator must refuse; returns the error code and the close code. */
async function refused(world: World, o: HelloOptions): Promise<{ code: string; close: number }> {
  const client = await MeshClient.open(world.wsUrl)
  const code = await rejectionCode(client.hello(o))
  const closed = await client.closed
  return { code, close: closed.code }
}

describe.each(storeLegs())('hello (%s)', (driver) => {
  const start = worldsPerTest(driver)

  it('accepts a member, a session and a service, each with its hello_ack', async () => {
    const world = await start()
    const m = await world.member('m')
    const cp = await world.connectMember(m)
    expect(cp.helloAck).toMatchObject({
      t: 'hello_ack',
      proto: 1,
      nodeId: expect.any(String),
      leaseMs: 90_000,
    })
    expect(cp.helloAck.stateVersion).toBeGreaterThanOrEqual(2)
    const s = await world.connectSession(world.session(m))
    expect(s.helloAck.presenceId).not.toBe(cp.helloAck.presenceId)
    expect(s.helloAck.limits).toMatchObject({ maxFrameBytes: 72 * 1024, maxEnvelopeBytes: 64 * 1024 })
    const svc = service(m, world.mesh, { now: world.clock.now(), scopes: ['send'] })
    const sv = await world.connect({ ...svc, mesh: world.mesh })
    expect(sv.helloAck.t).toBe('hello_ack')
    const peers = await cp.request({ t: 'list_peers' })
    expect(peers.peers.map((p) => p.role).sort()).toEqual(['service', 'session'])
    await sv.close()
  })

  it('refuses another challenge, another mesh, a tampered role, an unknown key and an expired attestation', async () => {
    const world = await start()
    const m = await world.member('m')
    const base = { identity: m, mesh: world.mesh, role: 'control-plane' as const }

    const otherChallenge = await refused(world, {
      ...base,
      tamper: (hello: FrameOf<'hello'>) => {
        const fields = decode(hello.signed) as unknown[]
        fields[3] = randomBytes(32)
        return { ...hello, ...signFields('hello', fields, m.secretKey) }
      },
    })
    expect(otherChallenge).toEqual({ code: 'MESH_ERR_WRONG_CHALLENGE', close: 1008 })

    // Signed for mesh "elsewhere", presented to this one: the signature names the other mesh.
    const otherMesh = await refused(world, {
      ...base,
      mesh: 'elsewhere',
      tamper: (h) => ({ ...h, mesh: world.mesh }),
    })
    expect(otherMesh).toEqual({ code: 'MESH_ERR_FIELD_MISMATCH', close: 1008 })
    const unknownMesh = await refused(world, { ...base, mesh: 'elsewhere' })
    expect(unknownMesh).toEqual({ code: 'MESH_ERR_UNKNOWN_MESH', close: 1008 })

    const s = world.session(m)
    const tamperedRole = await refused(world, {
      identity: s.identity,
      mesh: world.mesh,
      role: 'session',
      attestation: s.attestation,
      sessionId: s.sessionId,
      tamper: (h) => ({ ...h, role: 'service' }),
    })
    expect(tamperedRole).toEqual({ code: 'MESH_ERR_FIELD_MISMATCH', close: 1008 })

    const stranger = createIdentity('member')
    expect(await refused(world, { ...base, identity: stranger })).toEqual({
      code: 'MESH_ERR_UNKNOWN_KEY',
      close: 1008,
    })
    const strangerSession = session(stranger, world.mesh, { now: world.clock.now() })
    expect(
      await refused(world, {
        identity: strangerSession.identity,
        mesh: world.mesh,
        role: 'session',
        attestation: strangerSession.attestation,
        sessionId: strangerSession.sessionId,
      }),
    ).toEqual({ code: 'MESH_ERR_UNKNOWN_KEY', close: 1008 })

    const old = session(m, world.mesh, { now: world.clock.now() - 13 * 3_600_000 })
    expect(
      await refused(world, {
        identity: old.identity,
        mesh: world.mesh,
        role: 'session',
        attestation: old.attestation,
        sessionId: old.sessionId,
      }),
    ).toEqual({ code: 'MESH_ERR_EXPIRED', close: 1008 })
  })

  it('closes 4010 with the supported range when no protocol version overlaps', async () => {
    const world = await start()
    const m = await world.member()
    const client = await MeshClient.open(world.wsUrl)
    const err = await rejection(
      client.hello({ identity: m, mesh: world.mesh, role: 'control-plane', proto: { min: 7, max: 9 } }),
    )
    expect(err).toMatchObject({
      code: 'MESH_ERR_UNSUPPORTED_VERSION',
      details: { supported: PROTOCOL_VERSION },
    })
    expect((await client.closed).code).toBe(4010)
  })

  it('answers frames before the hello with HELLO_REQUIRED, and closes 1008 at the hello deadline', async () => {
    const world = await start()
    const clock = world.clock
    const client = await MeshClient.open(world.wsUrl)
    client.send({ t: 'list_peers', reqId: 5 })
    const early = await client.waitFor('error')
    expect(early).toMatchObject({ code: 'MESH_ERR_HELLO_REQUIRED', reqId: 5 })
    await clock.advance(9_000)
    expect(client.frames('error')).toHaveLength(1)
    await clock.advance(1_000)
    expect(await client.waitFor('error')).toMatchObject({ code: 'MESH_ERR_HELLO_TIMEOUT' })
    expect((await client.closed).code).toBe(1008)
  })

  it('keeps one live presence per key: the older connection is closed 4003 naming the newer instance', async () => {
    const world = await start()
    const m = await world.member()
    const s = world.session(m)
    const first = await world.connectSession(s, { instanceId: 'first' })
    const second = await world.connectSession(s, { instanceId: 'second' })
    const replaced = await first.waitFor('error')
    expect(replaced).toMatchObject({ code: 'MESH_ERR_SESSION_REPLACED', details: { instanceId: 'second' } })
    const closed = await first.closed
    expect(closed.code).toBe(4003)
    expect(closed.reason).toContain('second')
    const peers = await second.request({ t: 'list_peers' })
    expect(peers.peers.filter((p) => p.sessionId === s.sessionId)).toHaveLength(1)
  })

  it('pings every 30 s and terminates a connection that stays silent for 75 s', async () => {
    const world = await start()
    const clock = world.clock
    const m = await world.member()
    const live = await world.connectMember(m)
    const mute = await world.connect({
      identity: await world.member(),
      mesh: world.mesh,
      role: 'control-plane',
      autoPong: false,
    })
    await clock.advance(30_000)
    await live.waitFor('ping')
    await mute.waitFor('ping')
    await clock.advance(30_000)
    await clock.advance(30_000)
    expect((await mute.closed).code).toBe(1006)
    // The one that answered is still open and can still talk.
    const peers = await live.request({ t: 'list_peers' })
    expect(peers.t).toBe('peers')
  })

  it('answers an app-level ping with pong', async () => {
    const world = await start()
    const client = await world.connectMember(await world.member())
    client.sendRaw(encode({ t: 'ping' }))
    expect(await client.waitFor('pong')).toEqual({ t: 'pong' })
  })
})
