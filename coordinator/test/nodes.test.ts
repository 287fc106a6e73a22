import { afterEach, describe, expect, it } from 'vitest'
import { sealDirect, ulidFactory } from '../../protocol/index.js'
import { startWorld, type World } from '../../test/support/coordinator-world.js'
import { eventually } from '../../test/support/eventually.js'
import { storeLegs } from '../store/testing.js'

const nextId = ulidFactory()

describe.each(storeLegs())('two coordinator nodes on one store (%s)', (driver) => {
  const worlds: World[] = []
  afterEach(async () => {
    for (const w of worlds.reverse()) await w.close()
    worlds.length = 0
  })

  it('a DM queued on node A reaches its recipient on node B at once, and B’s ack settles it', async () => {
    const a = await startWorld(driver)
    worlds.push(a)
    const b = await startWorld(driver, {
      store: a.store,
      clock: a.clock,
      coordinatorIdentity: a.coordinatorIdentity,
      owner: a.owner,
      mesh: a.mesh,
    })
    worlds.push(b)
    const senderKey = a.session(await a.member())
    const recipientKey = a.session(await a.member())
    const sender = await a.connectSession(senderKey)
    const recipient = await b.connectSession(recipientKey)
    const env = sealDirect({
      mesh: a.mesh,
      channel: 'dm',
      from: senderKey.identity,
      to: recipientKey.identity.publicKey,
      clientMessageId: nextId(),
      payload: 'across nodes',
    })
    // Node A does not hold the recipient's socket: it queues, then wakes node B through the store.
    expect(await sender.sendEnvelope(env)).toMatchObject({ state: 'queued', recipientOnline: false })
    const push = await recipient.waitFor('push')
    expect(recipient.pushes()[0]?.envelope?.clientMessageId).toBe(env.clientMessageId)
    expect(push.deliveryId).toBeTypeOf('string')
    await eventually(async () => (await a.store.query('select 1 from delivery')).length === 0, {
      what: 'the ack on node B to settle the row queued by node A',
    })
  })
})
