/**
 * One WebRTC session: a peer connection and its one ordered, reliable data channel, with explicit
 * backpressure (DESIGN.md §5). `send` refuses a frame while the channel's `bufferedAmount` is at or above
 * the high-water mark, which sits a frame below 1 MiB so the buffer never passes 1 MiB; `drain` follows
 * when `bufferedamountlow` fires.
 */
import { MeshError, type ClockTimer, type Clock } from '../../protocol/index.js'
import type { Handshake } from '../../signaling/index.js'
import { Emitter } from '../emitter.js'
import type { PeerRef, TransportSession, TransportSessionEvents } from '../types.js'

/**
 * The close handshake, as a string message (frames are always binary). Needed because node-datachannel
 * drops messages still queued for JavaScript when a channel closes, so a plain close loses the tail.
 */
const FIN = 'agentmesh/fin'

/** Limits a session works within. */
export interface SessionLimits {
  maxFrameBytes: number
  highWaterMark: number
  lowWaterMark: number
  /** Bound on the flush and close waits of `close()`. */
  closeTimeoutMs: number
}

/**
 * Every peer connection and data channel in use. An unreferenced one is garbage-collected and closes
 * mid-transfer, so each stays in here until it closed.
 */
export type HandleSet = Set<RTCPeerConnection | RTCDataChannel>

/** A session over one data channel; see the module comment. */
export class WebrtcSession extends Emitter<TransportSessionEvents> implements TransportSession {
  readonly kind = 'webrtc' as const
  readonly peer: PeerRef
  readonly #pc: RTCPeerConnection
  readonly #limits: SessionLimits
  readonly #held: HandleSet
  readonly #clock: Clock
  #dc: RTCDataChannel | undefined
  #handshake: Handshake | undefined
  #pendingCandidates: RTCIceCandidate[] = []
  #open = false
  #finished = false
  #wantDrain = false
  #closing: Promise<void> | undefined
  #onOpen: (() => void) | undefined
  #onEnd: (() => void) | undefined
  #peerFin = false
  #markPeerFin!: () => void
  readonly #peerFinSeen = new Promise<void>((resolve) => (this.#markPeerFin = resolve))
  #markEnded!: () => void
  /** Settles when the session finished, however it did. */
  readonly #ended = new Promise<void>((resolve) => (this.#markEnded = resolve))

