/**
 * The `webrtc` adapter (DESIGN.md §5), written against the W3C API so one file serves Node and browsers:
 * `init.RTCPeerConnection` is node-datachannel's polyfill in Node (transports/webrtc/node.ts) and the
 * native constructor in a browser. Handshakes run through `signaling/` (signed offers and answers, glare,
 * the session cap, the budget); each session is one ordered, reliable data channel.
 *
 * @example
 * ```ts
 * const transport = webrtcTransport({ identity, mesh, signaling, RTCPeerConnection, vouch })
 * transport.onSession((s) => s.on('message', (frame) => handle(frame)))
 * const session = await transport.open({ mesh, pk: peerKey }, { signal: AbortSignal.timeout(5_000) })
 * ```
 */
import {
  isMeshError,
  MAX_FRAME_BYTES,
  MAX_WS_PAYLOAD_BYTES,
  MeshError,
  systemClock,
  type Clock,
  type Identity,
} from '../../protocol/index.js'
import {
  HANDSHAKE_BUDGET_MS,
  Signaler,
  type Handshake,
  type RefusedListener,
  type SignalingChannel,
  type SignalingPeerConnection,
} from '../../signaling/index.js'
import type { PeerRef, PeerTransport, TransportCapabilities, TransportSession } from '../types.js'
import { WebrtcSession, type HandleSet, type SessionLimits } from './session.js'

/** A data channel's buffer never passes this (DESIGN.md §5). */
export const MAX_CHANNEL_BUFFER_BYTES = MAX_WS_PAYLOAD_BYTES

/** Options of `webrtcTransport`. */
export interface WebrtcTransportInit {
  /** Our presence key. */
  identity: Identity
  mesh: string
  /** The coordinator's signaling relay (or an in-memory one in tests). */
  signaling: SignalingChannel
  /** The W3C constructor: node-datachannel's polyfill in Node, the native one in browsers. */
  RTCPeerConnection: new (config: RTCConfiguration) => RTCPeerConnection
  /** STUN and TURN servers; none by default (host candidates only, as in tests). */
  iceServers?: RTCIceServer[]
  /** True when the roster vouches for a peer's presence key. */
  vouch: (pk: Uint8Array) => boolean
  /** Default 2 s; over it the handshake fails with `MESH_ERR_SIGNAL_TIMEOUT`. */
  handshakeBudgetMs?: number
  clock?: Clock
  /** Default 32; further offers are answered `p2p_reject{busy}`. */
  maxSessions?: number
  /** Default 72 KiB (the frame limit). */
  maxFrameBytes?: number
  /** `send` returns false at or above this; default 1 MiB less `maxFrameBytes`. */
  highWaterMark?: number
  /** `drain` fires when the buffer falls to this; default a quarter of the high-water mark. */
  lowWaterMark?: number
  /**
   * How long `close()` waits for the peer to confirm it read everything (default 10 s: up to 1 MiB may
   * still be buffered), after which the connection closes anyway.
   */
  closeTimeoutMs?: number
  /**
   * Test hook: never send or take ICE candidates. Offers and answers carry none (candidates trickle), so
   * no pair can form and every handshake fails at its budget, as behind a NAT that blocks P2P.
   */
  dropCandidates?: boolean
}

/** The adapter, with its signaling hooks exposed for the runtime's logs and tests. */
export interface WebrtcTransport extends PeerTransport {
  /** Listens to offers and answers refused (unvouched signer, bad signature or fingerprints, busy). */
  onRefused(listener: RefusedListener): void
  /** Peer connections and data channels currently referenced. */
  readonly handles: number
  /** Handshakes and sessions holding one of the `maxSessions` slots. */
  readonly activeSessions: number
}

/** Builds the adapter; see the module comment. */
export function webrtcTransport(init: WebrtcTransportInit): WebrtcTransport {
  return new WebrtcAdapter(init)
}

class WebrtcAdapter implements WebrtcTransport {
  readonly kind = 'webrtc' as const
  readonly capabilities: TransportCapabilities
  readonly #init: WebrtcTransportInit
  readonly #clock: Clock
  readonly #limits: SessionLimits
  readonly #signaler: Signaler
  readonly #held: HandleSet = new Set()
  readonly #sessions = new Map<Handshake, WebrtcSession>()
  readonly #listeners = new Set<(session: TransportSession) => void>()
  #closed = false

