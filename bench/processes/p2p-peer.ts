/**
 * One end of the `p2p` scenario, in a process of its own: a member's coordinator connection (hello with
 * `p2p`), the `webrtc` adapter signaling through it, the `ws-relay` adapter submitting through it, and the
 * baseline raw node-datachannel channel (p2p-raw.ts). The sender end sends pre-sealed envelopes on one of
 * the three ("lanes") with backpressure honoured; the receiver end counts whole frames and notes when the
 * last one arrived, on the machine's wall clock, which both processes share.
 *
 * Every lane carries the same sealed DMs: the webrtc and raw lanes as `p2p_env` frames (what the runtime
 * puts on a data channel), the ws-relay lane as the encoded envelope (the adapter submits it in a `send`).
 */
import {
  bytesEqual,
  createIdentity,
  decodeEnvelope,
  decodeFrame,
  encodeFrame,
  initCrypto,
  MAX_FRAME_BYTES,
  type Identity,
} from '../../protocol/index.js'
import type { TransportSession } from '../../transports/types.js'
import { nodeWebrtcTransport } from '../../transports/webrtc/node.js'
import { MAX_CHANNEL_BUFFER_BYTES, type WebrtcTransport } from '../../transports/webrtc/index.js'
import { wsRelayTransport, type WsRelayTransport } from '../../transports/ws-relay/index.js'
import { serveJobs } from './jobs.js'
import { P2pLink } from './p2p-link.js'
import { RawChannel, type RawDescription } from './p2p-raw.js'
import { sealSendFrames, type DmSize } from './sealed-frames.js'

/** Where frames go: the webrtc adapter, the raw channel beside it, or the ws-relay adapter. */
export type Lane = 'webrtc' | 'raw' | 'relay'

/** `connect` job: this end's member key and the other end's. */
export interface ConnectArgs {
  wsUrl: string
  mesh: string
  seed: Uint8Array
  peerPk: Uint8Array
}

/** `arm` job (receiver): count the next `count` frames of each of `lanes`. */
export interface ArmArgs {
  lanes: Lane[]
  count: number
  /** Keep the frames themselves (the correctness probe). */
  keep?: boolean
  /** Note each frame's arrival by its clientMessageId (the latency figure; decodes every frame). */
  arrivals?: boolean
}

/** `received` job's answer, per lane armed. */
export type ReceivedByLane = Partial<Record<Lane, Received>>

/** What one lane received. */
export interface Received {
  count: number
  /** Frames whose size differed from the first one's: a frame cut or merged (must be 0). */
  wrongSize: number
  /** Wall-clock ms when the last counted frame arrived. */
  lastAt: number
  frames?: Uint8Array[]
  arrivals?: { ids: string[]; at: number[] }
}

/**
 * `prepare` job (sender): seals `count` fresh DMs of `size` for `lane`, before any clock or meter starts;
 * the next `burst` or `paced` of that lane sends them.
 */
export interface PrepareArgs {
  lane: Lane
  count: number
  size: DmSize
}

/** `burst` job (sender): the lane's prepared DMs, as fast as backpressure lets them. */
export interface BurstArgs {
  lane: Lane
  /** Return the frames sent (the correctness probe). */
  keep?: boolean
}

export interface BurstResult {
  /** Wall-clock ms of the first send. */
  startedAt: number
  /** The size of each frame on this lane. */
  frameBytes: number
  /** How many times `send` returned false (each followed by a wait for `drain`). */
  refused: number
  frames?: Uint8Array[]
}

/**
 * `paced` job (sender): the prepared DMs of `lanes` at `perSecond` in all, on a fixed schedule that takes
 * the lanes in turn, message by message, so that whatever else the machine does hits every lane alike.
 */
export interface PacedArgs {
  lanes: Lane[]
  perSecond: number
}

export interface PacedResult {
  /** Per lane: each message's clientMessageId and the wall-clock ms just before its `send`. */
  sent: Partial<Record<Lane, { ids: string[]; sentAt: number[] }>>
  /** How far the schedule fell behind at worst, ms. */
  maxLagMs: number
}

/** The webrtc adapter's default flow control (transports/webrtc/index.ts), which the raw channel copies. */
const ADAPTER_MARKS = {
  highWaterMark: MAX_CHANNEL_BUFFER_BYTES - MAX_FRAME_BYTES,
  lowWaterMark: Math.floor((MAX_CHANNEL_BUFFER_BYTES - MAX_FRAME_BYTES) / 4),
}

/** A lane's sending side, as the burst loop sees it. */
interface Outlet {
  send(frame: Uint8Array): boolean
  onDrain(listener: () => void): () => void
}

const wallClock = (): number => performance.timeOrigin + performance.now()

let identity: Identity
let peerPk: Uint8Array
let mesh = ''
let link: P2pLink | undefined
let webrtc: WebrtcTransport | undefined
let relay: WsRelayTransport | undefined
let raw: RawChannel | undefined
/** The open session per adapter lane: ours (sender) or the one the peer opened (receiver). */
const sessions: Partial<Record<'webrtc' | 'relay', TransportSession>> = {}
const sessionSeen: Partial<Record<'webrtc' | 'relay', () => void>> = {}

