import { join } from 'node:path'
import { afterEach, describe, expect, it, onTestFinished } from 'vitest'
import { storeLegs } from '../../coordinator/store/testing.js'
import { createIdentity, toHex } from '../../protocol/index.js'
import { worldsPerTest } from '../../test/support/coordinator-world.js'
import { eventually } from '../../test/support/eventually.js'
import { closePeers, nextMessages, sessionPeer, tempDir } from '../../test/support/peer-world.js'
import { sqliteStore } from '../node/sqlite-store.js'

describe.each(storeLegs())('receipts a sender was away for (%s)', (driver) => {
  const start = worldsPerTest(driver)
  afterEach(closePeers)

  it('a sender gone while its offline recipient came back and acked finds the message done after its next hello', async () => {
    const world = await start()
    const [aliceMember, bobMember] = [await world.member('alice'), await world.member('bob')]
    const aliceKey = createIdentity('session')
    const bobKey = createIdentity('session')
    const path = join(tempDir(), 'alice.db')
    const bob = await sessionPeer(world, bobMember, { identity: bobKey, sessionId: 'bob' })
    const first = sqliteStore({ path })
    const alice = await sessionPeer(world, aliceMember, {
      identity: aliceKey,
      sessionId: 'alice',
      store: first,
    })
    await Promise.all([alice.whenConnected(), bob.whenConnected()])
    await alice.listPeers({ includeOffline: true })
    await bob.close()

    const ids: string[] = []
    for (let i = 0; i < 3; i++)
      ids.push((await alice.send(bobKey.publicKey, { text: `out ${i}` })).clientMessageId)
    await expect
      .poll(async () => Promise.all(ids.map(async (id) => (await alice.status(id))?.state)), {
        timeout: 10_000,
      })
      .toEqual(['accepted', 'accepted', 'accepted'])
    // Alice goes away; bob comes back, reads and acks: the receipts find no alice to go to.
    await alice.close()
    await first.close()
    const bobAgain = await sessionPeer(world, bobMember, { identity: bobKey, sessionId: 'bob' })
    const texts = (await nextMessages(bobAgain, 3)).map((m) => (m.payload as { text: string }).text)
    expect(texts.sort()).toEqual(['out 0', 'out 1', 'out 2'])
    await eventually(async () => (await world.store.query('select 1 from delivery')).length === 0, {
      what: 'every copy acked',
    })

    // Alice, restarted on her store, learns it by sending again after her hello.
    const second = sqliteStore({ path })
    onTestFinished(() => second.close())
    const back = await sessionPeer(world, aliceMember, {
      identity: aliceKey,
      sessionId: 'alice',
      store: second,
    })
    await expect
      .poll(async () => Promise.all(ids.map(async (id) => (await back.status(id))?.state)), {
        timeout: 10_000,
      })
      .toEqual(['done', 'done', 'done'])
    for (const id of ids) {
      expect((await back.status(id))?.recipients).toEqual({ [toHex(bobKey.publicKey)]: 'delivered' })
    }
    // Nothing reached bob twice.
    const more: unknown[] = []
    for await (const m of bobAgain.messages({ signal: AbortSignal.timeout(1_000) })) more.push(m.payload)
    expect(more).toEqual([])
  })
})
