/**
 * One P2P session as the manager uses it: a `TransportSession` carrying `p2p_env` and `p2p_ack` frames
 * (PROTOCOL.md §6), one msgpack frame per message. It holds
 *
 * - a write queue that honours backpressure: a frame `send` refuses waits for `drain`, in order;
 * - the envelopes sent and not yet acked, in hand-off order, watched by one timer: the oldest unacked
 *   past `ackTimeoutMs` (or a send buffer that does not drain for as long) demotes the session;
 * - the inbound side: every frame re-checks that the roster still vouches for the peer, an envelope whose
 *   `from` is not the peer is acked `rejected`, anything else goes to the runtime and its status is acked;
 *   a frame that does not decode is dropped and the session carries on;
 * - the idle timer (no traffic for `idleMs`) and the age timer (`rehandshakeMs` after it opened).
 *
 * Policy (what to do with unacked frames, when to replace a session) is the peer link's (peer-link.ts).
 */
import type { Clock, ClockTimer } from '../../protocol/clock.js'
import { bytesEqual } from '../../protocol/encoding.js'
import { decodeEnvelope, type Envelope } from '../../protocol/envelope.js'
import { MeshError } from '../../protocol/errors.js'
import { decodeFrame, encodeFrame, type ACK_STATUSES, type Frame } from '../../protocol/frames.js'
import type { TransportSession } from '../../transports/types.js'

/** How a receiver acknowledges an envelope (`p2p_ack.status`). */
export type AckStatus = (typeof ACK_STATUSES)[number]

/** Someone waiting for the outcome of one envelope (a `deliver` call). */
export interface Waiter<T> {
  resolve(outcome: T): void
  reject(err: unknown): void
}

/** One envelope sent on a session and not yet acked. */
export interface Unacked<T> {
  clientMessageId: string
  /** The sealed bytes, resent unchanged if the session is demoted. */
  envelope: Uint8Array
  waiters: Waiter<T>[]
  /** When the frame was handed to the transport; unset while it waits in the write queue. */
  sentAt?: number
}

/** Where a session stands: serving, retiring (acks only, closes once nothing is unacked), or done. */
export type P2PSessionState = 'active' | 'draining' | 'closed'

/** Why a session ended with envelopes unacked. */
export type LossReason = 'ack-timeout' | 'send-stalled' | 'session-closed' | 'revoked'

/** What a session reports to its link and asks of the runtime. */
export interface P2PSessionHost<T> {
  readonly clock: Clock
  readonly mesh: string
  readonly ackTimeoutMs: number
  readonly idleMs: number
  vouch(pk: Uint8Array): boolean
  inbound(envelope: Uint8Array, from: Uint8Array): Promise<AckStatus>
  /** A `p2p_ack` arrived on this session. */
  acked(session: P2PSession<T>, clientMessageId: string, status: AckStatus): void
  /** The session ended; `unacked` holds what it never got acks for (empty after a clean drain). */
  ended(session: P2PSession<T>, unacked: Unacked<T>[], reason: LossReason | undefined): void
  /** The roster stopped vouching for the peer (checked on every inbound frame). */
  revoked(session: P2PSession<T>): void
  /** The session reached the age the link gave it (its re-handshake). */
  aged(session: P2PSession<T>): void
}

interface Queued<T> {
  frame: Uint8Array
  unacked?: Unacked<T>
}

/** See the module comment. `T` is what a waiter receives (the manager's `Delivery`). */
export class P2PSession<T> {
  readonly transport: TransportSession
  /** True when we opened it; false when the peer did (`onSession`). */
  readonly dialed: boolean
  readonly openedAt: number
  /** Frames that did not decode (or were not ours), dropped without harm to the rest. */
  malformed = 0
  readonly #host: P2PSessionHost<T>
  readonly #unacked = new Map<string, Unacked<T>>()
  #queue: Queued<T>[] = []
  #state: P2PSessionState = 'active'
  #lastActivity: number
  #ackTimer: ClockTimer | undefined
  #stallTimer: ClockTimer | undefined
  #idleTimer: ClockTimer | undefined
  #ageTimer: ClockTimer | undefined
  #closing: Promise<void> | undefined
  readonly #whenClosed: (() => void)[] = []

