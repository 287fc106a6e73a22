/**
 * The runtime's rate gate against a real coordinator over real sockets (issue 21): the coordinator's
 * limiter still refuses a raw member that sends 10× its rate, while a runtime `Peer` offered the same
 * load paces itself through the gate and gets every message delivered with (near) no refusal; the
 * presences of one member in one process share one gate; a refusal caused by another process of the
 * member pauses the gate for all instead of sending each row back to the outbox.
 */
import { afterEach, describe, expect, it } from 'vitest'
import { storeLegs } from '../../coordinator/store/testing.js'
import { isMeshError, ManualClock, type ClockTimer, type Envelope } from '../../protocol/index.js'
import { worldsPerTest, type World } from '../../test/support/coordinator-world.js'
import { closePeers, nextMessages, sessionPeer } from '../../test/support/peer-world.js'
import type { Peer } from '../peer.js'
import { sharedRateGates } from '../rate-gate.js'

/**
 * The coordinator on wall-clock time: its buckets must refill while the runtime paces on the system
 * clock (the world's ManualClock would never refill them).
 */
class WallClock extends ManualClock {
  override now(): number {
    return Date.now()
  }
  override setTimeout(fn: () => void, ms: number): ClockTimer {
    const timer = setTimeout(fn, ms)
    return { cancel: () => clearTimeout(timer) }
  }
}

/** 100 messages a second with a burst of 50; bytes lifted (this is about message pacing). */
const RATE = { messageBurst: 50, messagesPerSecond: 100, byteBurst: 1e12, bytesPerSecond: 1e12 }
/** Ten times the steady rate, offered at once: three seconds of sending. */
const OFFERED = 300

/** Counts the outbox rows that went back to `pending` after a rate-limit refusal (a row retrying alone). */
function rowsRetriedAlone(peer: Peer): { count: number } {
  const seen = { count: 0 }
  peer.on('outbox', (row) => {
    if (row.state === 'pending' && row.lastError?.code === 'MESH_ERR_RATE_LIMITED') seen.count++
  })
  return seen
}

async function receivedOnce(receiver: Peer, ids: string[]): Promise<void> {
  const got = await nextMessages(receiver, ids.length, 30_000)
  const seen = got.map((m) => m.clientMessageId)
  expect(new Set(seen).size).toBe(ids.length)
  expect(new Set(seen)).toEqual(new Set(ids))
}

describe.each(storeLegs())('the rate gate against a real coordinator (%s)', (driver) => {
  const start = worldsPerTest(driver)
  afterEach(closePeers)

  const world = (): Promise<World> => start({ clock: new WallClock(), limits: { rate: RATE } })

  it('the limiter refuses a raw member at 10× its rate; a runtime peer at 10× is paced and delivers all', async () => {
    const w = await world()
    const raw = await w.member('raw')
    const bob = await w.member('bob')
    const rawClient = await w.connectMember(raw)
    expect(rawClient.helloAck.limits.rate?.member).toEqual(RATE)

    // The raw member: every send at once, nothing pacing it.
    const envelopes: Envelope[] = []
    for (let i = 0; i < OFFERED; i++) envelopes.push(w.dm(raw, bob.publicKey, i))
    const outcomes = await Promise.all(
      envelopes.map((env) =>
        rawClient.sendEnvelope(env, { timeoutMs: 20_000 }).then(
          () => 'accepted',
          (err: unknown) => (isMeshError(err) ? err.code : String(err)),
        ),
      ),
    )
    const refused = outcomes.filter((o) => o === 'MESH_ERR_RATE_LIMITED').length
    expect(refused).toBeGreaterThan(OFFERED / 2)
    expect(outcomes.filter((o) => o !== 'accepted' && o !== 'MESH_ERR_RATE_LIMITED')).toEqual([])

    // The runtime: the same load through `Peer.send`, to a receiving session.
    const alice = await sessionPeer(w, await w.member('alice'))
    const receiver = await sessionPeer(w, bob)
    await Promise.all([alice.whenConnected(), receiver.whenConnected()])
    const alone = rowsRetriedAlone(alice)
    const ids = await Promise.all(
      Array.from({ length: OFFERED }, (_, i) => alice.send(receiver.identity.publicKey, { i })),
    ).then((receipts) => receipts.map((r) => r.clientMessageId))
    await receivedOnce(receiver, ids)
    await alice.settled(AbortSignal.timeout(30_000))

    const stats = alice.stats()
    expect(stats.rateLimited).toBeLessThanOrEqual(3) // near zero: jitter of two busy cores, at most
    expect(stats.relaySends).toBe(OFFERED + stats.rateLimited)
    expect(stats.gate.waited).toBeGreaterThan(OFFERED / 2) // the gate did the waiting
    expect(stats.gate.passed).toBe(stats.relaySends)
    expect(alone.count).toBe(0)
    expect(stats.outboxDepth).toBe(0)
  })

  it("a member's sessions in one process share one gate, so together they stay under its bucket", async () => {
    const w = await world()
    const alice = await w.member('alice')
    const bob = await sessionPeer(w, await w.member('bob'))
    const before = sharedRateGates()
    const one = await sessionPeer(w, alice)
    const two = await sessionPeer(w, alice)
    expect(sharedRateGates()).toBe(before + 1)
    await Promise.all([one.whenConnected(), two.whenConnected(), bob.whenConnected()])

    const half = OFFERED / 2
    const sends = [one, two].flatMap((peer) =>
      Array.from({ length: half }, (_, i) => peer.send(bob.identity.publicKey, { i })),
    )
    const ids = (await Promise.all(sends)).map((r) => r.clientMessageId)
    await receivedOnce(bob, ids)

    // Two gates of their own would each spend the whole burst and pace at 90 % of the rate: 180 % of
    // the member's bucket, refused by the dozen. One shared gate keeps both under it.
    const refused = one.stats().rateLimited + two.stats().rateLimited
    expect(refused).toBeLessThanOrEqual(3)
    expect(one.stats().gate).toEqual(two.stats().gate)
    expect(one.stats().gate.passed).toBe(OFFERED + refused)

    await one.close()
    expect(sharedRateGates()).toBe(before + 1)
    await two.close()
    expect(sharedRateGates()).toBe(before)
  })

  it('a refusal caused by another process of the member pauses the gate for every row', async () => {
    const w = await world()
    const alice = await w.member('alice')
    const bobMember = await w.member('bob')
    const bob = await sessionPeer(w, bobMember)
    const peer = await sessionPeer(w, alice)
    await Promise.all([peer.whenConnected(), bob.whenConnected()])
    const alone = rowsRetriedAlone(peer)

    // "Another process": a raw session of the same member, spending the member's bucket unpaced, all of
    // it before the peer sends (its gate, which has spent nothing, still counts on a full burst).
    const other = await w.connectSession(w.session(alice))
    await Promise.all(
      Array.from({ length: 100 }, (_, i) =>
        other
          .sendEnvelope(w.dm(other.identity, bobMember.publicKey, i), { timeoutMs: 20_000 })
          .catch(() => undefined),
      ),
    )
    const ids = (
      await Promise.all(Array.from({ length: 200 }, (_, i) => peer.send(bob.identity.publicKey, { i })))
    ).map((r) => r.clientMessageId)
    await receivedOnce(bob, ids)

    const stats = peer.stats()
    expect(stats.rateLimited).toBeGreaterThan(0) // the other process took the bucket
    expect(stats.gate.pauses).toBe(stats.rateLimited)
    expect(alone.count).toBe(0) // no row went back to wait on its own
    expect(stats.relaySends).toBe(200 + stats.rateLimited)
  })
})
