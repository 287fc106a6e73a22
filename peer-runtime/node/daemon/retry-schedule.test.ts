import { describe, expect, it } from 'vitest'
import { ManualClock } from '../../../protocol/clock.js'
import { RetrySchedule } from './retry-schedule.js'

describe('RetrySchedule (background retries of what did not open)', () => {
  it('doubles from the base to the cap, jittered in the upper half, on the injected clock', async () => {
    const clock = new ManualClock()
    let random = 0
    const retry = new RetrySchedule(clock, { baseMs: 100, capMs: 1_000 }, () => random)
    const runs: number[] = []
    const delays: number[] = []
    for (let i = 0; i < 6; i++) {
      delays.push(retry.failed(new Error(`#${i}`), () => runs.push(clock.now())))
      expect(retry.retryAt).toBe(clock.now() + delays[i]!)
      await clock.advance(delays[i]! - 1)
      expect(runs).toHaveLength(i) // not yet
      await clock.advance(1)
      expect(runs).toHaveLength(i + 1)
      // While the try runs (until the next failure or cancel) it still says when it started.
      expect(retry.retryAt).toBe(clock.now())
    }
    // random 0: half of each ceiling (100, 200, 400, 800, then the 1 s cap).
    expect(delays).toEqual([50, 100, 200, 400, 500, 500])
    expect(retry.attempts).toBe(6)
    expect((retry.lastError as Error).message).toBe('#5')

    random = 0.999
    expect(retry.failed('again', () => undefined)).toBe(999)
  })

  it('cancel() drops the scheduled try, and a new failure replaces the one scheduled', async () => {
    const clock = new ManualClock()
    const retry = new RetrySchedule(clock, { baseMs: 100, capMs: 100 }, () => 0)
    let a = 0
    let b = 0
    retry.failed('x', () => a++)
    retry.failed('y', () => b++)
    await clock.advance(1_000)
    expect([a, b]).toEqual([0, 1])
    retry.failed('z', () => a++)
    retry.cancel()
    await clock.advance(1_000)
    expect([a, b, clock.pending]).toEqual([0, 1, 0])
  })
})
