/** What one `agentmesh doctor` check found: the shape `doctor --json` prints in `checks[]`. */
export interface CheckResult {
  /** Stable per check; per-mesh checks end with the mesh in brackets: `coordinator key (team)`. */
  name: string
  status: CheckStatus
  /** A short reason, for people. */
  detail: string
  /** What to do about it: always with `fail`, sometimes with `warn`. */
  fix?: string
}

/** `ok`; `warn` (works, but look at it); `fail` (broken: doctor exits non-zero). */
export type CheckStatus = 'ok' | 'warn' | 'fail'

export function ok(name: string, detail: string): CheckResult {
  return { name, status: 'ok', detail }
}

export function warn(name: string, detail: string, fix?: string): CheckResult {
  return fix === undefined ? { name, status: 'warn', detail } : { name, status: 'warn', detail, fix }
}

export function fail(name: string, detail: string, fix: string): CheckResult {
  return { name, status: 'fail', detail, fix }
}

/**
 * Runs `work` with a signal that aborts after `ms`, and rejects with a `TimeoutError` then even if `work`
 * ignores the signal: a doctor check never waits longer than its bound.
 */
export async function within<T>(ms: number, work: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const signal = AbortSignal.timeout(ms)
  let onAbort: (() => void) | undefined
  const aborted = new Promise<never>((_resolve, reject) => {
    onAbort = () => reject(new TimeoutError(ms))
    signal.addEventListener('abort', onAbort, { once: true })
  })
  try {
    return await Promise.race([work(signal), aborted])
  } finally {
    if (onAbort !== undefined) signal.removeEventListener('abort', onAbort)
  }
}

/** A check that ran out of its time. */
export class TimeoutError extends Error {
  override readonly name = 'TimeoutError'
  constructor(readonly ms: number) {
    super(`no answer within ${seconds(ms)}`)
  }
}

/** `3 s`, `1.5 s`, `250 ms`. */
export function seconds(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`
  return `${Number((ms / 1000).toFixed(1))} s`
}

/** The message of a thrown value, with its cause's when it has one (fetch says only "fetch failed"). */
export function reason(err: unknown): string {
  if (!(err instanceof Error)) return String(err)
  const cause = err.cause instanceof Error ? err.cause : undefined
  const code = (cause as { code?: unknown } | undefined)?.code
  if (cause === undefined) return err.message
  return typeof code === 'string' ? `${err.message}: ${code}` : `${err.message}: ${cause.message}`
}
