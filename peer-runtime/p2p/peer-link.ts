/**
 * Everything the manager knows about one peer: its P2P sessions (newest last; briefly two after glare or
 * a re-handshake), the handshake in progress, the relay sends not yet acked, and when the next handshake
 * may start. It decides, message by message, P2P or relay (DESIGN.md §5):
 *
 * - P2P only on a warm session and only once every earlier relay send to this peer was acked;
 * - otherwise the relay, starting a handshake in the background when the peer is reachable (the message
 *   never waits on ICE); a failed handshake or a demotion keeps the pair on the relay for
 *   `retryHandshakeAfterMs`;
 * - a session that loses envelopes (no ack within `ackTimeoutMs`, a stalled buffer, a close under them)
 *   is demoted: every unacked envelope on it is resent through the relay, the same bytes, and its
 *   waiters settle with the relay's outcome;
 * - at its age limit a session we dialed is replaced by a fresh handshake, then drains and closes; one
 *   the peer dialed is retired a handshake budget later, by when the peer's replacement has arrived.
 */
import type { Clock } from '../../protocol/clock.js'
import { MeshError } from '../../protocol/errors.js'
import type { FrameOf } from '../../protocol/frames.js'
import type { PeerRef, PeerTransport, TransportSession } from '../../transports/types.js'
import {
  closedError,
  P2PSession,
  type AckStatus,
  type LossReason,
  type P2PSessionHost,
  type Unacked,
  type Waiter,
} from './p2p-session.js'

/** How one envelope went: acked by the peer over P2P, or accepted by the coordinator. */
export type Delivery = { via: 'p2p'; status: AckStatus } | { via: 'relay'; ack: FrameOf<'send_ack'> }

/** Timings of the P2P policy, all in milliseconds. */
export interface P2PTimings {
  handshakeBudgetMs: number
  ackTimeoutMs: number
  idleMs: number
  rehandshakeMs: number
  retryHandshakeAfterMs: number
}

/** What a link needs from its manager: the runtime's hooks, shared state and the manager's counters. */
export interface LinkContext {
  readonly self: PeerRef
  readonly transport: PeerTransport
  readonly clock: Clock
  readonly timings: P2PTimings
  readonly closed: boolean
  /** Aborted when the manager starts closing: handshakes in progress give up. */
  readonly dialSignal: AbortSignal
  /** Aborted once the manager has closed: resends still waiting on the relay give up. */
  readonly resendSignal: AbortSignal
  vouch(pk: Uint8Array): boolean
  reachable(pk: Uint8Array): boolean
  inbound(envelope: Uint8Array, from: Uint8Array): Promise<AckStatus>
  /** The runtime's relay, counted (relaySent, relayedCouldHaveBeenP2P). */
  relay(to: Uint8Array, envelope: Uint8Array, signal: AbortSignal): Promise<FrameOf<'send_ack'>>
  countP2pSent(): void
  /** A session came up, closed, lost envelopes, or a handshake failed (counted and told). */
  report(event: LinkEvent): void
}

/** What a link reports. */
export type LinkEvent =
  | { kind: 'session'; pk: Uint8Array; dialed: boolean }
  | { kind: 'session-closed'; pk: Uint8Array }
  | { kind: 'demoted'; pk: Uint8Array; reason: LossReason; resent: number }
  | { kind: 'handshake-failed'; pk: Uint8Array; error: unknown }

/** One peer's state; see the module comment. */
export class PeerLink implements P2PSessionHost<Delivery> {
  readonly pk: Uint8Array
  readonly #ctx: LinkContext
  readonly #sessions: P2PSession<Delivery>[] = []
  /** Relay sends to this peer still waiting for their `send_ack` (or their failure). */
  #relayInFlight = 0
  /** Messages waiting for the relay sends in flight to be acked before they go P2P. */
  readonly #drainWaiters = new Set<() => void>()
  #dialing = false
  /** No handshake starts before this time (after a failed one, or a demotion). */
  #retryAt = 0

  constructor(pk: Uint8Array, ctx: LinkContext) {
    this.pk = pk
    this.#ctx = ctx
  }

  get clock(): Clock {
    return this.#ctx.clock
  }
  get mesh(): string {
    return this.#ctx.self.mesh
  }
  get ackTimeoutMs(): number {
    return this.#ctx.timings.ackTimeoutMs
  }
  get idleMs(): number {
    return this.#ctx.timings.idleMs
  }

  /** Open sessions (serving or draining). */
  get sessionCount(): number {
    return this.#sessions.length
  }

  /** Nothing on this link worth keeping: no session, handshake, relay send or pause in force. */
  get idle(): boolean {
    return (
      this.#sessions.length === 0 &&
      !this.#dialing &&
      this.#relayInFlight === 0 &&
      this.#ctx.clock.now() >= this.#retryAt
    )
  }