await initCrypto()

// ── receiving ────────────────────────────────────────────────────────────────

interface Counter {
  lane: Lane
  target: number
  count: number
  size: number
  wrongSize: number
  lastAt: number
  frames: Uint8Array[] | undefined
  arrivals: { ids: string[]; at: number[] } | undefined
  done: () => void
  finished: Promise<void>
}

/** The armed lanes' counters. */
const counters = new Map<Lane, Counter>()

/** Every frame of every lane comes here; only armed lanes' are counted. */
function receive(lane: Lane, frame: Uint8Array): void {
  const c = counters.get(lane)
  if (c === undefined || c.count >= c.target) return
  const at = wallClock()
  if (c.count === 0) c.size = frame.byteLength
  else if (frame.byteLength !== c.size) c.wrongSize++
  c.frames?.push(frame.slice())
  if (c.arrivals !== undefined) {
    c.arrivals.ids.push(clientMessageIdOf(lane, frame))
    c.arrivals.at.push(at)
  }
  if (++c.count === c.target) {
    c.lastAt = at
    c.done()
  }
}

function clientMessageIdOf(lane: Lane, frame: Uint8Array): string {
  if (lane === 'relay') return decodeEnvelope(frame).clientMessageId
  const f = decodeFrame(frame)
  if (f.t !== 'p2p_env') throw new Error(`expected p2p_env, got ${f.t}`)
  return decodeEnvelope(f.envelope).clientMessageId
}

function watch(lane: 'webrtc' | 'relay', session: TransportSession): void {
  sessions[lane] = session
  session.on('message', (frame) => receive(lane, frame))
  session.once('close', (err) => {
    // A session ending before `close` is a failed run: say why, where the parent shows a child's stderr.
    if (closing === undefined) process.stderr.write(`${lane} session closed: ${String(err)}\n`)
  })
  sessionSeen[lane]?.()
}

// ── sending ──────────────────────────────────────────────────────────────────

function outlet(lane: Lane): Outlet {
  if (lane === 'raw') {
    const channel = raw!
    return {
      send: (frame) => channel.send(frame),
      onDrain: (listener) => {
        channel.onDrain(listener)
        return () => channel.onDrain(() => {})
      },
    }
  }
  const session = sessions[lane]
  if (session === undefined) throw new Error(`no ${lane} session`)
  return {
    send: (frame) => session.send(frame),
    onDrain: (listener) => {
      session.on('drain', listener)
      return () => session.off('drain', listener)
    },
  }
}

/** Fresh sealed DMs to the peer (fresh ids: the coordinator would drop a repeated one as a duplicate). */
function sealFor(lane: Lane, count: number, size: DmSize): { frames: Uint8Array[]; ids: string[] } {
  const batch = sealSendFrames({ mesh, from: identity, to: () => peerPk, count, size })
  const frames = batch.frames.map((sendFrame) => {
    const f = decodeFrame(sendFrame)
    if (f.t !== 'send') throw new Error('sealSendFrames gave a frame other than send')
    return lane === 'relay' ? f.envelope : encodeFrame({ t: 'p2p_env', envelope: f.envelope })
  })
  return { frames, ids: batch.clientMessageIds }
}

/** What `prepare` sealed per lane, taken by the next `burst` or `paced`. */
const prepared = new Map<Lane, { frames: Uint8Array[]; ids: string[] }>()

function takePrepared(lane: Lane): { out: Outlet; frames: Uint8Array[]; ids: string[] } {
  const p = prepared.get(lane)
  if (p === undefined) throw new Error(`${lane}: burst or paced before prepare`)
  prepared.delete(lane)
  return { out: outlet(lane), ...p }
}

async function burst(a: BurstArgs): Promise<BurstResult> {
  const { out, frames } = takePrepared(a.lane)
  let refused = 0
  let next = 0
  const startedAt = wallClock()
  await new Promise<void>((resolve) => {
    const pump = (): void => {
      while (next < frames.length) {
        if (!out.send(frames[next]!)) {
          refused++
          return // `drain` calls pump again
        }
        next++
      }
      off()
      resolve()
    }
    const off = out.onDrain(pump)
    pump()
  })
  return {
    startedAt,
    frameBytes: frames[0]!.byteLength,
    refused,
    ...(a.keep === true && { frames }),
  }
}

async function paced(a: PacedArgs): Promise<PacedResult> {
  const lanes = a.lanes.map((lane) => ({ lane, ...takePrepared(lane), sentAt: [] as number[] }))
  const count = Math.min(...lanes.map((l) => l.frames.length))
  const intervalMs = 1000 / a.perSecond
  let maxLagMs = 0
  const start = performance.now() + 20
  for (let slot = 0; slot < count * lanes.length; slot++) {
    const due = start + slot * intervalMs
    const wait = due - performance.now()
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait))
    maxLagMs = Math.max(maxLagMs, performance.now() - due)
    const l = lanes[slot % lanes.length]!
    const frame = l.frames[Math.floor(slot / lanes.length)]!
    l.sentAt.push(wallClock())
    while (!l.out.send(frame)) {
      await new Promise<void>((resolve) => {
        const off = l.out.onDrain(() => (off(), resolve()))
      })
    }
  }
  const sent = Object.fromEntries(lanes.map((l) => [l.lane, { ids: l.ids, sentAt: l.sentAt }]))
  return { sent, maxLagMs }
}