  constructor(init: WebrtcTransportInit) {
    this.#init = init
    this.#clock = init.clock ?? systemClock
    const maxFrameBytes = init.maxFrameBytes ?? MAX_FRAME_BYTES
    const highWaterMark = init.highWaterMark ?? MAX_CHANNEL_BUFFER_BYTES - maxFrameBytes
    if (highWaterMark + maxFrameBytes > MAX_CHANNEL_BUFFER_BYTES || highWaterMark <= 0) {
      throw new RangeError('highWaterMark + maxFrameBytes must stay within 1 MiB')
    }
    const budgetMs = init.handshakeBudgetMs ?? HANDSHAKE_BUDGET_MS
    this.#limits = {
      maxFrameBytes,
      highWaterMark,
      lowWaterMark: init.lowWaterMark ?? Math.floor(highWaterMark / 4),
      closeTimeoutMs: init.closeTimeoutMs ?? 10_000,
    }
    this.capabilities = { p2p: true, ordered: true, maxFrameBytes }
    this.#signaler = new Signaler({
      identity: init.identity,
      mesh: init.mesh,
      channel: init.dropCandidates === true ? withoutCandidates(init.signaling) : init.signaling,
      vouch: init.vouch,
      clock: this.#clock,
      budgetMs,
      ...(init.maxSessions === undefined ? {} : { maxSessions: init.maxSessions }),
      accept: (h) => this.#accept(h),
    })
  }

  get handles(): number {
    return this.#held.size
  }

  get activeSessions(): number {
    return this.#signaler.active
  }

  onRefused(listener: RefusedListener): void {
    this.#signaler.onRefused(listener)
  }

  onSession(listener: (session: TransportSession) => void): void {
    this.#listeners.add(listener)
  }

  async open(peer: PeerRef, opts: { signal: AbortSignal }): Promise<TransportSession> {
    if (this.#closed) throw new MeshError('MESH_ERR_TRANSPORT_CLOSED', 'the WebRTC transport is closed')
    if (peer.mesh !== this.#init.mesh) {
      throw new MeshError('MESH_ERR_WRONG_MESH', `this transport serves mesh ${this.#init.mesh}`, {
        details: { expected: this.#init.mesh, got: peer.mesh },
      })
    }
    opts.signal.throwIfAborted()
    try {
      return await this.#offer(peer, opts)
    } catch (err) {
      // libdatachannel now and then closes an offerer's connection within milliseconds, while ICE is
      // still checking (seen when the answerer's checks arrive around the answer); one fresh attempt
      // nearly always connects. Timeouts, refusals and aborts are final.
      if (!isMeshError(err, 'MESH_ERR_TRANSPORT_CLOSED') || err.details?.connected !== false) throw err
      if (this.#closed || opts.signal.aborted) throw err
      return await this.#offer(peer, opts)
    }
  }

  async #offer(peer: PeerRef, opts: { signal: AbortSignal }): Promise<TransportSession> {
    const pc = this.#newPeerConnection()
    const session = new WebrtcSession(peer, pc, this.#limits, this.#held, this.#clock)
    session.attach(pc.createDataChannel('agentmesh', { ordered: true }))
    let handshake: Handshake
    try {
      handshake = this.#signaler.offer(peer.pk, pc, opts)
    } catch (err) {
      session.destroy(err)
      throw err
    }
    this.#bind(session, handshake)
    const winner = await handshake.result
    // Glare: our offer was dropped for the peer's, whose session is ours to return.
    return this.#sessions.get(winner) ?? session
  }

  async close(): Promise<void> {
    this.#closed = true
    this.#signaler.close()
    await Promise.all([...this.#sessions.values()].map((s) => s.close()))
  }

  /** An inbound offer verified: a connection to answer it, announced once its channel opens. */
  #accept(h: Handshake): SignalingPeerConnection {
    const pc = this.#newPeerConnection()
    const session = new WebrtcSession(
      { mesh: this.#init.mesh, pk: h.peer },
      pc,
      this.#limits,
      this.#held,
      this.#clock,
    )
    this.#bind(session, h)
    return pc
  }

  #bind(session: WebrtcSession, h: Handshake): void {
    this.#sessions.set(h, session)
    session.bind(h, {
      onOpen: () => {
        if (h.role !== 'answerer' || h.claimed) return
        for (const listener of this.#listeners) listener(session)
      },
      onEnd: () => this.#sessions.delete(h),
    })
  }

  #newPeerConnection(): RTCPeerConnection {
    return new this.#init.RTCPeerConnection({ iceServers: this.#init.iceServers ?? [] })
  }
}

/** The `dropCandidates` test hook: `channel` with every `p2p_candidate` dropped, both ways. */
function withoutCandidates(channel: SignalingChannel): SignalingChannel {
  const wrapped: SignalingChannel = {
    send: (frame) => {
      if (frame.t !== 'p2p_candidate') channel.send(frame)
    },
    onFrame: (listener) => channel.onFrame((frame) => frame.t !== 'p2p_candidate' && listener(frame)),
  }
  if (channel.onError !== undefined) wrapped.onError = channel.onError.bind(channel)
  return wrapped
}
