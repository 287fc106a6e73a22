import { describe, expect, it } from 'vitest'
import { storeLegs } from '../store/testing.js'
import {
  createIdentity,
  decodeEnvelope,
  encode,
  encodeEnvelope,
  openEnvelope,
  sealGroup,
  toHex,
  ulidFactory,
  type Identity,
} from '../../protocol/index.js'
import { worldsPerTest } from '../../test/support/coordinator-world.js'
import type { MeshClient } from '../../test/support/mesh-client.js'
import { sample, scrape } from '../../test/support/metrics.js'
import { httpMsgpack, invite, joinRecord } from '../../test/support/mesh-fixture.js'

const nextId = ulidFactory()
const wait = (): { signal: AbortSignal } => ({ signal: AbortSignal.timeout(5000) })

type ErrorBody = { error: { code: string } }

describe.each(storeLegs())('coordinator HTTP (%s)', (driver) => {
  const start = worldsPerTest(driver)

  it('GET /health reports a reachable store', async () => {
    const world = await start()
    const res = await httpMsgpack(`${world.url}/health`, { method: 'GET' })
    expect(res.status).toBe(200)
    expect(res.body).toMatchObject({ ok: true, store: 'reachable' })
  })

  it('GET /metrics moves with DMs (fast and queued), redeliveries and rejected frames', async () => {
    const world = await start()
    const [a, b, c] = [await world.member('a'), await world.member('b'), await world.member('c')]
    const ca = await world.connectMember(a)
    await world.connectMember(b)
    const before = await scrape(world.url)
    for (const name of [
      'agentmesh_connections',
      'agentmesh_presences',
      'agentmesh_frames_in_total',
      'agentmesh_queue_depth',
      'agentmesh_deliveries_total',
      'agentmesh_redeliveries_total',
      'agentmesh_rejects_total',
      'agentmesh_sends_total',
    ]) {
      expect(before).toContain(`# TYPE ${name} `)
    }
    expect(sample(before, 'agentmesh_connections')).toBe(2)
    expect(sample(before, 'agentmesh_presences', 'role="control-plane"')).toBe(2)

    expect((await ca.sendEnvelope(world.dm(a, b, 'fast'), wait())).state).toBe('delivered')
    expect((await ca.sendEnvelope(world.dm(a, c, 'queued'), wait())).state).toBe('queued')
    ca.sendRaw(encode({ t: 'no_such_frame', reqId: 7 }))
    await ca.waitFor('error', (f) => f.reqId === 7, wait())
    const refused = await httpMsgpack(`${world.url}/v1/send`, { method: 'POST', token: 'nope', body: {} })
    expect(refused.status).toBe(401)
    const mid = await scrape(world.url)
    const delta = (name: string, labels?: string): number =>
      sample(mid, name, labels) - sample(before, name, labels)
    expect(delta('agentmesh_frames_in_total', 'type="send"')).toBe(2)
    expect(delta('agentmesh_sends_total', 'path="fast"')).toBe(1)
    expect(delta('agentmesh_sends_total', 'path="queued"')).toBe(1)
    expect(delta('agentmesh_deliveries_total', 'status="ok"')).toBe(1)
    expect(delta('agentmesh_rejects_total', 'code="MESH_ERR_UNKNOWN_FRAME_TYPE"')).toBe(1)
    expect(delta('agentmesh_rejects_total', 'code="MESH_ERR_UNAUTHENTICATED"')).toBe(1)
    expect(sample(mid, 'agentmesh_queue_depth')).toBe(1)

    // c comes online and does not ack: once the claim lapses the sweep pushes the message again.
    const cc: MeshClient = await world.connectMember(c, { autoAck: false })
    const first = await cc.waitFor('push', (f) => decodeEnvelope(f.envelope).channel === 'dm', wait())
    await world.clock.advance(world.coordinator.context.limits.claimLeaseMs + 1000)
    await world.coordinator.sweep()
    const again = await cc.waitFor('push', (f) => f.deliveryId === first.deliveryId, wait())
    cc.send({ t: 'client_ack', deliveryId: again.deliveryId, status: 'ok' })
    await ca.waitFor('delivery_receipt', undefined, wait())
    const after = await scrape(world.url)
    expect(
      sample(after, 'agentmesh_redeliveries_total') - sample(before, 'agentmesh_redeliveries_total'),
    ).toBe(1)
    expect(sample(after, 'agentmesh_deliveries_total', 'status="ok"')).toBe(2)
    expect(sample(after, 'agentmesh_queue_depth')).toBe(0)
    expect(sample(after, 'agentmesh_connections')).toBe(3)
  })

  it('mesh creation needs the admin token and a free id', async () => {
    const world = await start()
    const url = `${world.url}/v1/meshes`
    const body = { mesh: 'another', ownerPk: createIdentity('member').publicKey }
    const none = await httpMsgpack<ErrorBody>(url, { method: 'POST', body })
    expect(none.status).toBe(401)
    expect(none.body.error.code).toBe('MESH_ERR_UNAUTHENTICATED')
    const wrong = await httpMsgpack<ErrorBody>(url, { method: 'POST', body, token: 'not-the-token' })
    expect(wrong.status).toBe(401)
    expect(wrong.body.error.code).toBe('MESH_ERR_UNAUTHENTICATED')
    const taken = await httpMsgpack<ErrorBody>(url, {
      method: 'POST',
      token: world.adminToken,
      body: { ...body, mesh: world.mesh },
    })
    expect(taken.status).toBe(409)
    expect(taken.body.error.code).toBe('MESH_ERR_MESH_EXISTS')
  })

  it('joins refuse an exhausted and an expired invite with their codes, and a later join still works', async () => {
    const world = await start()
    const join = (inv: ReturnType<typeof invite>, who: Identity) =>
      httpMsgpack<ErrorBody>(`${world.url}/v1/meshes/${world.mesh}/join`, {
        method: 'POST',
        body: { invite: inv, join: joinRecord(who, inv) },
      })
    const inviteOpts = {
      signer: world.owner,
      mesh: world.mesh,
      coordinatorUrl: world.url,
      coordinatorPk: world.coordinatorIdentity.publicKey,
      ownerPk: world.owner.publicKey,
      expiresAt: world.clock.now() + 60_000,
    }
    const soon = invite(inviteOpts)
    await world.clock.advance(61_000)
    const expired = await join(soon, createIdentity('member'))
    expect(expired.body.error.code).toBe('MESH_ERR_EXPIRED')
    expect(expired.status).toBe(400)

    // A refused join changes nothing: the next one, and its exhaustion, are judged on their own.
    const once = invite({ ...inviteOpts, expiresAt: world.clock.now() + 60_000, maxUses: 1 })
    expect((await join(once, createIdentity('member'))).status).toBe(200)
    const exhausted = await join(once, createIdentity('member'))
    expect(exhausted.body.error.code).toBe('MESH_ERR_INVITE_EXHAUSTED')
    expect(exhausted.status).toBe(409)
  })

  it('POST /v1/send takes sealed envelopes and {to, text} from a service token, within scopes and policy', async () => {
    const world = await start()
    const m = await world.member('m')
    const cm = await world.connectMember(m)
    const owner = await world.connectMember(world.owner)
    const svc = createIdentity('service')
    const reg = await owner.admin('service_register', {
      id: 'cron',
      pk: svc.publicKey,
      scopes: ['send'],
      transport: 'http',
    })
    const token = (reg.result as { token: string }).token
    const sendUrl = `${world.url}/v1/send`

    const sealed = world.dm(svc, m, { job: 'backup', ok: true })
    const r1 = await httpMsgpack<{ state: string; clientMessageId: string }>(sendUrl, {
      method: 'POST',
      token,
      body: { envelope: encodeEnvelope(sealed) },
    })
    expect(r1.status).toBe(200)
    expect(['queued', 'delivered']).toContain(r1.body.state)
    expect(r1.body.clientMessageId).toBe(sealed.clientMessageId)
    const p1 = await cm.waitFor(
      'push',
      (f) => decodeEnvelope(f.envelope).clientMessageId === sealed.clientMessageId,
      wait(),
    )
    expect(openEnvelope(decodeEnvelope(p1.envelope), m)).toMatchObject({
      ok: true,
      e2e: true,
      payload: { job: 'backup' },
    })

    const json = (text: string, bearer = token) =>
      fetch(sendUrl, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${bearer}` },
        body: JSON.stringify({ to: toHex(m.publicKey), text }),
        ...wait(),
      })
    const r2 = await json('nightly backup done')
    expect(r2.status).toBe(200)
    const b2 = (await r2.json()) as { state: string; clientMessageId: string }
    expect(['queued', 'delivered']).toContain(b2.state)
    const p2 = await cm.waitFor(
      'push',
      (f) => decodeEnvelope(f.envelope).clientMessageId === b2.clientMessageId,
      wait(),
    )
    const plain = decodeEnvelope(p2.envelope)
    expect(plain).toMatchObject({
      channel: 'dm',
      body: { plain: 'nightly backup done' },
      meta: { e2e: false },
    })
    expect(toHex(plain.from)).toBe(toHex(svc.publicKey))

    const badToken = await json('x', 'ams1.not-a-token')
    expect(badToken.status).toBe(401)
    expect(((await badToken.json()) as ErrorBody).error.code).toBe('MESH_ERR_UNAUTHENTICATED')
    const noToken = await fetch(sendUrl, {
      method: 'POST',
      body: '{}',
      headers: { 'content-type': 'application/json' },
      ...wait(),
    })
    expect(noToken.status).toBe(401)

    const reader = createIdentity('service')
    const reg2 = await owner.admin('service_register', {
      id: 'reader',
      pk: reader.publicKey,
      scopes: [],
      transport: 'http',
    })
    const noScope = await json('x', (reg2.result as { token: string }).token)
    expect(noScope.status).toBe(403)
    expect(((await noScope.json()) as ErrorBody).error.code).toBe('MESH_ERR_NOT_AUTHORIZED')

    // The auth scheme is case-insensitive; an oversize body and a stale group roster get their own statuses.
    const lower = await fetch(sendUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `bearer ${token}` },
      body: JSON.stringify({ to: toHex(m.publicKey), text: 'lowercase scheme' }),
      ...wait(),
    })
    expect(lower.status).toBe(200)
    const huge = await json('x'.repeat(1024 * 1024 + 1))
    expect(huge.status).toBe(413)
    expect(((await huge.json()) as ErrorBody).error.code).toBe('MESH_ERR_FRAME_TOO_LARGE')
    const stale = sealGroup({
      mesh: world.mesh,
      from: svc,
      target: '*',
      recipients: [createIdentity('member').publicKey],
      rosterVersion: (reg.result as { stateVersion: number }).stateVersion,
      clientMessageId: nextId(),
      payload: 'to everyone I know',
    })
    const r4 = await httpMsgpack<ErrorBody>(sendUrl, {
      method: 'POST',
      token,
      body: { envelope: encodeEnvelope(stale) },
    })
    expect(r4.status).toBe(409)
    expect(r4.body.error.code).toBe('MESH_ERR_STALE_ROSTER')

    await owner.admin('settings', { allowPlaintext: false })
    const forbidden = await json('plaintext is off now')
    expect(forbidden.status).toBe(403)
    expect(((await forbidden.json()) as ErrorBody).error.code).toBe('MESH_ERR_PLAINTEXT_FORBIDDEN')
    // Sealed envelopes still go through.
    const r3 = await httpMsgpack<{ state: string }>(sendUrl, {
      method: 'POST',
      token,
      body: { envelope: encodeEnvelope(world.dm(svc, m, 'sealed still ok')) },
    })
    expect(r3.status).toBe(200)
  })
})
