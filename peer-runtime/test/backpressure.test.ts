/**
 * Backpressure a caller can see (issue 21), with the coordinator stalled behind a TCP proxy that holds
 * every byte both ways: 10,000 sends fill the outbox to its limit, a send past it is refused
 * `MESH_ERR_OUTBOX_FULL` with `retryAfterMs`, a `waitForRoom` send blocks, and once the link resumes
 * `drain` fires, the blocked send goes in, and every message arrives exactly once.
 */
import { afterEach, describe, expect, it } from 'vitest'
import { storeLegs } from '../../coordinator/store/testing.js'
import { ulidFactory } from '../../protocol/index.js'
import { waitFor } from '../../transports/emitter.js'
import { worldsPerTest } from '../../test/support/coordinator-world.js'
import { closePeers, nextMessages, sessionPeer, UNLIMITED_RATE } from '../../test/support/peer-world.js'
import { rejection } from '../../test/support/rejection.js'
import { startTcpProxy, type TcpProxy } from '../../test/support/tcp-proxy.js'
import { OUTBOX_WATER } from '../outbox.js'
import type { Peer, PeerEvents } from '../peer.js'
import type { TypedEmitter } from '../../transports/types.js'

/** The peer as `waitFor` infers event maps (through the `TypedEmitter` interface). */
const events = (peer: Peer): TypedEmitter<PeerEvents> => peer

/** Stalls `proxy` until the returned `resume()` (stalls overlap, so renewing one keeps it held). */
function hold(proxy: TcpProxy): { resume: () => Promise<void> } {
  let holding = true
  const stalls: Promise<void>[] = [proxy.stall(400)]
  const renew = setInterval(() => {
    if (holding) stalls.push(proxy.stall(400))
  }, 100)
  return {
    resume: async () => {
      holding = false
      clearInterval(renew)
      await Promise.all(stalls) // the last one ending flushes what was held
    },
  }
}

const proxies: TcpProxy[] = []
afterEach(async () => {
  for (const proxy of proxies.splice(0)) await proxy.close()
})

describe.each(storeLegs())('outbox backpressure with the coordinator stalled (%s)', (driver) => {
  const start = worldsPerTest(driver)
  afterEach(closePeers)

  it('10,000 sends reach the limit; past it OUTBOX_FULL, waitForRoom blocks; after the stall drain, all arrive once', async () => {
    const world = await start({ limits: { rate: UNLIMITED_RATE } })
    const proxy = await startTcpProxy({ targetPort: Number(new URL(world.url).port) })
    proxies.push(proxy)
    const receiver = await sessionPeer(world, await world.member('bob'))
    const sender = await sessionPeer(world, await world.member('alice'), {
      url: `${proxy.url.replace(/^http/, 'ws')}/ws`,
    })
    await Promise.all([sender.whenConnected(), receiver.whenConnected()])
    const to = receiver.identity.publicKey
    const { highWaterMark, maxDepth } = OUTBOX_WATER
    let drains = 0
    sender.on('drain', () => drains++)

    // The receiver consumes as an application does (its memory store acks on consumption).
    const arriving = nextMessages(receiver, maxDepth + 1, 240_000)
    const stalled = hold(proxy)
    const sent = await Promise.all(Array.from({ length: maxDepth }, (_, i) => sender.send(to, { i })))
    expect(sender.outboxDepth).toBe(maxDepth)
    expect(sender.outboxDepth).toBeGreaterThan(highWaterMark)
    expect(sender.stats().outboxDepth).toBe(maxDepth)

    // A send that waits for room, then one that does not: the second is refused at the limit, and by
    // the time its refusal is back the first, had it not been blocked, would have been stored.
    const waitedId = ulidFactory()()
    let roomGiven = false
    const waiting = sender
      .send(to, { waited: true }, { waitForRoom: true, clientMessageId: waitedId })
      .then((receipt) => {
        roomGiven = true
        return receipt
      })
    const full = await rejection(sender.send(to, { over: true }))
    expect(full.code).toBe('MESH_ERR_OUTBOX_FULL')
    expect(full.details).toMatchObject({ outboxDepth: maxDepth, maxDepth })
    expect(full.details['retryAfterMs']).toBeGreaterThan(0)
    // Nothing leaves while the link is held: the depth stays at the limit and the caller stays blocked.
    expect(await sender.status(waitedId)).toBeUndefined()
    expect(roomGiven).toBe(false)
    expect(sender.outboxDepth).toBe(maxDepth)
    expect(drains).toBe(0)

    const drained = waitFor(events(sender), 'drain', { signal: AbortSignal.timeout(120_000) })
    await stalled.resume()
    await drained
    const late = await waiting
    expect(roomGiven).toBe(true)

    expect(late.clientMessageId).toBe(waitedId)
    const ids = [...sent.map((r) => r.clientMessageId), waitedId]
    const got = await arriving
    const seen = got.map((m) => m.clientMessageId)
    expect(new Set(seen).size).toBe(seen.length)
    expect(new Set(seen)).toEqual(new Set(ids))
    await sender.settled(AbortSignal.timeout(60_000))
    expect(sender.outboxDepth).toBe(0)
    expect(drains).toBe(1)
    expect(proxy.counters.stalls).toBeGreaterThan(0)
  }, 300_000)
})
