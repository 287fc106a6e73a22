/**
 * The P2P session manager (DESIGN.md §5): delivers sealed direct envelopes (`dm`, `rpc`, `stream`) to one
 * peer at a time, over a warm P2P session when there is one, else through the coordinator's accept path,
 * and keeps the sessions (handshakes, demotion, idle close, re-handshake). Platform-neutral: the
 * transport (WebRTC in production, memory in tests) and the relay are injected.
 *
 * The per-peer policy lives in peer-link.ts, the per-session mechanics (frames, backpressure, ack
 * timer) in p2p-session.ts. This file wires them to the runtime's hooks and keeps the counters.
 *
 * @example
 * ```ts
 * const p2p = new P2PManager({ self, transport, relay, inbound, reachable, vouch })
 * const outcome = await p2p.deliver(peerKey, env.clientMessageId, sealedBytes, signal)
 * // outcome.via === 'p2p' ? outcome.status : outcome.ack.state
 * await p2p.close()
 * ```
 */
import { systemClock, type Clock } from '../../protocol/clock.js'
import { toHex } from '../../protocol/encoding.js'
import type { FrameOf } from '../../protocol/frames.js'
import { Emitter } from '../../transports/emitter.js'
import type { PeerRef, PeerTransport, TransportSession } from '../../transports/types.js'
import { closedError, type AckStatus, type LossReason } from './p2p-session.js'
import { PeerLink, type Delivery, type LinkContext, type LinkEvent, type P2PTimings } from './peer-link.js'

export type { AckStatus, LossReason } from './p2p-session.js'
export type { Delivery, P2PTimings } from './peer-link.js'

/** DESIGN.md §6: 2 s handshake budget, 3 s ack timeout, 5 min idle, 1 h re-handshake. */
export const DEFAULT_P2P_TIMINGS: P2PTimings = {
  handshakeBudgetMs: 2_000,
  ackTimeoutMs: 3_000,
  idleMs: 300_000,
  rehandshakeMs: 3_600_000,
  // Long enough that a pair whose ICE cannot connect does not signal on every message (the coordinator
  // allows 10 offers a minute), short enough that a path that recovers is used again soon.
  retryHandshakeAfterMs: 30_000,
}

/** What the runtime hands the manager. */
export interface P2PManagerInit extends Partial<P2PTimings> {
  /** Our presence key and mesh. */
  self: PeerRef
  /** A p2p-capable transport: webrtc in production, memory in unit tests. The caller closes it. */
  transport: PeerTransport
  /**
   * Submits the sealed envelope bytes to the coordinator's accept path (a `send` frame). Resolves with
   * its `send_ack`; rejects with a `MeshError` (retryable or not: the caller's outbox decides).
   */
  relay(envelope: Uint8Array, signal: AbortSignal): Promise<FrameOf<'send_ack'>>
  /**
   * Hands an envelope that came over P2P to the runtime, which stores it (inbox commit) and resolves with
   * the status to ack. A rejection leaves it unacked: the sender resends it through the coordinator.
   */
  inbound(envelope: Uint8Array, from: Uint8Array): Promise<AckStatus>
  /** True when the peer is online and advertises p2p (the runtime knows presence). */
  reachable(pk: Uint8Array): boolean
  /** True while the roster vouches for `pk`; checked on every inbound frame (revocation). */
  vouch(pk: Uint8Array): boolean
  clock?: Clock
}

/** What the manager has done, for metrics and tests. */
export interface P2PCounters {
  /** Envelopes sent as `p2p_env`. */
  p2pSent: number
  /** Envelopes submitted to the relay: first sends and resends after a demotion. */
  relaySent: number
  /** Relay sends made while `reachable(to)` held (DESIGN.md §5's `relayed_could_have_been_p2p`). */
  relayedCouldHaveBeenP2P: number
  /** Sessions that lost envelopes (no ack in time, a stalled buffer, a close under them). */
  demotions: number
  /** Handshakes that did not produce a session within the budget (timeout, refusal, ICE failure). */
  handshakesFailed: number
}

/** Events of the manager, for logs and tests. */
export interface P2PManagerEvents {
  /** A session to `pk` came into service: one we dialed, or one the peer opened to us. */
  session: (pk: Uint8Array, dialed: boolean) => void
  /** A session to `pk` ended. */
  sessionClosed: (pk: Uint8Array) => void
  /** A session to `pk` lost `resent` envelopes, which went to the relay. */
  demoted: (pk: Uint8Array, reason: LossReason, resent: number) => void
  /** A handshake to `pk` failed; the pair stays on the relay for `retryHandshakeAfterMs`. */
  handshakeFailed: (pk: Uint8Array, error: unknown) => void
}

