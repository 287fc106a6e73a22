/**
 * Real runtime peers for the `runtime` scenario: `Peer`s as a user's process holds them, each a member's
 * control-plane presence built as `openMeshPeer` builds one (`createNodePeer` on the member key, its own
 * durable sqlite store in this process's temp dir, default connection and outbox settings), relay only
 * unless `p2p` says otherwise. A process is either senders (the `run` job: `peer.send` on a fixed
 * schedule, open loop, as an application would call it) or receivers (the `consume` job: each peer reads
 * its inbox with `peer.messages()`), so the parent can read each side's CPU from /proc.
 *
 * Times are the machine's wall clock with sub-millisecond precision (`performance.timeOrigin +
 * performance.now()`), so the parent joins a send in one process with its arrival in another. The
 * sender also notes each row's first attempt (the outbox's `inflight` event) and which rows ever waited
 * after `MESH_ERR_RATE_LIMITED`.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createIdentity, initCrypto, isMeshError } from '../../protocol/index.js'
import { createNodePeer } from '../../peer-runtime/node/node-peer.js'
import { sqliteStore } from '../../peer-runtime/node/sqlite-store.js'
import type { Peer } from '../../peer-runtime/peer.js'
import type { RuntimeStore } from '../../peer-runtime/store/types.js'
import { serveJobs } from './jobs.js'
import { oneKibPayload } from './runtime-payload.js'

export interface OpenArgs {
  wsUrl: string
  mesh: string
  ownerPk: Uint8Array
  coordinatorPk: Uint8Array
  seeds: Uint8Array[]
  /** P2P over node-datachannel at its default settings; false for relay only. */
  p2p: boolean
}

export interface RunArgs {
  /** The receivers' keys; each DM goes to a random one. */
  recipients: Uint8Array[]
  perPeer: number
  /** Wall-clock ms at which the schedule starts (the same for every process). */
  startAt: number
  /** Between two sends of one peer; peers are phased evenly across it. */
  intervalMs: number
  /** Senders in all processes, and this process's first one among them (for the phases). */
  totalPeers: number
  firstIndex: number
  /** After the last send, how long the outboxes may take to settle. */
  drainMs: number
}

export interface RunResult {
  dispatched: number
  firstSendAt: number
  lastSendAt: number
  /** How far the schedule fell behind at worst, ms. */
  maxLagMs: number
  /** `send()` rejections by error code. */
  sendErrors: Record<string, number>
  /** Distinct rows that waited after a retryable refusal, by its code (`MESH_ERR_RATE_LIMITED`, …). */
  retriedRows: Record<string, number>
  /** Last send → every outbox settled (nothing pending or in flight), ms; NaN when one did not in time. */
  settleMs: number
}

/** One run's per-message times, for the parent to join across processes. */
export interface RunTimes {
  sentIds: string[]
  sentAt: Float64Array
  /** `send()` call → resolved (stored), ms. */
  acceptMs: Float64Array
  /** `send()` call → the row's first attempt (`inflight`), ms; NaN when none was seen. */
  waitMs: Float64Array
  receivedIds: string[]
  receivedAt: Float64Array
  duplicates: number
}

const now = (): number => performance.timeOrigin + performance.now()

await initCrypto()
let dir = ''
const peers: { peer: Peer; store: RuntimeStore }[] = []
let payload: unknown
let consuming: AbortController | undefined
const consumeErrors: string[] = []
// Per run, reset by `results`.
let firstTry = new Map<string, number>()
let retried = new Map<string, string>()
let sent: { id: string; at: number; acceptMs: number }[] = []
let receivedAt = new Map<string, number>()
let duplicates = 0

serveJobs(
  {},
  {
    open: async (a: OpenArgs) => {
      dir = await mkdtemp(join(tmpdir(), 'agentmesh-bench-runtime-'))
      for (let i = 0; i < a.seeds.length; i += 10) {
        const group = a.seeds.slice(i, i + 10)
        peers.push(...(await Promise.all(group.map((seed, k) => openPeer(a, seed, i + k)))))
      }
      await Promise.all(peers.map((p) => p.peer.whenConnected(AbortSignal.timeout(500_000))))
      payload = peers.length > 0 ? oneKibPayload(a.mesh, peers[0]!.peer.identity) : undefined
      return { opened: peers.length }
    },
    /** This process's memory after full collections (the process runs with `--expose-gc`). */
    memory: async () => {
      const gc = (globalThis as { gc?: () => void }).gc
      if (gc === undefined) throw new Error('run this process with --expose-gc')
      for (let i = 0; i < 3; i++) {
        gc()
        await new Promise((r) => setTimeout(r, 100))
      }
      return process.memoryUsage()
    },
    consume: async () => {
      consuming = new AbortController()
      const signal = consuming.signal
      for (const { peer } of peers) {
        peer.on('duplicate', () => duplicates++)
        void (async () => {
          for await (const m of peer.messages({ signal })) {
            if (receivedAt.has(m.clientMessageId)) duplicates++
            else receivedAt.set(m.clientMessageId, now())
          }
        })().catch((err: unknown) => {
          if (!signal.aborted) consumeErrors.push(String(err))
        })
      }
      return { consuming: peers.length }
    },
    run: (a: RunArgs) => run(a),
    /** Waits until every outbox here is idle (between runs, so that no run starts behind another's rows). */
    settle: async (a: { timeoutMs: number }) => {
      const start = performance.now()
      const signal = AbortSignal.timeout(a.timeoutMs)
      await Promise.all(peers.map((p) => p.peer.settled(signal)))
      return { ms: performance.now() - start }
    },
    received: async () => {
      if (consumeErrors.length > 0) throw new Error(`messages() failed: ${consumeErrors[0]}`)
      return receivedAt.size
    },
    results: async (): Promise<RunTimes> => {
      const out: RunTimes = {
        sentIds: sent.map((s) => s.id),
        sentAt: Float64Array.from(sent, (s) => s.at),
        acceptMs: Float64Array.from(sent, (s) => s.acceptMs),
        waitMs: Float64Array.from(sent, (s) => (firstTry.get(s.id) ?? NaN) - s.at),
        receivedIds: [...receivedAt.keys()],
        receivedAt: Float64Array.from(receivedAt.values()),
        duplicates,
      }
      firstTry = new Map()
      retried = new Map()
      sent = []
      receivedAt = new Map()
      duplicates = 0
      return out
    },
    close: async () => {
      await closeAll()
      return {}
    },
  },
  closeAll,
)