  constructor(peer: PeerRef, pc: RTCPeerConnection, limits: SessionLimits, held: HandleSet, clock: Clock) {
    super()
    this.peer = peer
    this.#pc = pc
    this.#limits = limits
    this.#held = held
    this.#clock = clock
    held.add(pc)
    pc.onicecandidate = (e) => {
      if (e.candidate === null) return
      if (this.#handshake === undefined) this.#pendingCandidates.push(e.candidate)
      else this.#handshake.localCandidate(e.candidate.candidate, e.candidate.sdpMid)
    }
    pc.onconnectionstatechange = () => {
      const state = pc.connectionState
      if (state !== 'failed' && state !== 'closed') return
      // The peer closing its connection after its channel is a clean close; the polyfill may report the
      // connection before the channel (it dispatches the channel's close on a later turn).
      const channel = this.#dc?.readyState
      const clean =
        this.#closing !== undefined || (state === 'closed' && (channel === 'closing' || channel === 'closed'))
      const err = new MeshError('MESH_ERR_TRANSPORT_CLOSED', `peer connection ${state}`, {
        details: { connectionState: state, connected: this.#open },
      })
      this.#finish(clean ? undefined : err)
    }
    pc.ondatachannel = (e) => this.attach(e.channel)
  }

  /** Ties the session to its handshake: candidates trickle through it, its failure tears us down. */
  bind(handshake: Handshake, hooks: { onOpen: () => void; onEnd: () => void }): void {
    this.#handshake = handshake
    this.#onOpen = hooks.onOpen
    this.#onEnd = hooks.onEnd
    for (const c of this.#pendingCandidates.splice(0)) handshake.localCandidate(c.candidate, c.sdpMid)
    handshake.onTeardown((err) => this.#finish(err))
  }

  /** The session's data channel: created by the offerer, announced by `ondatachannel` to the answerer. */
  attach(dc: RTCDataChannel): void {
    if (this.#dc !== undefined || this.#finished) {
      dc.close() // one channel per session; a second one is not ours to serve
      return
    }
    this.#dc = dc
    this.#held.add(dc)
    dc.binaryType = 'arraybuffer'
    dc.bufferedAmountLowThreshold = this.#limits.lowWaterMark
    dc.onopen = () => {
      // The polyfill may report a channel open twice: once as `readyState`, once as the native event.
      if (this.#open || this.#finished) return
      this.#open = true
      this.#handshake?.connected()
      this.#onOpen?.()
    }
    dc.onmessage = (e: MessageEvent) => {
      if (e.data instanceof ArrayBuffer) this.emit('message', new Uint8Array(e.data))
      else if (e.data === FIN) this.#onPeerFin()
    }
    dc.onbufferedamountlow = () => {
      if (!this.#wantDrain || !this.#open) return
      this.#wantDrain = false
      this.emit('drain')
    }
    // A close we did not ask for is the peer's clean close (an abort arrives as a failed connection). One we
    // asked for is finished by `close()`, once the peer has closed its connection.
    dc.onclose = () => {
      if (this.#closing === undefined || this.#peerFin) this.#finish(undefined)
    }
    if (dc.readyState === 'open') dc.onopen(new Event('open'))
  }

  get open(): boolean {
    return this.#open && !this.#finished && this.#closing === undefined
  }

  get bufferedAmount(): number {
    return this.#dc?.bufferedAmount ?? 0
  }

  send(frame: Uint8Array): boolean {
    if (!this.open || this.#closing !== undefined || this.#dc?.readyState !== 'open') {
      throw new MeshError('MESH_ERR_TRANSPORT_CLOSED', 'the WebRTC session is closed')
    }
    if (frame.byteLength > this.#limits.maxFrameBytes) {
      throw new MeshError('MESH_ERR_FRAME_TOO_LARGE', `frame of ${frame.byteLength} bytes`, {
        details: { max: this.#limits.maxFrameBytes },
      })
    }
    if (this.#dc.bufferedAmount >= this.#limits.highWaterMark) {
      this.#wantDrain = true
      return false
    }
    // The W3C send takes an ArrayBufferView; a copy keeps a caller's later reuse of its buffer harmless.
    this.#dc.send(frame.slice())
    return true
  }

  close(): Promise<void> {
    this.#closing ??= this.#closeGracefully()
    return this.#closing
  }

  /** Tears everything down at once (handshake failure, transport shutdown). */
  destroy(err?: unknown): void {
    this.#finish(err)
  }

  async #closeGracefully(): Promise<void> {
    const dc = this.#dc
    if (dc !== undefined && dc.readyState === 'open' && !this.#finished) {
      // FIN follows our last frame on the ordered channel; the peer's FIN follows its last one. Once it
      // arrived both sides have read everything, and closing cannot lose a frame.
      sendFin(dc)
      await this.#until((done) => void Promise.race([this.#peerFinSeen, this.#ended]).then(done))
      dc.close()
    }
    this.#finish(undefined)
  }

  /** The peer's FIN: our answer if it started the close, else the answer to ours. */
  #onPeerFin(): void {
    this.#peerFin = true
    this.#markPeerFin()
    if (this.#closing !== undefined) return
    this.#closing = (async () => {
      if (this.#dc !== undefined) sendFin(this.#dc)
      // The closer closes the channel and the connection once it reads our FIN.
      await this.#until((done) => void this.#ended.then(done))
      this.#finish(undefined)
    })()
  }

  /** Waits for an event registered by `on`, at most `closeTimeoutMs`. */
  #until(on: (done: () => void) => void): Promise<void> {
    return new Promise((resolve) => {
      let timer: ClockTimer | undefined = undefined
      const done = (): void => {
        timer?.cancel()
        resolve()
      }
      timer = this.#clock.setTimeout(done, this.#limits.closeTimeoutMs)
      on(done)
    })
  }

  #finish(err: unknown): void {
    if (this.#finished) return
    this.#finished = true
    const wasOpen = this.#open
    this.#open = false
    const dc = this.#dc
    if (dc !== undefined) {
      dc.onmessage = dc.onbufferedamountlow = dc.onopen = dc.onclose = null
      if (dc.readyState !== 'closed') dc.close()
      this.#held.delete(dc)
    }
    this.#pc.onicecandidate = this.#pc.onconnectionstatechange = this.#pc.ondatachannel = null
    this.#pc.close()
    this.#held.delete(this.#pc)
    if (this.#handshake?.state === 'connected') this.#handshake.release()
    else this.#handshake?.fail(err ?? new MeshError('MESH_ERR_TRANSPORT_CLOSED', 'closed before connecting'))
    this.#onEnd?.()
    this.#markEnded()
    if (wasOpen) this.emit('close', err instanceof Error ? err : undefined)
  }
}

/** Sends FIN; a channel that closed meanwhile needs none (the wait that follows ends with the session). */
function sendFin(dc: RTCDataChannel): void {
  try {
    dc.send(FIN)
  } catch {
    // Closed or closing already.
  }
}
