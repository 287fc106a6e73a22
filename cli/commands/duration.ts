import { UsageError } from 'clipanion'

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }

/**
 * A duration option (`500ms`, `30s`, `15m`, `24h`, `7d`) in milliseconds; anything else is a usage error
 * naming `option`.
 */
export function parseDuration(text: string, option: string): number {
  const m = /^(\d+)(ms|s|m|h|d)$/.exec(text.trim())
  const ms = m === null ? NaN : Number(m[1]) * UNITS[m[2]!]!
  if (!Number.isSafeInteger(ms) || ms <= 0) {
    throw new UsageError(
      `${option} takes a duration such as 30s, 15m, 24h or 7d (got ${JSON.stringify(text)})`,
    )
  }
  return ms
}

/** A positive integer option. */
export function parsePositiveInt(text: string, option: string): number {
  const n = /^\d{1,9}$/.test(text) ? Number(text) : NaN
  if (!(n >= 1)) throw new UsageError(`${option} takes a positive whole number (got ${JSON.stringify(text)})`)
  return n
}
