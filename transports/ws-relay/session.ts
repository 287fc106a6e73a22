/**
 * One `ws-relay` session: frames are encoded envelopes between the link's key and one peer, each
 * submitted to the coordinator as a `send` and counted in flight until its `send_ack`. A retryable
 * refusal (`RETRY_CLASS` in protocol/errors.ts) resends the same bytes after `retryAfterMs` (never
 * re-sealed, so the coordinator's dedupe holds); a final one ends the session with that error.
 */
import type { Clock, ClockTimer } from '../../protocol/clock.js'
import { bytesEqual } from '../../protocol/encoding.js'
import { decodeEnvelope } from '../../protocol/envelope.js'
import {
  isMeshError,
  MeshError,
  RETRY_CLASS,
  type MeshErrorCode,
  type RetryClass,
} from '../../protocol/errors.js'
import { Emitter } from '../emitter.js'
import type { PeerRef, TransportSession, TransportSessionEvents } from '../types.js'
import type { ControlLink } from './link.js'

/**
 * What a refusal of a frame means to a session: the classes of `RETRY_CLASS` (protocol/errors.ts), the
 * one table the runtime's outbox follows too. `wait` resends the same bytes later without using an
 * attempt, `retry` uses one of `maxAttempts`, `final` ends the session with the error.
 */
export function refusalClass(err: unknown): RetryClass {
  return isMeshError(err) ? RETRY_CLASS[err.code] : 'final'
}

/** Refusals worth sending the same bytes again (the `wait` and `retry` classes). */
export const RETRYABLE_CODES: ReadonlySet<MeshErrorCode> = new Set(
  (Object.keys(RETRY_CLASS) as MeshErrorCode[]).filter((code) => RETRY_CLASS[code] !== 'final'),
)

/** What a session needs from its transport. */
export interface RelayLimits {
  readonly link: ControlLink
  readonly clock: Clock
  readonly maxFrameBytes: number
  /** Frames in flight (sent, not yet acked) past which `send` returns false. */
  readonly maxInFlight: number
  /** Bytes in flight past which `send` returns false. */
  readonly maxInFlightBytes: number
  /** Attempts per frame before a retryable refusal ends the session. */
  readonly maxAttempts: number
  /** Wait before a retry when the refusal names no `retryAfterMs`. */
  readonly retryDelayMs: number
}

type State = 'open' | 'closing' | 'closed'

export class RelaySession extends Emitter<TransportSessionEvents> implements TransportSession {
  readonly kind = 'ws-relay'
  readonly peer: PeerRef
  #limits: RelayLimits
  #state: State = 'open'
  #inFlight = 0
  #inFlightBytes = 0
  #needDrain = false
  #retries = new Set<ClockTimer>()
  #closed: Promise<void>
  #resolveClosed!: () => void
  #onClosed: (session: RelaySession) => void

  constructor(peer: PeerRef, limits: RelayLimits, onClosed: (session: RelaySession) => void) {
    super()
    this.peer = peer
    this.#limits = limits
    this.#onClosed = onClosed
    this.#closed = new Promise((resolve) => (this.#resolveClosed = resolve))
  }

  /** Bytes submitted and not yet acknowledged by the coordinator (retries included). */
  get bufferedAmount(): number {
    return this.#inFlightBytes
  }

  get open(): boolean {
    return this.#state === 'open'
  }

  /** Pending retry timers: 0 once the session closed. */
  get timers(): number {
    return this.#retries.size
  }

