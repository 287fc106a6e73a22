import { describe, expect, it } from 'vitest'
import { sameMesh, worldsPerTest } from '../../test/support/coordinator-world.js'
import { eventually } from '../../test/support/eventually.js'
import { storeLegs } from '../store/testing.js'

describe.each(storeLegs())('two coordinator nodes on one store (%s)', (driver) => {
  const start = worldsPerTest(driver)

  it('a DM queued on node A reaches its recipient on node B at once, and B’s ack settles it', async () => {
    const a = await start()
    const b = await start(sameMesh(a))
    const senderKey = a.session(await a.member())
    const recipientKey = a.session(await a.member())
    const sender = await a.connectSession(senderKey)
    const recipient = await b.connectSession(recipientKey)
    const env = a.dm(senderKey.identity, recipientKey.identity, 'across nodes')
    // Node A does not hold the recipient's socket: it queues, then wakes node B through the store.
    expect(await sender.sendEnvelope(env)).toMatchObject({ state: 'queued', recipientOnline: false })
    const push = await recipient.waitFor('push')
    expect(recipient.pushes()[0]?.envelope?.clientMessageId).toBe(env.clientMessageId)
    expect(push.deliveryId).toBeTypeOf('string')
    await eventually(async () => (await a.store.query('select 1 from delivery')).length === 0, {
      what: 'the ack on node B to settle the row queued by node A',
    })
  })

  it('a receipt for a sender on another node reaches it there', async () => {
    const a = await start()
    const b = await start(sameMesh(a))
    const senderKey = a.session(await a.member())
    const recipientKey = a.session(await a.member())
    const sender = await a.connectSession(senderKey)
    await (await a.connectSession(recipientKey)).close()
    const env = a.dm(senderKey.identity, recipientKey.identity, 'receipt across nodes')
    expect(await sender.sendEnvelope(env)).toMatchObject({ state: 'queued', recipientOnline: false })
    // The recipient comes back on node B and acks there; the sender's socket is on node A.
    const recipient = await b.connectSession(recipientKey)
    await recipient.waitFor('push')
    const receipt = await sender.waitFor('delivery_receipt', undefined, { timeoutMs: 5_000 })
    expect(receipt).toMatchObject({ clientMessageId: env.clientMessageId, status: 'delivered' })
    expect(receipt.recipient).toEqual(recipientKey.identity.publicKey)
    expect(sender.frames('delivery_receipt')).toHaveLength(1)
  })
})
