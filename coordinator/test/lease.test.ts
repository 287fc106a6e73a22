import { describe, expect, it } from 'vitest'
import { toHex } from '../../protocol/index.js'
import { sameMesh, worldsPerTest, type World } from '../../test/support/coordinator-world.js'
import { eventually } from '../../test/support/eventually.js'
import type { MeshClient } from '../../test/support/mesh-client.js'
import { storeLegs } from '../store/testing.js'

/** Waits until the coordinator has seen the socket of `pk` go (its row is leased). */
async function leased(world: World, pk: Uint8Array): Promise<void> {
  await eventually(() => world.leased(pk), { what: 'the presence to be leased' })
}

/** Presence events about `pk` an observer has seen. */
function eventsAbout(observer: MeshClient, pk: Uint8Array): string[] {
  const hex = toHex(pk)
  return observer
    .frames('presence')
    .filter((f) => toHex(f.peer.pk) === hex)
    .map((f) => f.event)
}

describe.each(storeLegs())('presence lease (%s)', (driver) => {
  const start = worldsPerTest(driver)

  /** A world whose coordinator stops while `leaver` is connected, and a key to watch from afterwards. */
  async function stopWithLeaverOnline() {
    const first = await start()
    const watcherKey = first.session(await first.member())
    const leaver = first.session(await first.member())
    await first.connectSession(leaver)
    await first.coordinator.close()
    return { first, clock: first.clock, watcherKey, leaver }
  }

  it('a reconnect within 90 s is silent to other peers, and queued DMs drain', async () => {
    const world = await start()
    const clock = world.clock
    const sender = world.session(await world.member())
    const roamer = world.session(await world.member())
    const observer = await world.connectSession(sender)
    const first = await world.connectSession(roamer)
    await observer.waitFor('presence', (f) => f.event === 'joined')
    await first.terminate()
    await leased(world, roamer.identity.publicKey)
    await clock.advance(30_000)
    expect((await observer.sendEnvelope(world.dm(sender.identity, roamer.identity))).state).toBe('queued')
    await clock.advance(30_000)
    const back = await world.connectSession(roamer)
    await back.waitFor('push')
    await clock.advance(120_000)
    await observer.request({ t: 'list_peers' })
    expect(eventsAbout(observer, roamer.identity.publicKey)).toEqual(['joined'])
    const peers = await observer.request({ t: 'list_peers' })
    expect(peers.peers.find((p) => toHex(p.pk) === toHex(roamer.identity.publicKey))?.online).toBe(true)
  })

  it('without a reconnect, exactly one peer_left at 90 s', async () => {
    const world = await start()
    const clock = world.clock
    const observer = await world.connectSession(world.session(await world.member()))
    const leaver = world.session(await world.member())
    await (await world.connectSession(leaver)).terminate()
    await leased(world, leaver.identity.publicKey)
    await clock.advance(89_000)
    expect(eventsAbout(observer, leaver.identity.publicKey)).toEqual(['joined'])
    await clock.advance(1_000)
    const left = await observer.waitFor('presence', (f) => f.event === 'left')
    expect(toHex(left.peer.pk)).toBe(toHex(leaver.identity.publicKey))
    expect(left.peer.online).toBe(false)
    await clock.advance(300_000)
    await observer.request({ t: 'list_peers' })
    expect(eventsAbout(observer, leaver.identity.publicKey)).toEqual(['joined', 'left'])
    const peers = await observer.request({ t: 'list_peers' })
    expect(peers.peers.map((p) => toHex(p.pk))).not.toContain(toHex(leaver.identity.publicKey))
    const all = await observer.request({ t: 'list_peers', includeOffline: true })
    expect(all.peers.map((p) => toHex(p.pk))).toContain(toHex(leaver.identity.publicKey))
  })

  it('after a coordinator restart the lease still runs out, once', async () => {
    const { first, clock, watcherKey, leaver } = await stopWithLeaverOnline()

    const second = await start(sameMesh(first))
    const observer = await second.connectSession(watcherKey)
    await clock.advance(89_000)
    expect(eventsAbout(observer, leaver.identity.publicKey)).toEqual([])
    await clock.advance(2_000)
    await observer.waitFor('presence', (f) => f.event === 'left')
    await clock.advance(300_000)
    await observer.request({ t: 'list_peers' })
    expect(eventsAbout(observer, leaver.identity.publicKey)).toEqual(['left'])
  })

  it('a crashed node’s presences get a fresh lease once its heartbeat is stale, then one peer_left', async () => {
    const { first, clock, watcherKey, leaver } = await stopWithLeaverOnline()
    // What kill -9 leaves behind: the presence still marked connected on a node that stopped beating.
    await first.store.query('update presence set connected = true, lease_until = null')
    expect((await first.store.query('select id from node')).length).toBe(1)

    const second = await start(sameMesh(first))
    const observer = await second.connectSession(watcherKey)
    const online = await observer.request({ t: 'list_peers' })
    expect(online.peers.map((p) => toHex(p.pk))).toContain(toHex(leaver.identity.publicKey))
    // Stale after 30 s (seen by the 5 s sweep), then a 90 s lease.
    await clock.advance(30_000 + 85_000)
    expect(eventsAbout(observer, leaver.identity.publicKey)).toEqual([])
    await clock.advance(15_000)
    await observer.waitFor('presence', (f) => f.event === 'left')
    await clock.advance(300_000)
    await observer.request({ t: 'list_peers' })
    expect(eventsAbout(observer, leaver.identity.publicKey)).toEqual(['left'])
  })
})