  send(frame: Uint8Array): boolean {
    if (this.#state !== 'open') {
      throw new MeshError('MESH_ERR_TRANSPORT_CLOSED', 'send on a closed ws-relay session', {
        details: { state: this.#state },
      })
    }
    const max = this.#limits.maxFrameBytes
    if (frame.byteLength > max) {
      throw new MeshError('MESH_ERR_FRAME_TOO_LARGE', `frame of ${frame.byteLength} bytes is too large`, {
        details: { bytes: frame.byteLength, maxFrameBytes: max },
      })
    }
    this.#check(frame)
    // An empty window takes any legal frame, so small budgets cannot wedge a sender.
    if (
      this.#inFlight > 0 &&
      (this.#inFlight >= this.#limits.maxInFlight ||
        this.#inFlightBytes + frame.byteLength > this.#limits.maxInFlightBytes)
    ) {
      this.#needDrain = true
      return false
    }
    // A copy: the caller may reuse its array, and a retry must resend exactly these bytes.
    const bytes = frame.slice()
    this.#inFlight++
    this.#inFlightBytes += bytes.byteLength
    this.#submit(bytes, 1)
    return true
  }

  /** Stops taking frames, waits until every frame in flight was acknowledged, then closes. */
  close(_reason?: string): Promise<void> {
    if (this.#state === 'open') {
      this.#state = 'closing'
      this.#maybeClosed()
    }
    return this.#closed
  }

  /** Delivers a pushed envelope from the peer; false once closed (the push is then not ours to ack). */
  deliver(frame: Uint8Array): boolean {
    if (this.#state === 'closed') return false
    this.emit('message', frame)
    return true
  }

  /** Ends the session at once with `err`; frames in flight may still reach the peer. */
  destroy(err: Error | undefined): void {
    if (this.#state === 'closed') return
    this.#state = 'closed'
    for (const timer of this.#retries) timer.cancel()
    this.#retries.clear()
    this.#inFlight = 0
    this.#inFlightBytes = 0
    this.#onClosed(this)
    this.#resolveClosed()
    this.emit('close', err)
    this.removeAllListeners()
  }

  /** A frame is an envelope from the link's key to this session's peer, in the link's mesh. */
  #check(frame: Uint8Array): void {
    const self = this.#limits.link.self
    let reason: string | undefined
    let cause: unknown
    try {
      const env = decodeEnvelope(frame)
      if (env.mesh !== self.mesh) reason = `the envelope is for mesh ${env.mesh}, not ${self.mesh}`
      else if (!bytesEqual(env.from, self.pk)) reason = "the envelope's from is not this link's key"
      else if (!(env.target instanceof Uint8Array) || !bytesEqual(env.target, this.peer.pk))
        reason = "the envelope's target is not this session's peer"
    } catch (err) {
      reason = 'the frame is not an encoded envelope'
      cause = err
    }
    if (reason !== undefined) {
      throw new MeshError('MESH_ERR_INVALID_ENVELOPE', `ws-relay: ${reason}`, {
        ...(cause !== undefined && { cause }),
      })
    }
  }

  #submit(bytes: Uint8Array, attempt: number): void {
    this.#limits.link.request({ t: 'send', envelope: bytes }).then(
      () => this.#settled(bytes),
      (err: unknown) => this.#refused(bytes, attempt, err),
    )
  }

  #refused(bytes: Uint8Array, attempt: number, err: unknown): void {
    if (this.#state === 'closed') return
    if (!isMeshError(err)) {
      const failure = new MeshError('MESH_ERR_TRANSPORT_CLOSED', 'the coordinator connection failed', {
        cause: err,
      })
      return this.destroy(failure)
    }
    const cls = refusalClass(err)
    if (cls === 'final' || (cls === 'retry' && attempt >= this.#limits.maxAttempts)) return this.destroy(err)
    const after = err.details?.['retryAfterMs']
    const delay = typeof after === 'number' && after >= 0 ? after : this.#limits.retryDelayMs
    const next = cls === 'retry' ? attempt + 1 : attempt
    const timer = this.#limits.clock.setTimeout(() => {
      this.#retries.delete(timer)
      if (this.#state !== 'closed') this.#submit(bytes, next)
    }, delay)
    this.#retries.add(timer)
  }

  #settled(bytes: Uint8Array): void {
    if (this.#state === 'closed') return
    this.#inFlight--
    this.#inFlightBytes -= bytes.byteLength
    if (this.#needDrain && this.#state === 'open' && this.#belowLowWater()) {
      this.#needDrain = false
      this.emit('drain')
    }
    this.#maybeClosed()
  }

  /** Half the window is free again: drain then, not on every ack, so senders refill in batches. */
  #belowLowWater(): boolean {
    return (
      this.#inFlight <= this.#limits.maxInFlight >>> 1 &&
      this.#inFlightBytes <= this.#limits.maxInFlightBytes >>> 1
    )
  }

  #maybeClosed(): void {
    if (this.#state === 'closing' && this.#inFlight === 0) this.destroy(undefined)
  }
}
