/**
 * A DM load process: either the receiving end (one member connection that acks every push, and a raw
 * relay socket that answers every message with an ack frame) or the sending end (one or more member
 * connections, and a raw relay socket), which sends pre-sealed DMs with a fixed window in flight per
 * connection and times first send → last reply.
 *
 * Both topologies cost the peers the same per message: the sender decodes one reply frame, the receiver
 * decodes one frame and encodes one ack. What differs is the relay in the middle.
 */
import type { WebSocket } from 'ws'
import {
  createIdentity,
  decodeFrame,
  encodeFrame,
  initCrypto,
  type Frame,
  type Identity,
} from '../../protocol/index.js'
import { serveJobs } from './jobs.js'
import { openRawSocket, PeerSocket } from './peer-socket.js'
import { sealSendFrames, type DmSize } from './sealed-frames.js'

/** `receiver` job: connect the receiving member (and the raw relay's `/recv`). */
export interface ReceiverArgs {
  wsUrl: string
  mesh: string
  seed: Uint8Array
  rawUrl?: string
}

/** `senders` job: connect sending members (and the raw relay's `/send`). */
export interface SendersArgs {
  wsUrl: string
  mesh: string
  seeds: Uint8Array[]
  rawUrl?: string
}

/** `burst` job: each sender sends `perConnection` DMs, `window` in flight, to recipients in turn. */
export interface BurstArgs {
  via: 'coordinator' | 'raw'
  recipients: Uint8Array[]
  perConnection: number
  window: number
  size: DmSize
}

export interface BurstResult {
  messages: number
  ms: number
  perSecond: number
  envelopeBytes: number
  /** send_ack states (coordinator) or acks (raw), and error codes. */
  replies: Record<string, number>
}

let mesh = ''
const senders: { identity: Identity; socket: PeerSocket }[] = []
let rawSender: WebSocket | undefined
/** Where the current burst wants each sender's replies: index in `senders`, or -1 for the raw socket. */
let onReply: ((conn: number, frame: Frame) => void) | undefined
const received = { pushes: 0, raw: 0 }

await initCrypto()

serveJobs(
  {},
  {
    receiver: async (a: ReceiverArgs) => {
      mesh = a.mesh
      const socket: PeerSocket = await PeerSocket.connect(a.wsUrl, {
        identity: createIdentity('member', a.seed),
        mesh: a.mesh,
        onFrame: (frame) => {
          if (frame.t !== 'push') return
          received.pushes++
          socket.send(encodeFrame({ t: 'client_ack', deliveryId: frame.deliveryId, status: 'ok' }))
        },
      })
      if (a.rawUrl !== undefined) {
        const raw: WebSocket = await openRawSocket(`${a.rawUrl}/recv`, (bytes) => {
          const frame = decodeFrame(bytes)
          if (frame.t !== 'send') return
          received.raw++
          raw.send(encodeFrame({ t: 'client_ack', deliveryId: String(frame.reqId), status: 'ok' }))
        })
      }
      return {}
    },
    senders: async (a: SendersArgs) => {
      mesh = a.mesh
      for (const seed of a.seeds) {
        const identity = createIdentity('member', seed)
        const index = senders.length
        const socket = await PeerSocket.connect(a.wsUrl, {
          identity,
          mesh: a.mesh,
          onFrame: (frame) => onReply?.(index, frame),
        })
        senders.push({ identity, socket })
      }
      if (a.rawUrl !== undefined) {
        rawSender = await openRawSocket(`${a.rawUrl}/send`, (bytes) => onReply?.(-1, decodeFrame(bytes)))
      }
      return {}
    },
    burst: (a: BurstArgs) => burst(a),
    stats: async () => ({ ...received }),
  },
  async () => {
    await Promise.all(senders.map((s) => s.socket.close()))
    rawSender?.terminate()
  },
)

async function burst(a: BurstArgs): Promise<BurstResult> {
  const lanes =
    a.via === 'raw'
      ? [{ conn: -1, identity: senders[0]!.identity, send: (b: Uint8Array) => rawSender!.send(b) }]
      : senders.map((s, conn) => ({ conn, identity: s.identity, send: (b: Uint8Array) => s.socket.send(b) }))
  // Sealed before the clock starts; recipients taken in turn, each sender starting at its own offset.
  const batches = lanes.map((lane, k) =>
    sealSendFrames({
      mesh,
      from: lane.identity,
      to: (i) => a.recipients[(i + k) % a.recipients.length]!,
      count: a.perConnection,
      size: a.size,
    }),
  )
  const replies: Record<string, number> = {}
  const total = lanes.length * a.perConnection
  let done = 0
  const next = lanes.map(() => 0)
  const sendNext = (lane: number): void => {
    const i = next[lane]!
    if (i >= a.perConnection) return
    next[lane] = i + 1
    lanes[lane]!.send(batches[lane]!.frames[i]!)
  }
  const laneOf = new Map(lanes.map((l, i) => [l.conn, i]))
  const start = performance.now()
  let end = start
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`burst: ${done}/${total} replies after 120 s`)), 120_000)
    onReply = (conn, frame) => {
      let key: string
      if (frame.t === 'send_ack') key = frame.duplicate === true ? 'duplicate' : frame.state
      else if (frame.t === 'client_ack') key = 'acked'
      else if (frame.t === 'error' && frame.reqId !== undefined) key = frame.code
      else return
      replies[key] = (replies[key] ?? 0) + 1
      sendNext(laneOf.get(conn)!)
      if (++done === total) {
        end = performance.now()
        clearTimeout(timer)
        resolve()
      }
    }
    for (let lane = 0; lane < lanes.length; lane++) for (let w = 0; w < a.window; w++) sendNext(lane)
  }).finally(() => (onReply = undefined))
  const ms = end - start
  return {
    messages: total,
    ms,
    perSecond: (total * 1000) / ms,
    envelopeBytes: batches[0]!.envelopeBytes,
    replies,
  }
}