  /** The newest session that takes envelopes. */
  warm(): P2PSession<Delivery> | undefined {
    for (let i = this.#sessions.length - 1; i >= 0; i--)
      if (this.#sessions[i]!.usable) return this.#sessions[i]
    return undefined
  }

  /** Sends one envelope by P2P or relay (see the module comment) and resolves with how it went. */
  deliver(clientMessageId: string, envelope: Uint8Array, signal: AbortSignal): Promise<Delivery> {
    const vouched = this.#ctx.vouch(this.pk)
    if (!vouched) this.#dropAll('revoked')
    // A retry of an envelope already on a session waits for that one's outcome rather than sending twice.
    const inFlight = this.#unacked(clientMessageId)
    if (inFlight !== undefined) return wait(inFlight, signal)
    const session = this.warm()
    if (session !== undefined && this.#relayInFlight === 0)
      return this.#sendP2P(session, clientMessageId, envelope, signal)
    if (session !== undefined) {
      // Warm, but relay sends to this peer are still unacked: wait for them, then go P2P. Under steady
      // load (an outbox keeps hundreds in flight) the relay count never reaches zero by itself, so new
      // messages must stop joining it, or the pair would never switch.
      return this.#relayDrained(signal).then(() => this.deliver(clientMessageId, envelope, signal))
    }
    if (vouched && this.#ctx.reachable(this.pk)) this.dial()
    return this.#relay(envelope, signal).then((ack) => ({ via: 'relay', ack }))
  }

  #sendP2P(
    session: P2PSession<Delivery>,
    clientMessageId: string,
    envelope: Uint8Array,
    signal: AbortSignal,
  ): Promise<Delivery> {
    const entry: Unacked<Delivery> = { clientMessageId, envelope, waiters: [] }
    // A loss inside `sendEnvelope` settles waiters only on a later turn, so waiting after it is in time.
    session.sendEnvelope(entry)
    this.#ctx.countP2pSent()
    return wait(entry, signal)
  }

  /** Resolves when no relay send to this peer is in flight (rejects when `signal` aborts first). */
  #relayDrained(signal: AbortSignal): Promise<void> {
    if (this.#relayInFlight === 0) return Promise.resolve()
    return new Promise((resolve, reject) => {
      const onAbort = (): void => {
        this.#drainWaiters.delete(done)
        reject(signal.reason as Error)
      }
      const done = (): void => {
        signal.removeEventListener('abort', onAbort)
        resolve()
      }
      this.#drainWaiters.add(done)
      signal.addEventListener('abort', onAbort, { once: true })
    })
  }

  /** Starts a handshake unless one runs or the pair is waiting out a failure; `replacing` retires after. */
  dial(replacing?: P2PSession<Delivery>): void {
    const ctx = this.#ctx
    if (ctx.closed || this.#dialing || (replacing === undefined && ctx.clock.now() < this.#retryAt)) {
      void replacing?.retire()
      return
    }
    this.#dialing = true
    const controller = new AbortController()
    const budgetMs = ctx.timings.handshakeBudgetMs
    const timer = ctx.clock.setTimeout(
      () =>
        controller.abort(
          new MeshError('MESH_ERR_SIGNAL_TIMEOUT', `no P2P session within ${budgetMs} ms`, {
            details: { budgetMs },
          }),
        ),
      budgetMs,
    )
    const onClose = (): void => controller.abort(ctx.dialSignal.reason)
    ctx.dialSignal.addEventListener('abort', onClose, { once: true })
    const settle = (): void => {
      timer.cancel()
      ctx.dialSignal.removeEventListener('abort', onClose)
      this.#dialing = false
    }
    ctx.transport.open({ mesh: ctx.self.mesh, pk: this.pk }, { signal: controller.signal }).then(
      (session) => {
        settle()
        // The new session first, so the old one stops taking envelopes only once there is another.
        this.adopt(session, true)
        void replacing?.retire()
      },
      (error: unknown) => {
        settle()
        void replacing?.retire()
        if (ctx.closed) return
        this.#retryAt = ctx.clock.now() + ctx.timings.retryHandshakeAfterMs
        ctx.report({ kind: 'handshake-failed', pk: this.pk, error })
      },
    )
  }

  /** Takes a session (ours or the peer's) into service, unless it is not one we may use. */
  adopt(transport: TransportSession, dialed: boolean): void {
    const ctx = this.#ctx
    if (ctx.closed || transport.peer.mesh !== ctx.self.mesh || !ctx.vouch(this.pk)) {
      void transport.close('refused').catch(() => undefined)
      return
    }
    const { rehandshakeMs, handshakeBudgetMs } = ctx.timings
    const ageMs = dialed ? rehandshakeMs : rehandshakeMs + handshakeBudgetMs
    const session = new P2PSession<Delivery>(transport, this, dialed, ageMs)
    this.#sessions.push(session)
    ctx.report({ kind: 'session', pk: this.pk, dialed })
  }

  /** Drains and closes every session (the manager is closing). */
  async close(): Promise<void> {
    await Promise.all(this.#sessions.map((s) => s.retire()))
  }

  // ── P2PSessionHost ─────────────────────────────────────────────────────────

  vouch(pk: Uint8Array): boolean {
    return this.#ctx.vouch(pk)
  }

  inbound(envelope: Uint8Array, from: Uint8Array): Promise<AckStatus> {
    return this.#ctx.inbound(envelope, from)
  }

  acked(session: P2PSession<Delivery>, clientMessageId: string, status: AckStatus): void {
    // The ack comes back on the session the envelope went out on; a peer may answer on its newest one.
    let entry = session.takeAcked(clientMessageId)
    for (const other of this.#sessions) entry ??= other.takeAcked(clientMessageId)
    // None: a late ack for an envelope already demoted to the relay (the receiver's dedupe copes).
    if (entry === undefined) return
    for (const waiter of entry.waiters.splice(0)) waiter.resolve({ via: 'p2p', status })
  }

  ended(session: P2PSession<Delivery>, unacked: Unacked<Delivery>[], reason: LossReason | undefined): void {
    const at = this.#sessions.indexOf(session)
    if (at >= 0) this.#sessions.splice(at, 1)
    const ctx = this.#ctx
    const lost = unacked.length > 0 && reason !== undefined
    // A path that lost envelopes is suspect: stay on the relay for a while before dialing again.
    if (lost) this.#retryAt = ctx.clock.now() + ctx.timings.retryHandshakeAfterMs
    for (const entry of unacked) this.#resend(entry)
    if (lost) ctx.report({ kind: 'demoted', pk: this.pk, reason, resent: unacked.length })
    ctx.report({ kind: 'session-closed', pk: this.pk })
  }

  revoked(_session: P2PSession<Delivery>): void {
    this.#dropAll('revoked')
  }

  aged(session: P2PSession<Delivery>): void {
    const ctx = this.#ctx
    const replace = session.dialed && session === this.warm() && ctx.vouch(this.pk) && ctx.reachable(this.pk)
    if (replace) this.dial(session)
    else void session.retire()
  }

  // ── inside ─────────────────────────────────────────────────────────────────

  #unacked(clientMessageId: string): Unacked<Delivery> | undefined {
    for (const session of this.#sessions) {
      const entry = session.unacked(clientMessageId)
      if (entry !== undefined) return entry
    }
    return undefined
  }

  async #relay(envelope: Uint8Array, signal: AbortSignal): Promise<FrameOf<'send_ack'>> {
    this.#relayInFlight++
    try {
      return await this.#ctx.relay(this.pk, envelope, signal)
    } finally {
      this.#relayInFlight--
      if (this.#relayInFlight === 0) {
        const waiters = [...this.#drainWaiters]
        this.#drainWaiters.clear()
        for (const w of waiters) w()
      }
    }
  }

  /** The same bytes through the coordinator; the envelope's waiters get the relay's outcome. */
  #resend(entry: Unacked<Delivery>): void {
    const signal = this.#ctx.resendSignal
    const settled = signal.aborted
      ? Promise.reject(closedError('the P2P manager closed before the resend'))
      : this.#relay(entry.envelope, signal)
    settled.then(
      (ack) => {
        for (const waiter of entry.waiters.splice(0)) waiter.resolve({ via: 'relay', ack })
      },
      (err: unknown) => {
        for (const waiter of entry.waiters.splice(0)) waiter.reject(err)
      },
    )
  }

  #dropAll(reason: LossReason): void {
    for (const session of [...this.#sessions]) session.drop(reason)
  }
}

/** Adds a waiter to `entry`; an abort of `signal` rejects this waiter only (the envelope goes on). */
function wait(entry: Unacked<Delivery>, signal: AbortSignal): Promise<Delivery> {
  if (signal.aborted) return Promise.reject(signal.reason as Error)
  return new Promise((resolve, reject) => {
    const onAbort = (): void => {
      const at = entry.waiters.indexOf(waiter)
      if (at >= 0) entry.waiters.splice(at, 1)
      reject(signal.reason as Error)
    }
    const waiter: Waiter<Delivery> = {
      resolve(outcome) {
        signal.removeEventListener('abort', onAbort)
        resolve(outcome)
      },
      reject(err) {
        signal.removeEventListener('abort', onAbort)
        reject(err instanceof Error ? err : new Error(String(err)))
      },
    }
    entry.waiters.push(waiter)
    signal.addEventListener('abort', onAbort, { once: true })
  })
}
