import { afterEach, describe, expect, it } from 'vitest'
import { buildCoordinator, type Coordinator } from '../../coordinator/index.js'
import { openTestStore, storeLegs } from '../../coordinator/store/testing.js'
import { createIdentity, ManualClock } from '../../protocol/index.js'
import { worldsPerTest, type World } from '../../test/support/coordinator-world.js'
import { closePeers, sessionPeer } from '../../test/support/peer-world.js'
import type { Peer } from '../peer.js'
import { memoryStore } from '../store/memory.js'

/** The next `n` messages' payload texts of `peer`'s inbox. */
async function texts(peer: Peer, n: number, timeoutMs = 15_000): Promise<string[]> {
  const got: string[] = []
  for await (const m of peer.messages({ signal: AbortSignal.timeout(timeoutMs) })) {
    got.push((m.payload as { text: string }).text)
    if (got.length === n) break
  }
  return got
}

describe.each(storeLegs())('Peer reconnects (%s)', (driver) => {
  const start = worldsPerTest(driver)
  const extra: Coordinator[] = []
  afterEach(async () => {
    await closePeers()
    for (const c of extra.splice(0)) await c.close()
  })

  /** A world on a store the test owns, so its coordinator can stop and a new one start on that port. */
  async function restartable(): Promise<{ world: World; port: number; restart: () => Promise<void> }> {
    const store = await openTestStore(driver)
    const world = await start({ store })
    await world.createMesh(world.mesh, world.owner, 'owner')
    const port = Number(new URL(world.url).port)
    extra.push({ close: () => store.close() } as Coordinator)
    return {
      world,
      port,
      async restart() {
        const next = await buildCoordinator({
          store,
          identity: world.coordinatorIdentity,
          adminToken: world.adminToken,
          clock: world.clock,
        })
        extra.unshift(next)
        await next.listen({ port })
      },
    }
  }

  it('a peer started while the coordinator is down delivers a send made meanwhile once it is up, 5 s later', async () => {
    const { world, restart } = await restartable()
    const bob = await sessionPeer(world, await world.member('bob'))
    const aliceMember = await world.member('alice')
    await bob.whenConnected()
    await world.coordinator.close()

    const alice = await sessionPeer(world, aliceMember)
    expect(alice.connected).toBe(false)
    const sending = alice.send(bob.identity.publicKey, { text: 'sent while down' })
    // The scenario is the outage itself: the coordinator comes back 5 s later.
    await new Promise((resolve) => setTimeout(resolve, 5_000))
    expect(alice.connected).toBe(false)
    await restart()

    const receipt = await sending
    expect(await texts(bob, 1)).toEqual(['sent while down'])
    await expect
      .poll(async () => (await alice.status(receipt.clientMessageId))?.state, { timeout: 5_000 })
      .toBe('done')
  })

  it("on a new hello the coordinator pushes the presence's queue at once (no sweep, no clock movement)", async () => {
    const { world } = await restartable()
    const bobMember = await world.member('bob')
    const bobKey = createIdentity('session')
    const bob = await sessionPeer(world, bobMember, { identity: bobKey, sessionId: 'bob' })
    const alice = await sessionPeer(world, await world.member('alice'))
    await Promise.all([alice.whenConnected(), bob.whenConnected()])
    await alice.listPeers({ includeOffline: true })
    await bob.close()
    const ids: string[] = []
    for (let i = 0; i < 10; i++)
      ids.push((await alice.send(bobKey.publicKey, { text: `q${i}` })).clientMessageId)
    await expect
      .poll(async () => Promise.all(ids.map(async (id) => (await alice.status(id))?.state)), {
        timeout: 10_000,
      })
      .toEqual(ids.map(() => 'accepted'))
    // The world's clock never moves: only the drain on hello can push these.
    const again = await sessionPeer(world, bobMember, { identity: bobKey, sessionId: 'bob' })
    expect((await texts(again, 10, 10_000)).sort()).toEqual(ids.map((_, i) => `q${i}`).sort())
  })

  it('after a reconnect the outbox sends its rows at once, not after the backoff grown during the outage', async () => {
    const { world, restart } = await restartable()
    const clock = new ManualClock(Date.now())
    const bob = await sessionPeer(world, await world.member('bob'))
    const alice = await sessionPeer(world, await world.member('alice'), { clock, store: memoryStore() })
    await Promise.all([alice.whenConnected(), bob.whenConnected()])
    await alice.listPeers()
    await world.coordinator.close()
    await expect.poll(() => alice.connected, { timeout: 5_000 }).toBe(false)
    for (let i = 0; i < 5; i++) await alice.send(bob.identity.publicKey, { text: `late${i}` })
    // Two minutes of outage: the rows' retries back off to their 30 s cap.
    for (let t = 0; t < 120_000; t += 5_000) await clock.advance(5_000)
    await restart()
    // Only as much time as the reconnect itself takes (its backoff is capped at 500 ms here).
    for (let i = 0; i < 100 && !alice.connected; i++) {
      await clock.advance(100)
      await new Promise((resolve) => setTimeout(resolve, 10))
    }
    expect(alice.connected).toBe(true)
    // From here alice's clock stands still: rows still waiting out a backoff would never go.
    expect((await texts(bob, 5, 10_000)).sort()).toEqual([0, 1, 2, 3, 4].map((i) => `late${i}`))
  })

  it('with the coordinator down for 10 minutes no outbox row goes dead, and all arrive after', async () => {
    const { world, restart } = await restartable()
    const clock = new ManualClock(Date.now())
    const store = memoryStore()
    const bob = await sessionPeer(world, await world.member('bob'))
    const alice = await sessionPeer(world, await world.member('alice'), { clock, store })
    await Promise.all([alice.whenConnected(), bob.whenConnected()])
    await alice.listPeers()
    await world.coordinator.close()
    await expect.poll(() => alice.connected, { timeout: 5_000 }).toBe(false)

    const ids: string[] = []
    for (let i = 0; i < 20; i++)
      ids.push((await alice.send(bob.identity.publicKey, { text: `m${i}` })).clientMessageId)
    // Ten minutes in 5 s steps: every reconnect attempt and every outbox retry falls due and fails.
    for (let t = 0; t < 10 * 60_000; t += 5_000) await clock.advance(5_000)
    const rows = await store.listOutbox(['pending', 'inflight', 'accepted', 'done', 'dead'], 100)
    expect(rows).toHaveLength(20)
    expect(rows.filter((r) => r.state === 'dead')).toEqual([])
    expect(rows.every((r) => r.attempts === 0)).toBe(true)

    await restart()
    for (let i = 0; i < 200 && !alice.connected; i++) await clock.advance(1_000)
    expect(alice.connected).toBe(true)
    // From here time goes on for the coordinator too (its clock is the world's): on a loaded machine a
    // push can miss its ack, and only the coordinator's ackWaitMs deadline and claim lease move it on.
    let ticking = true
    const ticker = (async () => {
      while (ticking) {
        await world.clock.advance(200)
        await clock.advance(200)
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
    })()
    const got = await texts(bob, 20).finally(async () => {
      ticking = false
      await ticker
    })
    expect(got.sort()).toEqual(ids.map((_, i) => `m${i}`).sort())
    for (let i = 0; i < 50; i++) {
      const states = await Promise.all(ids.map(async (id) => (await alice.status(id))?.state))
      if (states.every((s) => s === 'done')) break
      await clock.advance(1_000)
    }
    const states = await Promise.all(ids.map(async (id) => (await alice.status(id))?.state))
    expect(states.every((s) => s === 'done')).toBe(true)
  })
})