  /** `ageMs`: when `host.aged` is called (the link's re-handshake policy). */
  constructor(transport: TransportSession, host: P2PSessionHost<T>, dialed: boolean, ageMs: number) {
    this.transport = transport
    this.#host = host
    this.dialed = dialed
    this.openedAt = host.clock.now()
    this.#lastActivity = this.openedAt
    transport.on('message', (frame) => this.#onMessage(frame))
    transport.on('drain', () => this.#flush())
    transport.on('close', () => this.#end('session-closed'))
    this.#armIdle(host.idleMs)
    this.#ageTimer = host.clock.setTimeout(() => {
      this.#ageTimer = undefined
      if (this.#state !== 'closed') host.aged(this)
    }, ageMs)
    // A session that closed before we held it (the peer hung up at once) ends now.
    if (!transport.open) queueMicrotask(() => this.#end('session-closed'))
  }

  get state(): P2PSessionState {
    return this.#state
  }

  /** True while the session takes new envelopes. */
  get usable(): boolean {
    return this.#state === 'active' && this.transport.open
  }

  /** The envelope waiting for an ack under `clientMessageId`, if any. */
  unacked(clientMessageId: string): Unacked<T> | undefined {
    return this.#unacked.get(clientMessageId)
  }

  /** Sends one envelope as `p2p_env`; its waiters settle on the ack, or through the link on a loss. */
  sendEnvelope(entry: Unacked<T>): void {
    // Encoded first: bytes the frame schema refuses throw here, before anything waits for an ack.
    const frame = encodeFrame({ t: 'p2p_env', envelope: entry.envelope })
    this.#unacked.set(entry.clientMessageId, entry)
    this.#write(frame, entry)
  }

  /** Removes and returns the unacked envelope `clientMessageId` names (its ack arrived). */
  takeAcked(clientMessageId: string): Unacked<T> | undefined {
    const entry = this.#unacked.get(clientMessageId)
    if (entry === undefined) return undefined
    this.#unacked.delete(clientMessageId)
    if (this.#ackTimer !== undefined && this.#unacked.size === 0) {
      this.#ackTimer.cancel()
      this.#ackTimer = undefined
    }
    if (this.#state === 'draining' && this.#unacked.size === 0) void this.#closeTransport()
    return entry
  }

  /**
   * Stops taking envelopes; acks still flow both ways, and the session closes cleanly once every
   * envelope on it was acked (or is demoted by the ack timer). Resolves when it has closed.
   */
  retire(): Promise<void> {
    if (this.#state === 'active') {
      this.#state = 'draining'
      if (this.#unacked.size === 0) void this.#closeTransport()
    }
    return this.#closed()
  }

  /** Ends the session now, handing its unacked envelopes to the link (`revoked`, a demotion). */
  drop(reason: LossReason): void {
    this.#end(reason)
  }

  /** Settles once the session ended, however it did. */
  #closed(): Promise<void> {
    if (this.#state === 'closed') return Promise.resolve()
    return new Promise((resolve) => this.#whenClosed.push(resolve))
  }

  #write(frame: Uint8Array, unacked?: Unacked<T>): void {
    if (this.#state === 'closed') return
    this.#lastActivity = this.#host.clock.now()
    if (this.#queue.length === 0 && this.#trySend(frame)) {
      if (unacked !== undefined) this.#handedOff(unacked)
      return
    }
    if ((this.#state as P2PSessionState) === 'closed') return // `send` threw: the session is gone
    this.#queue.push(unacked === undefined ? { frame } : { frame, unacked })
    this.#armStall()
  }

  /** The transport asked for more: sends what waited, in order, until it refuses again. */
  #flush(): void {
    this.#stallTimer?.cancel()
    this.#stallTimer = undefined
    while (this.#queue.length > 0 && this.#state !== 'closed') {
      const next = this.#queue[0]!
      if (!this.#trySend(next.frame)) break
      this.#queue.shift()
      if (next.unacked !== undefined) this.#handedOff(next.unacked)
    }
    if (this.#queue.length > 0) this.#armStall()
  }

  /** `send`, with a throw (the session closed under us) turned into the session's end. */
  #trySend(frame: Uint8Array): boolean {
    try {
      return this.transport.send(frame)
    } catch {
      this.#end('session-closed')
      return false
    }
  }

  #handedOff(entry: Unacked<T>): void {
    // An ack can beat the hand-off bookkeeping only if it was taken meanwhile: then nothing to watch.
    if (!this.#unacked.has(entry.clientMessageId)) return
    entry.sentAt = this.#host.clock.now()
    this.#armAck()
  }

  /** One timer for the oldest envelope handed off and not acked (acks may come out of order). */
  #armAck(): void {
    if (this.#ackTimer !== undefined || this.#state === 'closed') return
    const oldest = this.#oldestSent()
    if (oldest === undefined) return
    const wait = oldest + this.#host.ackTimeoutMs - this.#host.clock.now()
    this.#ackTimer = this.#host.clock.setTimeout(
      () => {
        this.#ackTimer = undefined
        const due = this.#oldestSent()
        if (due === undefined) return
        if (this.#host.clock.now() - due >= this.#host.ackTimeoutMs) this.#end('ack-timeout')
        else this.#armAck()
      },
      Math.max(0, wait),
    )
  }

  #oldestSent(): number | undefined {
    for (const entry of this.#unacked.values()) if (entry.sentAt !== undefined) return entry.sentAt
    return undefined
  }

  /** A send buffer that does not drain within the ack timeout is as dead as a peer that does not ack. */
  #armStall(): void {
    if (this.#stallTimer !== undefined || this.#state === 'closed') return
    this.#stallTimer = this.#host.clock.setTimeout(() => {
      this.#stallTimer = undefined
      if (this.#queue.length > 0) this.#end('send-stalled')
    }, this.#host.ackTimeoutMs)
  }

  #armIdle(ms: number): void {
    this.#idleTimer = this.#host.clock.setTimeout(() => {
      this.#idleTimer = undefined
      if (this.#state === 'closed') return
      const quiet = this.#host.clock.now() - this.#lastActivity
      if (quiet >= this.#host.idleMs && this.#unacked.size === 0) void this.retire()
      else this.#armIdle(Math.max(1, this.#host.idleMs - quiet))
    }, ms)
  }

  #onMessage(bytes: Uint8Array): void {
    if (this.#state === 'closed') return
    this.#lastActivity = this.#host.clock.now()
    // Revocation reaches P2P paths on the next frame, whatever that frame is.
    if (!this.#host.vouch(this.transport.peer.pk)) {
      this.#host.revoked(this)
      return
    }
    let frame: Frame
    try {
      frame = decodeFrame(bytes)
    } catch {
      this.malformed++
      return
    }
    if (frame.t === 'p2p_ack') this.#host.acked(this, frame.clientMessageId, frame.status)
    else if (frame.t === 'p2p_env') void this.#onEnvelope(frame.envelope)
    else this.malformed++
  }

  async #onEnvelope(bytes: Uint8Array): Promise<void> {
    let envelope: Envelope
    try {
      envelope = decodeEnvelope(bytes)
    } catch {
      // Without a readable clientMessageId there is nothing to ack; the sender's ack timer moves it on.
      this.malformed++
      return
    }
    const peer = this.transport.peer.pk
    let status: AckStatus
    if (!bytesEqual(envelope.from, peer) || envelope.mesh !== this.#host.mesh) {
      status = 'rejected'
    } else {
      try {
        status = await this.#host.inbound(bytes, peer)
      } catch {
        // Not stored, so not acked: the sender's ack timer resends it through the coordinator.
        return
      }
    }
    if (this.#state === 'closed' || !this.transport.open) return
    this.#write(encodeFrame({ t: 'p2p_ack', clientMessageId: envelope.clientMessageId, status }))
  }

  /**
   * A clean close, waited for at most `ackTimeoutMs`: a peer that vanished without a word would hold a
   * WebRTC close for its own timeout (10 s), and nothing on this session is unacked anyway.
   */
  async #closeTransport(): Promise<void> {
    this.#closing ??= this.transport.close('retired').catch(() => undefined)
    let timer: ClockTimer | undefined
    const bound = new Promise<void>((resolve) => {
      timer = this.#host.clock.setTimeout(resolve, this.#host.ackTimeoutMs)
    })
    await Promise.race([this.#closing, bound])
    timer?.cancel()
    this.#end(undefined)
  }

  /** Ends the session (idempotent): timers stop, the transport closes, the link gets what was unacked. */
  #end(reason: LossReason | undefined): void {
    if (this.#state === 'closed') return
    this.#state = 'closed'
    for (const timer of [this.#ackTimer, this.#stallTimer, this.#idleTimer, this.#ageTimer]) timer?.cancel()
    this.#ackTimer = this.#stallTimer = this.#idleTimer = this.#ageTimer = undefined
    this.#queue = []
    const unacked = [...this.#unacked.values()]
    this.#unacked.clear()
    // A clean close cannot take long on a healthy path, and on a dead one nobody needs to wait for it.
    if (this.transport.open) void this.transport.close(reason ?? 'closed').catch(() => undefined)
    this.#host.ended(this, unacked, unacked.length > 0 ? (reason ?? 'session-closed') : undefined)
    for (const resolve of this.#whenClosed.splice(0)) resolve()
  }
}

/** The error a waiter gets when its envelope could go neither way (the manager closed under it). */
export function closedError(message: string): MeshError {
  return new MeshError('MESH_ERR_TRANSPORT_CLOSED', message)
}