async function openPeer(
  a: OpenArgs,
  seed: Uint8Array,
  i: number,
): Promise<{ peer: Peer; store: RuntimeStore }> {
  const store = sqliteStore({ path: join(dir, `peer-${i}.db`) })
  const peer = createNodePeer({
    url: a.wsUrl,
    mesh: a.mesh,
    ownerPk: a.ownerPk,
    coordinatorPk: a.coordinatorPk,
    identity: createIdentity('member', seed),
    role: 'control-plane',
    store,
    p2p: a.p2p,
  })
  peer.on('outbox', (row) => {
    if (row.state === 'inflight' && !firstTry.has(row.id)) firstTry.set(row.id, now())
    else if (row.state === 'pending' && row.lastError !== undefined && !retried.has(row.id))
      retried.set(row.id, row.lastError.code)
  })
  // A background failure is the bench's failure too: say it where the parent shows a child's stderr.
  peer.on('error', (err) => process.stderr.write(`peer error: ${String(err)}\n`))
  await peer.start()
  return { peer, store }
}

async function run(a: RunArgs): Promise<RunResult> {
  const senders = peers.map((p) => p.peer)
  const next = senders.map(() => 0)
  const phase = senders.map((_, k) => (((a.firstIndex + k) % a.totalPeers) / a.totalPeers) * a.intervalMs)
  const total = senders.length * a.perPeer
  const sendErrors: Record<string, number> = {}
  const sends: Promise<void>[] = []
  let dispatched = 0
  let firstSendAt = 0
  let lastSendAt = 0
  let maxLagMs = 0
  const sendOne = (peer: Peer): void => {
    const at = now()
    sends.push(
      peer.send(a.recipients[Math.floor(Math.random() * a.recipients.length)]!, payload).then(
        (receipt) => void sent.push({ id: receipt.clientMessageId, at, acceptMs: now() - at }),
        (err: unknown) => {
          const code = isMeshError(err) ? err.code : String(err)
          sendErrors[code] = (sendErrors[code] ?? 0) + 1
        },
      ),
    )
    if (dispatched++ === 0) firstSendAt = at
    lastSendAt = at
  }
  await new Promise<void>((resolve) => {
    const tick = (): void => {
      const elapsed = now() - a.startAt
      for (let k = 0; k < senders.length; k++) {
        let i = next[k]!
        while (i < a.perPeer && phase[k]! + i * a.intervalMs <= elapsed) {
          maxLagMs = Math.max(maxLagMs, elapsed - (phase[k]! + i * a.intervalMs))
          sendOne(senders[k]!)
          i++
        }
        next[k] = i
      }
      if (dispatched >= total) resolve()
      else setTimeout(tick, 1)
    }
    setTimeout(tick, Math.max(0, a.startAt - now()))
  })
  await Promise.all(sends)
  let settleMs = NaN
  try {
    const signal = AbortSignal.timeout(a.drainMs)
    await Promise.all(senders.map((p) => p.settled(signal)))
    settleMs = now() - lastSendAt
  } catch {
    // Not settled within drainMs: the parent counts what never arrived.
  }
  const retriedRows: Record<string, number> = {}
  for (const code of retried.values()) retriedRows[code] = (retriedRows[code] ?? 0) + 1
  return { dispatched, firstSendAt, lastSendAt, maxLagMs, sendErrors, retriedRows, settleMs }
}

async function closeAll(): Promise<void> {
  consuming?.abort()
  for (const { peer, store } of peers.splice(0)) {
    await peer.close().catch(() => undefined)
    await store.close().catch(() => undefined)
  }
  if (dir !== '') await rm(dir, { recursive: true, force: true })
  dir = ''
}