// ── jobs ─────────────────────────────────────────────────────────────────────

serveJobs(
  {},
  {
    connect: async (a: ConnectArgs) => {
      identity = createIdentity('member', a.seed)
      peerPk = a.peerPk
      mesh = a.mesh
      link = await P2pLink.connect(a.wsUrl, identity, a.mesh)
      webrtc = nodeWebrtcTransport({
        identity,
        mesh: a.mesh,
        signaling: link.signaling(),
        // The bench's two members know each other's keys; a runtime asks its verified roster.
        vouch: (pk) => bytesEqual(pk, peerPk),
      })
      relay = wsRelayTransport({ link: link.controlLink() })
      webrtc.onSession((s) => watch('webrtc', s))
      relay.onSession((s) => watch('relay', s))
      return {}
    },
    /** Sender: opens both adapters' sessions to the peer (the webrtc one is a full handshake). */
    open: async () => {
      const peer = { mesh, pk: peerPk }
      const signal = AbortSignal.timeout(30_000)
      const started = performance.now()
      watch('webrtc', await webrtc!.open(peer, { signal }))
      const handshakeMs = performance.now() - started
      watch('relay', await relay!.open(peer, { signal }))
      return { handshakeMs }
    },
    /** Receiver: resolves once the peer's session of `lane` reached us. */
    accepted: (lane: 'webrtc' | 'relay') =>
      sessions[lane] !== undefined
        ? Promise.resolve({})
        : new Promise((resolve) => (sessionSeen[lane] = () => resolve({}))),
    rawOffer: async () => {
      await raw?.close() // a failed attempt's
      raw = undefined
      const { channel, offer } = await RawChannel.offer(ADAPTER_MARKS)
      raw = channel
      raw.onMessage((bytes) => receive('raw', bytes))
      return offer
    },
    rawAnswer: async (offer: RawDescription) => {
      await raw?.close()
      raw = undefined
      const { channel, answer } = await RawChannel.answer(offer, ADAPTER_MARKS)
      raw = channel
      raw.onMessage((bytes) => receive('raw', bytes))
      return answer
    },
    rawAccept: async (answer: RawDescription) => {
      raw!.accept(answer)
      return {}
    },
    rawCandidates: async (candidates: RawDescription['candidates']) => {
      raw!.addCandidates(candidates)
      return {}
    },
    rawClose: async () => {
      await raw?.close()
      raw = undefined
      return {}
    },
    rawOpened: async () => {
      await raw!.opened
      return {}
    },
    arm: async (a: ArmArgs) => {
      counters.clear()
      for (const lane of a.lanes) {
        let done!: () => void
        const finished = new Promise<void>((resolve) => (done = resolve))
        counters.set(lane, {
          lane,
          target: a.count,
          count: 0,
          size: 0,
          wrongSize: 0,
          lastAt: 0,
          frames: a.keep === true ? [] : undefined,
          arrivals: a.arrivals === true ? { ids: [], at: [] } : undefined,
          done,
          finished,
        })
      }
      return {}
    },
    received: async (timeoutMs: number): Promise<ReceivedByLane> => {
      const all = [...counters.values()]
      if (all.length === 0) throw new Error('received before arm')
      let timer: NodeJS.Timeout | undefined
      const late = (): string => all.map((c) => `${c.lane} ${c.count}/${c.target}`).join(', ')
      await Promise.race([
        Promise.all(all.map((c) => c.finished)),
        new Promise<void>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`frames after ${timeoutMs} ms: ${late()}`)), timeoutMs)
        }),
      ]).finally(() => clearTimeout(timer))
      counters.clear()
      return Object.fromEntries(
        all.map((c) => [
          c.lane,
          {
            count: c.count,
            wrongSize: c.wrongSize,
            lastAt: c.lastAt,
            ...(c.frames !== undefined && { frames: c.frames }),
            ...(c.arrivals !== undefined && { arrivals: c.arrivals }),
          },
        ]),
      )
    },
    prepare: async (a: PrepareArgs) => {
      prepared.set(a.lane, sealFor(a.lane, a.count, a.size))
      return {}
    },
    burst: (a: BurstArgs) => burst(a),
    paced: (a: PacedArgs) => paced(a),
    close: async () => {
      await closeAll()
      return {}
    },
  },
  closeAll,
)

let closing: Promise<void> | undefined
function closeAll(): Promise<void> {
  closing ??= (async () => {
    // The raw channel first, to its end: the adapter's last close runs node-datachannel's process-wide
    // cleanup(), which can deadlock on a connection still closing. The scenario closes the raw channel on
    // both ends before either closes its webrtc session, whose FIN would close the other's adapter first.
    await raw?.close()
    await Promise.all([sessions.webrtc?.close(), sessions.relay?.close()])
    await Promise.all([webrtc?.close(), relay?.close()])
    await link?.close()
  })()
  return closing
}
