import { describe, expect, it } from 'vitest'
import { SESSION_ATTESTATION_MAX_TTL_MS, SESSION_ATTESTATION_TTL_MS } from '../../../protocol/limits.js'
import { CLOCK_LIMITS, CLOCK_WARN_MS, clockCheck, skewOf } from './clock-check.js'

const H = 3_600_000
const now = 1_800_000_000_000

/** A reading taken in 20 ms where the coordinator's clock is `skewMs` ahead of ours. */
function sample(skewMs: number) {
  return { coordinatorTime: now + 10 + skewMs, sentAt: now, receivedAt: now + 20, resolutionMs: 0 }
}

describe('the clock check', () => {
  it('takes its bounds from what session attestations tolerate: 6 h behind, 12 h ahead', () => {
    expect(CLOCK_LIMITS.behindMs).toBe(SESSION_ATTESTATION_TTL_MS / 2)
    expect(CLOCK_LIMITS.aheadMs).toBe(SESSION_ATTESTATION_MAX_TTL_MS - SESSION_ATTESTATION_TTL_MS)
    expect(CLOCK_LIMITS).toEqual({ behindMs: 6 * H, aheadMs: 12 * H })
  })

  it('measures the skew from the middle of the round trip, with half of it as the uncertainty', () => {
    expect(skewOf(sample(1234))).toEqual({ skewMs: 1234, uncertaintyMs: 10 })
  })

  it('is ok within a few seconds, warns above, fails beyond the attestation bounds', () => {
    expect(clockCheck('clock', sample(800)).status).toBe('ok')
    expect(clockCheck('clock', sample(-CLOCK_WARN_MS + 100)).status).toBe('ok')
    const behind = clockCheck('clock', sample(90_000))
    expect(behind).toMatchObject({ status: 'warn', fix: expect.stringMatching(/NTP/) })
    expect(behind.detail).toMatch(/^this machine's clock is 1 min 30 s behind the coordinator's/)
    expect(clockCheck('clock', sample(6 * H - 1000)).status).toBe('warn')
    const late = clockCheck('clock', sample(6 * H + 1000))
    expect(late).toMatchObject({ status: 'fail', fix: expect.stringMatching(/NTP/) })
    expect(late.detail).toMatch(/6 h 1 s behind .*MESH_ERR_EXPIRED/)
    expect(clockCheck('clock', sample(-12 * H + 1000)).status).toBe('warn')
    const early = clockCheck('clock', sample(-12 * H - 1000))
    expect(early.status).toBe('fail')
    expect(early.detail).toMatch(/ahead of the coordinator's: .*MESH_ERR_TTL_TOO_LONG/)
  })

  it('does not warn on a skew the round trip cannot tell from zero', () => {
    const slow = { coordinatorTime: now + 9_000, sentAt: now, receivedAt: now + 4_000, resolutionMs: 500 }
    expect(clockCheck('clock', slow).status).toBe('ok')
  })
})
