/**
 * An agent of the `daemon` scenario's end-to-end figure, in its own process (forked by
 * bench/scenarios/daemon.ts): an IPC client of one daemon session that either sends DMs
 * (`POST /v1/send` with an id, `window` in flight) or follows the session's event stream
 * (`GET /v1/events`) and notes when each DM arrived. Each DM's payload carries its send time on the
 * wall clock the processes share (`performance.timeOrigin + performance.now()`), so the follower
 * measures send → arrival without a second channel.
 */
import { DaemonClient, type DaemonAddress } from '../../peer-runtime/node/daemon/client.js'
import { initCrypto } from '../../protocol/index.js'
import { ulidFactory } from '../../protocol/ulid.js'
import { serveJobs } from './jobs.js'

/** `send` job: `count` DMs of about `bytes` bytes to `to`, `window` in flight. */
export interface AgentSendArgs {
  address: DaemonAddress
  token: string
  to: string
  count: number
  window: number
  bytes: number
  /** A tag in every payload, so the follower counts one burst at a time. */
  burst: string
}

export interface AgentSendResult {
  /** Wall-clock ms of the first send and of the last 202. */
  firstSendAt: number
  lastAcceptAt: number
  /** Answers by status. */
  statuses: Record<string, number>
}

/** `collect` job: resolves once `count` distinct DMs of `burst` arrived, or after `timeoutMs`. */
export interface AgentCollectArgs {
  burst: string
  count: number
  timeoutMs: number
}

export interface AgentCollectResult {
  received: number
  duplicates: number
  /** Wall-clock ms of the last arrival. */
  lastArrivalAt: number
  /** send → arrival of each DM, ms, in arrival order. */
  latenciesMs: number[]
}

await initCrypto()
const nextId = ulidFactory()
const wall = (): number => performance.timeOrigin + performance.now()

interface Burst {
  seen: Set<string>
  duplicates: number
  latencies: number[]
  lastArrivalAt: number
  wake?: () => void
}

const bursts = new Map<string, Burst>()
const burstOf = (tag: string): Burst => {
  let b = bursts.get(tag)
  if (b === undefined) {
    b = { seen: new Set(), duplicates: 0, latencies: [], lastArrivalAt: 0 }
    bursts.set(tag, b)
  }
  return b
}
const clients: DaemonClient[] = []
const following = new AbortController()

serveJobs(
  { pid: process.pid },
  {
    send: async (a: AgentSendArgs): Promise<AgentSendResult> => {
      const c = new DaemonClient(a.address, a.token)
      clients.push(c)
      const pad = 'x'.repeat(Math.max(0, a.bytes - 80))
      const statuses: Record<string, number> = {}
      let next = 0
      let lastAcceptAt = 0
      const firstSendAt = wall()
      const worker = async (): Promise<void> => {
        while (next < a.count) {
          next++
          const res = await c.request('POST', '/v1/send', {
            body: { to: a.to, id: nextId(), payload: { b: a.burst, t: wall(), pad } },
            whenFull: 'wait',
          })
          statuses[res.status] = (statuses[res.status] ?? 0) + 1
          if (res.status === 202) lastAcceptAt = wall()
        }
      }
      await Promise.all(Array.from({ length: a.window }, worker))
      return { firstSendAt, lastAcceptAt, statuses }
    },
    /** Starts following the session's events (once); DMs are counted per burst from then on. */
    follow: async (a: { address: DaemonAddress; token: string }) => {
      const c = new DaemonClient(a.address, a.token)
      clients.push(c)
      const ready = new Promise<void>((resolve, reject) => {
        void (async () => {
          try {
            for await (const e of c.follow({ signal: following.signal })) {
              if (e.event === 'ready') resolve()
              if (e.event !== 'message') continue
              const m = e.data as { clientMessageId: string; payload: { b?: string; t?: number } }
              if (typeof m.payload?.b !== 'string' || typeof m.payload.t !== 'number') continue
              const b = burstOf(m.payload.b)
              if (b.seen.has(m.clientMessageId)) {
                b.duplicates++
                continue
              }
              const at = wall()
              b.seen.add(m.clientMessageId)
              b.latencies.push(at - m.payload.t)
              b.lastArrivalAt = at
              b.wake?.()
            }
          } catch (err) {
            reject(err instanceof Error ? err : new Error(String(err)))
          }
        })()
      })
      await ready
      return {}
    },
    collect: async (a: AgentCollectArgs): Promise<AgentCollectResult> => {
      const b = burstOf(a.burst)
      const deadline = Date.now() + a.timeoutMs
      while (b.seen.size < a.count && Date.now() < deadline) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, Math.max(0, Math.min(1_000, deadline - Date.now())))
          b.wake = () => {
            if (b.seen.size < a.count) return
            clearTimeout(timer)
            resolve()
          }
        })
      }
      b.wake = undefined
      bursts.delete(a.burst)
      return {
        received: b.seen.size,
        duplicates: b.duplicates,
        lastArrivalAt: b.lastArrivalAt,
        latenciesMs: b.latencies,
      }
    },
  },
  async () => {
    following.abort()
    for (const c of clients) c.close()
  },
)
