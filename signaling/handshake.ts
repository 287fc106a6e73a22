/**
 * One P2P handshake, keyed by its signaling id: the state machine both roles share.
 *
 *     offerer:  new → offering  → connected | failed
 *     answerer: new → answering → connected | failed
 *
 * The transport owns the peer connection and reports `connected()` when its data channel opens; the
 * `Signaler` (signaler.ts) routes relayed frames here and fails the handshake on a reject, a bad
 * signature or the budget running out. Candidates are held back until they can be used: remote ones until
 * the remote description is set, local ones until our offer or answer went out (the peer drops candidates
 * for a signaling id it has not seen).
 */
import type { ClockTimer } from '../protocol/index.js'
import type { RejectReason, SignalFrame } from './channel.js'

/** Which side of the handshake this end plays. */
export type HandshakeRole = 'offerer' | 'answerer'

/** Where a handshake stands. */
export type HandshakeState = 'new' | 'offering' | 'answering' | 'connected' | 'failed'

/** A session description as the W3C API passes it around. */
export interface SessionDescription {
  type?: string
  sdp?: string
}

/** The part of the W3C `RTCPeerConnection` that signaling drives; fakes in tests implement just this. */
export interface SignalingPeerConnection {
  createOffer(): Promise<SessionDescription>
  createAnswer(): Promise<SessionDescription>
  setLocalDescription(description: { type: 'offer' | 'answer'; sdp: string }): Promise<void>
  setRemoteDescription(description: { type: 'offer' | 'answer'; sdp: string }): Promise<void>
  addIceCandidate(candidate: {
    candidate: string
    sdpMid?: string | null
    sdpMLineIndex?: number | null
  }): Promise<void>
}

/** What a handshake needs from the signaler that owns it. */
export interface HandshakeHost {
  send(frame: SignalFrame): void
  /** Drops the handshake from the live set (it failed, or its session ended). */
  forget(handshake: Handshake): void
}

interface Candidate {
  candidate: string
  mid?: string
}

/** One handshake; see the module comment. */
export class Handshake {
  readonly sigId: string
  /** The peer's presence key. */
  readonly peer: Uint8Array
  readonly role: HandshakeRole
  /**
   * Resolves with the handshake whose channel opened: this one, or (after glare made us drop our own
   * offer) the answering handshake that replaced it. Rejects with a `MeshError` or the abort reason.
   */
  readonly result: Promise<Handshake>
  /** The offerer has accepted an answer: later answers are ignored, and glare no longer applies. */
  answered = false
  /** An answering handshake whose session goes to our own superseded offer's caller (glare), not to listeners. */
  claimed = false

  #state: HandshakeState = 'new'
  #pc: SignalingPeerConnection | undefined
  #host: HandshakeHost
  #timer: ClockTimer | undefined
  #resolve!: (h: Handshake) => void
  #reject!: (err: unknown) => void
  #remoteReady = false
  #localSent = false
  #remoteCandidates: Candidate[] = []
  #localCandidates: Candidate[] = []
  #teardown: ((err?: unknown) => void)[] = []

  constructor(host: HandshakeHost, sigId: string, peer: Uint8Array, role: HandshakeRole) {
    this.#host = host
    this.sigId = sigId
    this.peer = peer
    this.role = role
    this.result = new Promise<Handshake>((resolve, reject) => {
      this.#resolve = resolve
      this.#reject = reject
    })
    // Nobody awaits an answering handshake that fails; its failure is reported to `onRefused` instead.
    this.result.catch(() => undefined)
  }

  get state(): HandshakeState {
    return this.#state
  }

  /** True until the handshake failed (a connected one stays live until its session is released). */
  get live(): boolean {
    return this.#state !== 'failed'
  }

  get pc(): SignalingPeerConnection | undefined {
    return this.#pc
  }

  /** Moves `new` to `offering` or `answering`, with the connection to drive and the budget timer. */
  start(pc: SignalingPeerConnection | undefined, timer: ClockTimer): void {
    this.#pc = pc
    this.#timer = timer
    this.#state = this.role === 'offerer' ? 'offering' : 'answering'
  }

  /** The answerer gets its connection only after the offer verified. */
  attach(pc: SignalingPeerConnection): void {
    this.#pc = pc
  }

