/**
 * Many peers in one process for the load shape: each is a member's control-plane connection that sends
 * pre-sealed DMs to random peers on a fixed schedule (open loop: the schedule does not wait for acks) and
 * acks every push it receives. It records when each message left (by clientMessageId) and when each
 * distinct message arrived, on the machine's wall clock with sub-millisecond precision
 * (`performance.timeOrigin + performance.now()`), so that the parent can join both sides across processes.
 */
import {
  createIdentity,
  decodeEnvelope,
  encodeFrame,
  initCrypto,
  type Frame,
  type Identity,
} from '../../protocol/index.js'
import { serveJobs } from './jobs.js'
import { PeerSocket } from './peer-socket.js'
import { sealSendFrames, type DmSize } from './sealed-frames.js'

export interface ConnectArgs {
  wsUrl: string
  mesh: string
  seeds: Uint8Array[]
  /** The global index of this process's first peer (for the schedule's phases). */
  firstIndex: number
}

export interface PrepareArgs {
  /** Every peer's key, in global order; each message goes to a random one other than the sender. */
  peers: Uint8Array[]
  perPeer: number
  size: DmSize
}

export interface RunArgs {
  /** Wall-clock ms at which the schedule starts (the same for every process). */
  startAt: number
  /** Between two sends of one peer; peers are phased evenly across it. */
  intervalMs: number
  totalPeers: number
  /** After the last send, how long to wait for the remaining send_acks. */
  drainMs: number
}

export interface RunResult {
  dispatched: number
  /** First to last send, ms. */
  dispatchMs: number
  /** send_ack states and error codes. */
  replies: Record<string, number>
  /** How far the schedule fell behind at worst, ms (a busy client would skew latency). */
  maxLagMs: number
}

export interface LoadResults {
  sentIds: string[]
  sentAt: Float64Array
  receivedIds: string[]
  receivedAt: Float64Array
}

const now = (): number => performance.timeOrigin + performance.now()

let mesh = ''
let firstIndex = 0
const peers: { identity: Identity; socket: PeerSocket }[] = []
let prepared: { frames: Uint8Array[]; ids: string[] }[] = []
const sentAt = new Map<string, number>()
const receivedAt = new Map<string, number>()
const replies: Record<string, number> = {}
let repliesCount = 0

await initCrypto()

serveJobs(
  {},
  {
    connect: async (a: ConnectArgs) => {
      mesh = a.mesh
      firstIndex = a.firstIndex
      for (let i = 0; i < a.seeds.length; i += 10) {
        const group = a.seeds.slice(i, i + 10)
        peers.push(...(await Promise.all(group.map((seed) => connectPeer(a.wsUrl, seed)))))
      }
      return { connected: peers.length }
    },
    prepare: async (a: PrepareArgs) => {
      prepared = peers.map((p, k) => {
        const self = firstIndex + k
        const batch = sealSendFrames({
          mesh,
          from: p.identity,
          to: () => {
            const r = Math.floor(Math.random() * (a.peers.length - 1))
            return a.peers[r >= self ? r + 1 : r]!
          },
          count: a.perPeer,
          size: a.size,
        })
        return { frames: batch.frames, ids: batch.clientMessageIds }
      })
      return { prepared: prepared.length * a.perPeer }
    },
    run: (a: RunArgs) => run(a),
    received: async () => receivedAt.size,
    results: async (): Promise<LoadResults> => ({
      sentIds: [...sentAt.keys()],
      sentAt: Float64Array.from(sentAt.values()),
      receivedIds: [...receivedAt.keys()],
      receivedAt: Float64Array.from(receivedAt.values()),
    }),
  },
  async () => {
    await Promise.all(peers.map((p) => p.socket.close()))
  },
)

async function connectPeer(
  wsUrl: string,
  seed: Uint8Array,
): Promise<{ identity: Identity; socket: PeerSocket }> {
  const identity = createIdentity('member', seed)
  const socket: PeerSocket = await PeerSocket.connect(wsUrl, {
    identity,
    mesh,
    onFrame: (frame: Frame) => {
      if (frame.t === 'push') {
        const id = decodeEnvelope(frame.envelope).clientMessageId
        if (!receivedAt.has(id)) receivedAt.set(id, now())
        socket.send(encodeFrame({ t: 'client_ack', deliveryId: frame.deliveryId, status: 'ok' }))
      } else if (frame.t === 'send_ack' || (frame.t === 'error' && frame.reqId !== undefined)) {
        const key = frame.t === 'send_ack' ? frame.state : frame.code
        replies[key] = (replies[key] ?? 0) + 1
        repliesCount++
      }
    },
  })
  return { identity, socket }
}

async function run(a: RunArgs): Promise<RunResult> {
  const next = peers.map(() => 0)
  const phase = peers.map((_, k) => (((firstIndex + k) % a.totalPeers) / a.totalPeers) * a.intervalMs)
  const total = prepared.reduce((n, p) => n + p.frames.length, 0)
  let dispatched = 0
  let first = 0
  let last = 0
  let maxLagMs = 0
  await new Promise<void>((resolve) => {
    const tick = (): void => {
      const t = now()
      const elapsed = t - a.startAt
      for (let k = 0; k < peers.length; k++) {
        const batch = prepared[k]!
        let i = next[k]!
        while (i < batch.frames.length && phase[k]! + i * a.intervalMs <= elapsed) {
          maxLagMs = Math.max(maxLagMs, elapsed - (phase[k]! + i * a.intervalMs))
          sentAt.set(batch.ids[i]!, now())
          peers[k]!.socket.send(batch.frames[i]!)
          i++
          if (dispatched++ === 0) first = t
        }
        next[k] = i
      }
      if (dispatched >= total) {
        last = now()
        resolve()
      } else setTimeout(tick, 1)
    }
    setTimeout(tick, Math.max(0, a.startAt - now()))
  })
  // Open loop: the replies come when they come, up to `drainMs` after the last send.
  const deadline = now() + a.drainMs
  while (repliesCount < total && now() < deadline) await new Promise((r) => setTimeout(r, 20))
  return { dispatched, dispatchMs: last - first, replies: { ...replies }, maxLagMs }
}