/** See the module comment. */
export class P2PManager extends Emitter<P2PManagerEvents> {
  readonly counters: P2PCounters = {
    p2pSent: 0,
    relaySent: 0,
    relayedCouldHaveBeenP2P: 0,
    demotions: 0,
    handshakesFailed: 0,
  }
  readonly #init: P2PManagerInit
  readonly #links = new Map<string, PeerLink>()
  readonly #dials = new AbortController()
  readonly #resends = new AbortController()
  readonly #ctx: LinkContext
  #closing: Promise<void> | undefined

  constructor(init: P2PManagerInit) {
    super()
    this.#init = init
    const timings: P2PTimings = { ...DEFAULT_P2P_TIMINGS }
    for (const key of Object.keys(DEFAULT_P2P_TIMINGS) as (keyof P2PTimings)[]) {
      const value = init[key]
      if (value !== undefined) timings[key] = value
    }
    const isClosing = (): boolean => this.#closing !== undefined
    this.#ctx = {
      self: init.self,
      transport: init.transport,
      clock: init.clock ?? systemClock,
      timings,
      get closed() {
        return isClosing()
      },
      dialSignal: this.#dials.signal,
      resendSignal: this.#resends.signal,
      vouch: (pk) => init.vouch(pk),
      reachable: (pk) => init.reachable(pk),
      inbound: (envelope, from) => init.inbound(envelope, from),
      relay: (to, envelope, signal) => this.#relay(to, envelope, signal),
      countP2pSent: () => void this.counters.p2pSent++,
      report: (event) => this.#report(event),
    }
    init.transport.onSession((session) => this.#accept(session))
  }

  /**
   * Delivers one sealed DM/rpc/stream envelope to `to`: by P2P when a warm verified session exists and
   * every earlier relay send to that peer was acked, else by relay (starting a handshake in the background
   * when `reachable(to)`: the first message never waits on ICE). A P2P frame unacked after `ackTimeoutMs`
   * demotes the session: it closes and every unacked frame on it is resent through `relay` (the same
   * bytes), and their `deliver` promises settle with the relay's outcome. An abort of `signal` rejects
   * this call only; an envelope already sent still gets its ack or its resend.
   */
  async deliver(
    to: Uint8Array,
    clientMessageId: string,
    envelope: Uint8Array,
    signal: AbortSignal,
  ): Promise<Delivery> {
    signal.throwIfAborted()
    if (this.#closing !== undefined) throw closedError('the P2P manager is closed')
    return this.#link(to).deliver(clientMessageId, envelope, signal)
  }

  /** Open P2P sessions to `pk` (serving or draining), for diagnostics and tests. */
  sessions(pk: Uint8Array): number {
    return this.#links.get(toHex(pk))?.sessionCount ?? 0
  }

  /** True when an envelope to `pk` would go P2P now (a warm session, no relay send awaiting its ack). */
  warm(pk: Uint8Array): boolean {
    return this.#links.get(toHex(pk))?.warm() !== undefined
  }

  /**
   * Stops taking envelopes, fails handshakes in progress, drains every session (waits for the acks of
   * what is on it; what stays unacked past `ackTimeoutMs` goes to the relay) and closes it cleanly. The
   * transport itself is the caller's to close.
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#dials.abort(closedError('the P2P manager closed'))
      await Promise.all([...this.#links.values()].map((link) => link.close()))
      this.#resends.abort(closedError('the P2P manager closed'))
    })()
    return this.#closing
  }

  #link(pk: Uint8Array): PeerLink {
    const key = toHex(pk)
    let link = this.#links.get(key)
    if (link === undefined) {
      link = new PeerLink(pk.slice(), this.#ctx)
      this.#links.set(key, link)
    }
    return link
  }

  /** A session the peer opened: a warm session for that peer too (our replies go over it). */
  #accept(session: TransportSession): void {
    if (this.#closing !== undefined) {
      void session.close('closing').catch(() => undefined)
      return
    }
    this.#link(session.peer.pk).adopt(session, false)
  }

  async #relay(to: Uint8Array, envelope: Uint8Array, signal: AbortSignal): Promise<FrameOf<'send_ack'>> {
    this.counters.relaySent++
    if (this.#init.reachable(to)) this.counters.relayedCouldHaveBeenP2P++
    return this.#init.relay(envelope, signal)
  }

  #report(event: LinkEvent): void {
    switch (event.kind) {
      case 'session':
        return this.emit('session', event.pk, event.dialed)
      case 'session-closed':
        this.#forgetIdle(event.pk)
        return this.emit('sessionClosed', event.pk)
      case 'demoted':
        if (event.reason !== 'revoked') this.counters.demotions++
        return this.emit('demoted', event.pk, event.reason, event.resent)
      case 'handshake-failed':
        this.counters.handshakesFailed++
        return this.emit('handshakeFailed', event.pk, event.error)
    }
  }

  /** Links hold little, but one per peer ever seen would grow without bound: drop those with nothing on. */
  #forgetIdle(pk: Uint8Array): void {
    const key = toHex(pk)
    const link = this.#links.get(key)
    if (link !== undefined && link.idle) this.#links.delete(key)
  }
}