  /** Runs `fn` when the handshake fails or is dropped, to tear down the connection. */
  onTeardown(fn: (err?: unknown) => void): void {
    if (this.#state === 'failed') fn()
    else this.#teardown.push(fn)
  }

  /** A local ICE candidate (from `onicecandidate`) to trickle to the peer. */
  localCandidate(candidate: string, mid?: string | null): void {
    if (!this.live || candidate === '') return
    const c: Candidate = mid === undefined || mid === null ? { candidate } : { candidate, mid }
    this.#localCandidates.push(c)
    this.#flushLocal()
  }

  /** Our offer or answer went out: candidates held back may follow. */
  localDescriptionSent(): void {
    this.#localSent = true
    this.#flushLocal()
    this.#flushRemote()
  }

  /**
   * Local candidates go out once our description did and, for the offerer, once the answer is set: the
   * answerer starts its connectivity checks when our candidates reach it, and through a real relay its
   * answer can trail those checks (sent is not received), which libdatachannel's offerer answers by
   * closing the connection.
   */
  #flushLocal(): void {
    if (!this.#localSent || (this.role === 'offerer' && !this.#remoteReady)) return
    for (const c of this.#localCandidates.splice(0)) this.#sendCandidate(c)
  }

  /** A relayed candidate from the peer. */
  remoteCandidate(c: Candidate): void {
    if (!this.live) return
    this.#remoteCandidates.push(c)
    this.#flushRemote()
  }

  /** Sets the verified remote description; the candidates that came before it follow. */
  async setRemote(type: 'offer' | 'answer', sdp: string): Promise<void> {
    await this.#pc!.setRemoteDescription({ type, sdp })
    this.#remoteReady = true
    this.#flushLocal()
    this.#flushRemote()
  }

  /**
   * Remote candidates go in once the remote description is set and, for the answerer, once its answer
   * went out: its connectivity checks then reach an offerer that already knows its ICE credentials.
   * Checks arriving first were seen to make libdatachannel's offerer close the connection.
   */
  #flushRemote(): void {
    if (!this.#remoteReady || (this.role === 'answerer' && !this.#localSent)) return
    for (const c of this.#remoteCandidates.splice(0)) this.#addCandidate(c)
  }

  /** The transport's data channel opened. */
  connected(): void {
    if (this.#state !== 'offering' && this.#state !== 'answering') return
    this.#state = 'connected'
    this.#timer?.cancel()
    this.#resolve(this)
  }

  /**
   * Fails the handshake: tears down, leaves the live set, rejects `result`, and when `tell` is given sends
   * `p2p_reject{tell}` so the peer stops at once rather than at its own budget. No-op once connected.
   */
  fail(err: unknown, tell?: RejectReason): void {
    if (this.#state === 'connected' || this.#state === 'failed') return
    this.#end(err)
    if (tell !== undefined) {
      try {
        this.#host.send({ t: 'p2p_reject', sigId: this.sigId, to: this.peer, reason: tell })
      } catch {
        // The relay is gone; the peer's own budget ends its side.
      }
    }
    this.#reject(err)
  }

  /** Glare: our offer lost to the peer's; `result` follows the handshake that answers theirs. */
  supersede(by: Handshake): void {
    if (this.#state !== 'offering') return
    this.#end(undefined)
    by.claimed = true
    by.result.then(this.#resolve, this.#reject)
  }

  /** The connected session closed: frees its slot. */
  release(): void {
    this.#host.forget(this)
  }

  #end(err: unknown): void {
    this.#state = 'failed'
    this.#timer?.cancel()
    this.#host.forget(this)
    for (const fn of this.#teardown.splice(0)) fn(err)
  }

  #sendCandidate(c: Candidate): void {
    try {
      this.#host.send({ t: 'p2p_candidate', sigId: this.sigId, to: this.peer, ...c })
    } catch {
      // A lost candidate only costs a path; the budget covers a handshake that cannot connect.
    }
  }

  #addCandidate(c: Candidate): void {
    // A candidate the stack cannot use (wrong family, stale) is not fatal: others may still pair.
    const init =
      c.mid === undefined
        ? { candidate: c.candidate, sdpMLineIndex: 0 }
        : { candidate: c.candidate, sdpMid: c.mid }
    this.#pc?.addIceCandidate(init).catch(() => undefined)
  }
}
