import { describe, expect, it } from 'vitest'
import { RateLimiter } from '../coordinator/delivery/rate-limit.js'
import { ManualClock } from '../protocol/clock.js'
import { isMeshError } from '../protocol/errors.js'
import type { RateBucket } from '../protocol/frames.js'
import { acquireRateGate, paceFor, RateGate, sharedRateGates } from './rate-gate.js'

const T0 = Date.UTC(2026, 0, 1)
const BUCKET: RateBucket = {
  messageBurst: 10,
  messagesPerSecond: 20,
  byteBurst: 10_000,
  bytesPerSecond: 10_000,
}

/** Starts `n` takes of `bytes` each and records, per take, the clock time it passed. */
function takes(gate: RateGate, clock: ManualClock, n: number, bytes = 100): { passedAt: number[] } {
  const passedAt: number[] = []
  for (let i = 0; i < n; i++) void gate.take(bytes).then(() => passedAt.push(clock.now()))
  return { passedAt }
}

describe('paceFor', () => {
  it('paces under the announced bucket: 97 % of the rates, a burst a tenth or 100 ms short, never below one', () => {
    expect(
      paceFor({ messageBurst: 200, messagesPerSecond: 100, byteBurst: 1000, bytesPerSecond: 1000 }),
    ).toEqual({
      messageBurst: 180,
      messagesPerSecond: 97,
      byteBurst: 900,
      bytesPerSecond: 970,
    })
    expect(
      paceFor({ messageBurst: 1, messagesPerSecond: 1, byteBurst: 5, bytesPerSecond: 5 }).messageBurst,
    ).toBe(1)
    expect(
      paceFor({ messageBurst: 5, messagesPerSecond: 1, byteBurst: 5, bytesPerSecond: 5 }).messageBurst,
    ).toBe(4)
    // 100 ms of a fast rate is more than a tenth of a small burst.
    expect(
      paceFor({ messageBurst: 20, messagesPerSecond: 100, byteBurst: 5, bytesPerSecond: 5 }).messageBurst,
    ).toBe(10)
  })
})

