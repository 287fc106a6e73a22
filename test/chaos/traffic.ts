/**
 * The sender of a chaos run: DMs to alice through bob's daemon IPC (`POST /v1/send` with an id), a few
 * in flight at a time. A send that gets no answer (the daemon is down or died mid-request) or a 503 is
 * retried with the same id and body, as a careful client does; the daemon's idempotency makes the
 * retry safe, and `replays` counts the retries it answered from its outbox.
 */
import { ulidFactory } from '../../protocol/index.js'
import type { DaemonClient } from '../../peer-runtime/node/daemon/client.js'

export interface TrafficResult {
  /** Every id, in send order. */
  ids: string[]
  /** Ids answered 202, with when. */
  acked: Map<string, number>
  /** Retries answered from the outbox (`idempotent-replay: true`). */
  replays: number
  /** Requests that got no answer or a 503, retried. */
  retries: number
  /** Final refusals (a 4xx or 5xx other than 503), by id: a product failure the run reports. */
  refused: Map<string, string>
}

const nextId = ulidFactory()

/**
 * Sends `count` DMs to `to` over `client()` (a getter: the session client), `concurrency` at a time,
 * until each one was answered or refused, or `signal` aborts.
 */
export async function sendAll(o: {
  client: () => DaemonClient
  to: string
  count: number
  tag: string
  concurrency?: number
  signal: AbortSignal
  onAck?: (id: string) => void
}): Promise<TrafficResult> {
  const ids = Array.from({ length: o.count }, () => nextId())
  const result: TrafficResult = { ids, acked: new Map(), replays: 0, retries: 0, refused: new Map() }
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < ids.length && !o.signal.aborted) {
      const n = next++
      const id = ids[n]!
      const body = { to: o.to, id, payload: { n, run: o.tag } }
      for (let attempt = 0; !o.signal.aborted; attempt++) {
        let status: number
        let replay = false
        let error = ''
        try {
          const res = await o.client().request('POST', '/v1/send', {
            body,
            signal: AbortSignal.any([o.signal, AbortSignal.timeout(70_000)]),
            // The harness retries itself, as an agent using plain HTTP would, and counts the retries.
            redial: false,
          })
          status = res.status
          replay = res.headers['idempotent-replay'] === 'true'
          if (status !== 202) error = JSON.stringify(res.body).slice(0, 300)
        } catch (err) {
          status = 0 // no answer: the daemon is down, or died while we asked
          error = err instanceof Error ? err.message : String(err)
        }
        if (status === 202) {
          result.acked.set(id, Date.now())
          if (replay) result.replays++
          o.onAck?.(id)
          break
        }
        if (status === 0 || status === 503) {
          result.retries++
          await new Promise((resolve) => setTimeout(resolve, Math.min(50 * 2 ** Math.min(attempt, 4), 500)))
          continue
        }
        result.refused.set(id, `HTTP ${status}: ${error}`)
        break
      }
    }
  }
  await Promise.all(Array.from({ length: o.concurrency ?? 16 }, worker))
  return result
}
