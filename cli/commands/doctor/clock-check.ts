/**
 * Clock skew against the coordinator, judged by what session attestations tolerate (protocol/attestation.ts,
 * DESIGN.md §2). A runtime signs `[…, expiresAt = now + 12 h]` and re-mints at half that; the coordinator
 * refuses one that has expired by its clock, or that expires more than 24 h ahead of it. So a machine
 * whose clock is behind the coordinator's by more than 6 h presents attestations that expire (for the
 * coordinator) before they are renewed, and one ahead by more than 12 h has them refused as too long.
 * Above a few seconds it is a warning: nothing breaks yet, but a clock that drifts that far is unsynced.
 */
import { SESSION_ATTESTATION_MAX_TTL_MS, SESSION_ATTESTATION_TTL_MS } from '../../../protocol/limits.js'
import { fail, ok, seconds, warn, type CheckResult } from './check.js'

/** Above this the clock check warns. */
export const CLOCK_WARN_MS = 5_000

/** How far this machine's clock may be behind (`behindMs`) or ahead of (`aheadMs`) the coordinator's. */
export const CLOCK_LIMITS = {
  behindMs: Math.floor(SESSION_ATTESTATION_TTL_MS / 2),
  aheadMs: SESSION_ATTESTATION_MAX_TTL_MS - SESSION_ATTESTATION_TTL_MS,
} as const

/** One reading of the coordinator's clock, between two of ours. */
export interface ClockSample {
  /** The coordinator's Unix ms. */
  coordinatorTime: number
  /** Our Unix ms when the request went, and when its answer came. */
  sentAt: number
  receivedAt: number
  /** How coarse `coordinatorTime` is, ± ms (a `Date` header has whole seconds). */
  resolutionMs: number
}

/** The skew: positive when the coordinator's clock is ahead of ours (we are behind). */
export function skewOf(s: ClockSample): { skewMs: number; uncertaintyMs: number } {
  return {
    skewMs: s.coordinatorTime - (s.sentAt + s.receivedAt) / 2,
    uncertaintyMs: (s.receivedAt - s.sentAt) / 2 + s.resolutionMs,
  }
}

const SYNC =
  "synchronise this machine's clock (NTP: `timedatectl set-ntp true` on Linux, " +
  '"Set time automatically" on macOS and Windows), or the coordinator\'s if it is the one off'

/** The clock check of `name` from one sample. */
export function clockCheck(name: string, sample: ClockSample): CheckResult {
  const { skewMs, uncertaintyMs } = skewOf(sample)
  const size = Math.abs(skewMs)
  const side = skewMs > 0 ? 'behind' : 'ahead of'
  const said = `this machine's clock is ${duration(size)} ${side} the coordinator's`
  if (skewMs > CLOCK_LIMITS.behindMs) {
    return fail(
      name,
      `${said}: session attestations (valid ${duration(SESSION_ATTESTATION_TTL_MS)}, renewed after ` +
        `${duration(CLOCK_LIMITS.behindMs)}) expire by its clock before they are renewed (MESH_ERR_EXPIRED)`,
      SYNC,
    )
  }
  if (-skewMs > CLOCK_LIMITS.aheadMs) {
    return fail(
      name,
      `${said}: it refuses session attestations as expiring more than ` +
        `${duration(SESSION_ATTESTATION_MAX_TTL_MS)} ahead (MESH_ERR_TTL_TOO_LONG)`,
      SYNC,
    )
  }
  if (size - uncertaintyMs > CLOCK_WARN_MS) {
    return warn(
      name,
      `${said} (attestations fail beyond ${duration(CLOCK_LIMITS.behindMs)} behind or ` +
        `${duration(CLOCK_LIMITS.aheadMs)} ahead)`,
      SYNC,
    )
  }
  return ok(name, `within ${seconds(size)} of the coordinator's (± ${seconds(uncertaintyMs)})`)
}

/** `3 s`, `2 min 5 s`, `6 h`, `1 d 2 h`. */
function duration(ms: number): string {
  if (ms < 60_000) return seconds(ms)
  const units: [number, string][] = [
    [86_400_000, 'd'],
    [3_600_000, 'h'],
    [60_000, 'min'],
    [1000, 's'],
  ]
  const parts: string[] = []
  let left = Math.round(ms / 1000) * 1000
  for (const [size, unit] of units) {
    if (parts.length === 2) break
    const n = Math.floor(left / size)
    if (n > 0 || parts.length > 0) {
      if (n > 0) parts.push(`${n} ${unit}`)
      left -= n * size
    }
  }
  return parts.join(' ')
}