describe('RateGate', () => {
  it('lets everything through while nothing was announced (an older coordinator)', async () => {
    const gate = new RateGate({ clock: new ManualClock(T0) })
    for (let i = 0; i < 1000; i++) await gate.take(60_000)
    expect(gate.stats).toMatchObject({ passed: 1000, waited: 0, queued: 0 })
  })

  it('passes the margined burst at once, then one message per 1/(0.97 rate), in order', async () => {
    const clock = new ManualClock(T0)
    const gate = new RateGate({ clock })
    gate.configure(BUCKET)
    const { passedAt } = takes(gate, clock, 20)
    await clock.advance(0)
    expect(passedAt).toHaveLength(8) // burst 10, 100 ms of 20/s short
    // 19.4 messages a second: the 9th passes after 1/19.4 s (52 ms), the 20th after 12/19.4 s.
    await clock.advance(51)
    expect(passedAt).toHaveLength(8)
    await clock.advance(1)
    expect(passedAt).toHaveLength(9)
    await clock.advance(1_000)
    expect(passedAt).toHaveLength(20)
    expect(passedAt.at(-1)! - T0).toBeLessThanOrEqual(Math.ceil((12 / 19.4) * 1000) + 1)
    expect([...passedAt].sort((a, b) => a - b)).toEqual(passedAt)
    expect(gate.stats).toMatchObject({ passed: 20, waited: 12, queued: 0 })
    expect(gate.stats.waitedMs).toBeGreaterThan(0)
  })

  it('never lets a send through that the coordinator limiter on the same clock would refuse', async () => {
    const clock = new ManualClock(T0)
    const bucket = { ...BUCKET, bytesPerSecond: 50_000 }
    const limiter = new RateLimiter(clock, { ...bucket })
    const gate = new RateGate({ clock })
    gate.configure(bucket)
    let refused = 0
    let sent = 0
    // 10× the rate offered: 200 sends a second of mixed sizes (some above the byte burst).
    const sizes = [100, 3_000, 50, 12_000, 700]
    for (let i = 0; i < 400; i++) {
      const size = sizes[i % sizes.length]!
      void gate.take(size).then(() => {
        try {
          limiter.take('member', size)
          sent++
        } catch (err) {
          if (!isMeshError(err, 'MESH_ERR_RATE_LIMITED')) throw err
          refused++
        }
      })
      await clock.advance(5)
    }
    await clock.advance(60_000)
    expect(sent).toBe(400)
    expect(refused).toBe(0)
  })

  it('pause stops every send for retryAfterMs, then refills from empty', async () => {
    const clock = new ManualClock(T0)
    const gate = new RateGate({ clock })
    gate.configure(BUCKET)
    await gate.take(10)
    gate.pause(1_000)
    const { passedAt } = takes(gate, clock, 3)
    await clock.advance(999)
    expect(passedAt).toHaveLength(0)
    // Empty at the end of the pause: the first passes 1/18 s after it.
    await clock.advance(57)
    expect(passedAt).toHaveLength(1)
    await clock.advance(200)
    expect(passedAt).toHaveLength(3)
    expect(gate.stats.pauses).toBe(1)
  })

  it('a pause holds an unpaced gate too', async () => {
    const clock = new ManualClock(T0)
    const gate = new RateGate({ clock })
    gate.pause(500)
    const { passedAt } = takes(gate, clock, 2)
    await clock.advance(499)
    expect(passedAt).toHaveLength(0)
    await clock.advance(1)
    expect(passedAt).toHaveLength(2)
  })

  it('an aborted take leaves the queue; those behind it move up', async () => {
    const clock = new ManualClock(T0)
    const gate = new RateGate({ clock })
    gate.configure({ ...BUCKET, messageBurst: 1 })
    await gate.take(1)
    const controller = new AbortController()
    const first = gate.take(1, controller.signal)
    const { passedAt } = takes(gate, clock, 1)
    controller.abort(new Error('gave up'))
    await expect(first).rejects.toThrow('gave up')
    await clock.advance(60)
    expect(passedAt).toHaveLength(1)
    expect(gate.stats.queued).toBe(0)
  })

  it('waits for byte tokens; a message larger than the byte burst passes on a full bucket', async () => {
    const clock = new ManualClock(T0)
    const gate = new RateGate({ clock })
    gate.configure({ messageBurst: 100, messagesPerSecond: 100, byteBurst: 1_000, bytesPerSecond: 1_000 })
    await gate.take(5_000) // full bucket (900 after the margin): passes, leaves it in debt
    const { passedAt } = takes(gate, clock, 1, 900)
    await clock.advance(5_000)
    expect(passedAt).toHaveLength(0)
    await clock.advance(2_000) // 4,100 of debt + 900 at 900 bytes a second: 5.6 s
    expect(passedAt).toHaveLength(1)
  })
})

describe('acquireRateGate', () => {
  it('one gate per coordinator, mesh and member; forgotten with its last user', async () => {
    const before = sharedRateGates()
    const key = { url: 'ws://127.0.0.1:1/ws', mesh: 'm', memberHex: 'aa' }
    const a = acquireRateGate(key)
    const b = acquireRateGate(key)
    const other = acquireRateGate({ ...key, memberHex: 'bb' })
    expect(a.gate).toBe(b.gate)
    expect(other.gate).not.toBe(a.gate)
    expect(sharedRateGates()).toBe(before + 2)
    a.gate.pause(60_000)
    const waiting = b.gate.take(1)
    a.release()
    a.release() // once only
    expect(sharedRateGates()).toBe(before + 2)
    b.release()
    await expect(waiting).rejects.toMatchObject({ code: 'MESH_ERR_TRANSPORT_CLOSED' })
    other.release()
    expect(sharedRateGates()).toBe(before)
    expect(acquireRateGate(key).gate).not.toBe(a.gate)
  })
})
