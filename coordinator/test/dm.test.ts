import { describe, expect, it } from 'vitest'
import { openEnvelope, sealDirect } from '../../protocol/index.js'
import { worldsPerTest, type World } from '../../test/support/coordinator-world.js'
import { eventually } from '../../test/support/eventually.js'
import { storeLegs } from '../store/testing.js'

async function storedDeliveries(world: World): Promise<number> {
  const rows = await world.store.query<{ n: number }>('select count(*)::int as n from delivery')
  return rows[0]!.n
}

describe.each(storeLegs())('direct messages (%s)', (driver) => {
  const start = worldsPerTest(driver)

  it('two sessions DM each other both ways: delivered on the fast path, nothing stored', async () => {
    const world = await start()
    const s1 = world.session(await world.member('one'))
    const s2 = world.session(await world.member('two'))
    const a = await world.connectSession(s1)
    const b = await world.connectSession(s2)

    const ack1 = await a.sendEnvelope(world.dm(s1.identity, s2.identity, 'hello b'))
    expect(ack1).toMatchObject({ state: 'delivered', recipientOnline: true })
    const atB = await b.waitFor('push')
    const opened = openEnvelope(b.pushes()[0]!.envelope!, s2.identity)
    expect(opened).toMatchObject({ ok: true, payload: 'hello b' })
    expect(atB.deliveryId).toBeTypeOf('string')

    const ack2 = await b.sendEnvelope(world.dm(s2.identity, s1.identity, 'hello a'))
    expect(ack2.state).toBe('delivered')
    await a.waitFor('push')
    expect(openEnvelope(a.pushes()[0]!.envelope!, s1.identity)).toMatchObject({
      ok: true,
      payload: 'hello a',
    })
    expect(await storedDeliveries(world)).toBe(0)
  })

  it('a receiver slower than ackWaitMs: the ack says queued, then a delivery_receipt follows', async () => {
    const world = await start()
    const clock = world.clock
    const s1 = world.session(await world.member())
    const s2 = world.session(await world.member())
    const a = await world.connectSession(s1)
    const b = await world.connectSession(s2, { autoAck: false })
    const env = world.dm(s1.identity, s2.identity)
    const ack = a.sendEnvelope(env)
    const push = await b.waitFor('push')
    await clock.advance(500)
    expect(await ack).toMatchObject({ state: 'queued', recipientOnline: true })
    expect(await storedDeliveries(world)).toBe(1)
    b.send({ t: 'client_ack', deliveryId: push.deliveryId, status: 'ok' })
    const receipt = await a.waitFor('delivery_receipt')
    expect(receipt).toMatchObject({ clientMessageId: env.clientMessageId, status: 'delivered' })
    expect(receipt.recipient).toEqual(s2.identity.publicKey)
    expect(await storedDeliveries(world)).toBe(0)
    // The claim held by b's connection kept the row from being pushed twice meanwhile.
    expect(b.frames('push')).toHaveLength(1)
  })

  it('a DM to an offline session is queued, arrives once when it connects, and its sender gets a receipt', async () => {
    const world = await start()
    const s1 = world.session(await world.member())
    const s2 = world.session(await world.member())
    const a = await world.connectSession(s1)
    await (await world.connectSession(s2)).close()

    const env = world.dm(s1.identity, s2.identity, { n: 1 })
    expect(await a.sendEnvelope(env)).toMatchObject({ state: 'queued', recipientOnline: false })
    expect(await storedDeliveries(world)).toBe(1)

    const b = await world.connectSession(s2)
    await b.waitFor('push')
    const receipt = await a.waitFor('delivery_receipt')
    expect(receipt).toMatchObject({ clientMessageId: env.clientMessageId, status: 'delivered' })
    await world.coordinator.sweep()
    expect(b.frames('push')).toHaveLength(1)
    expect(await storedDeliveries(world)).toBe(0)
  })

  it('a sender away when its receipt was due learns the outcome by sending again (duplicate says delivered)', async () => {
    const world = await start()
    const s1 = world.session(await world.member())
    const s2 = world.session(await world.member())
    const a = await world.connectSession(s1)
    await (await world.connectSession(s2)).close()
    const env = world.dm(s1.identity, s2.identity, { n: 1 })
    const expired = sealDirect({
      mesh: world.mesh,
      channel: 'dm',
      from: s1.identity,
      to: s2.identity.publicKey,
      clientMessageId: '01M9EXP1RES00000000000000A',
      meta: { expiresAt: world.clock.now() + 1_000 },
      payload: { n: 2 },
    })
    expect(await a.sendEnvelope(env)).toMatchObject({ state: 'queued', recipientOnline: false })
    expect(await a.sendEnvelope(expired)).toMatchObject({ state: 'queued', recipientOnline: false })
    await a.close()

    // The second copy expires unread; the first is acked while its sender is gone: no receipt reaches it.
    await world.clock.advance(2_000)
    await world.coordinator.sweep()
    const b = await world.connectSession(s2)
    await b.waitFor('push')
    await eventually(async () => (await storedDeliveries(world)) === 0, { what: 'the copy acked' })

    const hex = Buffer.from(s2.identity.publicKey).toString('hex')
    const back = await world.connectSession(s1)
    // Sent again, each answers what became of it, from memory and (on a fresh node) from the store.
    expect(await back.sendEnvelope(env)).toMatchObject({
      duplicate: true,
      state: 'delivered',
      recipients: { [hex]: 'delivered' },
    })
    expect(await back.sendEnvelope(expired)).toMatchObject({
      duplicate: true,
      state: 'queued',
      recipients: { [hex]: 'expired' },
    })
    expect(back.frames('delivery_receipt')).toEqual([])
    // The store says so too: another node, or this one after a restart, answers the same.
    const rows = await world.store.query<{ client_message_id: string; state: string }>(
      'select client_message_id, state from dedupe order by client_message_id',
    )
    expect(Object.fromEntries(rows.map((r) => [r.client_message_id, r.state]))).toEqual({
      [expired.clientMessageId]: 'queued',
      [env.clientMessageId]: 'delivered',
    })
  })

  it('a DM to a member key goes to that member’s control-plane presence, or waits for it', async () => {
    const world = await start()
    const m1 = await world.member()
    const m2 = await world.member()
    const a = await world.connectMember(m1)
    const env = world.dm(m1, m2, 'to the daemon')
    expect(await a.sendEnvelope(env)).toMatchObject({ state: 'queued', recipientOnline: false })
    const b = await world.connectMember(m2)
    await b.waitFor('push')
    expect(openEnvelope(b.pushes()[0]!.envelope!, m2)).toMatchObject({ ok: true, payload: 'to the daemon' })
  })

  it('reports an undecryptable or rejected ack to the sender as that recipient state', async () => {
    const world = await start()
    const s1 = world.session(await world.member())
    const s2 = world.session(await world.member())
    const a = await world.connectSession(s1)
    await world.connectSession(s2, { autoAck: () => 'undecryptable' })
    const ack = await a.sendEnvelope(world.dm(s1.identity, s2.identity))
    expect(ack.state).toBe('delivered')
    expect(ack.recipients).toEqual({ [Buffer.from(s2.identity.publicKey).toString('hex')]: 'undecryptable' })
  })
})
