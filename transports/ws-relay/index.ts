/**
 * The `ws-relay` adapter: sessions whose frames are encoded envelopes, submitted to the coordinator's
 * accept path as `send` frames over the runtime's own connection (a `ControlLink`), so dedupe, rate
 * limits and offline queueing apply to every frame. There is no relay pipe: nothing goes to the peer but
 * the envelopes, so there is no handshake and no close on the wire.
 *
 * - `open` is local (no round trip): the peer's side appears, through its `onSession`, when the first
 *   envelope from us is pushed to it. One open session per peer key: `open` returns it if there is one.
 * - A frame is "handed to the network" at its `send_ack`, `delivered` or `queued` alike (a queued copy is
 *   stored durably by the coordinator before it acks), so `close()` waits for every ack and a clean close
 *   loses nothing. The peer is not told: its session stays open and hears our later envelopes.
 * - Not ordered: the coordinator pushes online recipients at once but stores the rest, so a queued copy
 *   can arrive after a later fast-path one, and a retried frame lands after frames sent behind it;
 *   `stream` carries its own `seq`.
 * - Inbound, the adapter takes pushed direct envelopes (`dm`, `rpc`, `stream`) addressed to its key and
 *   acks them `ok` after the session's `message` listeners ran; group, topic and system pushes are left to
 *   the runtime. The coordinator's delivery is at least once: the runtime's inbox drops duplicates.
 */
import { systemClock, type Clock } from '../../protocol/clock.js'
import { bytesEqual, toHex } from '../../protocol/encoding.js'
import { isDirectChannel, type Envelope } from '../../protocol/envelope.js'
import { MeshError } from '../../protocol/errors.js'
import type { FrameOf } from '../../protocol/frames.js'
import { MAX_ENVELOPE_BYTES } from '../../protocol/limits.js'
import type { PeerRef, PeerTransport, TransportCapabilities, TransportSession } from '../types.js'
import type { ControlLink } from './link.js'
import { RelaySession, type RelayLimits } from './session.js'

export type { AckStatus, ControlLink, SendRequest } from './link.js'
export { RETRYABLE_CODES, type RelaySession } from './session.js'

export interface WsRelayTransportInit {
  /** The runtime's authenticated coordinator connection; the transport never closes it. */
  link: ControlLink
  /** Frames in flight per session before `send` returns false. Default 256 (the coordinator's push window). */
  maxInFlight?: number
  /** Bytes in flight per session before `send` returns false. Default 4 MiB. */
  maxInFlightBytes?: number
  /** Attempts per frame on retryable refusals before the session ends with the error. Default 10. */
  maxAttempts?: number
  /** Retry delay when a refusal names no `retryAfterMs`. Default 1 s. */
  retryDelayMs?: number
  /** The clock retries wait on. Default the system clock. */
  clock?: Clock
}

export const DEFAULT_MAX_IN_FLIGHT = 256
export const DEFAULT_MAX_IN_FLIGHT_BYTES = 4 * 1024 * 1024

/** Wires a `WsRelayTransport` over `init.link`. */
export function wsRelayTransport(init: WsRelayTransportInit): WsRelayTransport {
  return new WsRelayTransport({
    link: init.link,
    clock: init.clock ?? systemClock,
    maxFrameBytes: MAX_ENVELOPE_BYTES,
    maxInFlight: Math.max(1, init.maxInFlight ?? DEFAULT_MAX_IN_FLIGHT),
    maxInFlightBytes: Math.max(1, init.maxInFlightBytes ?? DEFAULT_MAX_IN_FLIGHT_BYTES),
    maxAttempts: Math.max(1, init.maxAttempts ?? 10),
    retryDelayMs: Math.max(0, init.retryDelayMs ?? 1_000),
  })
}

/** Sessions to peers over one coordinator connection. */
export class WsRelayTransport implements PeerTransport {
  readonly kind = 'ws-relay'
  readonly capabilities: TransportCapabilities
  #limits: RelayLimits
  /** Every session not yet closed, and the one per peer key (hex) that inbound envelopes go to. */
  #sessions = new Set<RelaySession>()
  #byPeer = new Map<string, RelaySession>()
  #listeners: ((session: TransportSession) => void)[] = []
  #closed = false
  #offPush: () => void
  #offClose: () => void

  constructor(limits: RelayLimits) {
    this.#limits = limits
    this.capabilities = { p2p: false, ordered: false, maxFrameBytes: limits.maxFrameBytes }
    this.#offPush = limits.link.onPush((push, env) => this.#onPush(push, env))
    this.#offClose = limits.link.onClose((err) => this.#onLinkClosed(err))
  }

  /** Sessions and retry timers held: 0 after `close`. */
  get handles(): number {
    let timers = 0
    for (const session of this.#sessions) timers += session.timers
    return this.#sessions.size + timers
  }

  async open(peer: PeerRef, { signal }: { signal: AbortSignal }): Promise<TransportSession> {
    if (signal.aborted) throw signal.reason as Error
    this.#assertOpen()
    // Nothing to wait for, but yield once so an abort in the caller's tick wins, as with a real dial.
    await Promise.resolve()
    if (signal.aborted) throw signal.reason as Error
    this.#assertOpen()
    const self = this.#limits.link.self
    if (peer.mesh !== self.mesh) {
      throw new MeshError('MESH_ERR_WRONG_MESH', `ws-relay: peer is in mesh ${peer.mesh}, not ${self.mesh}`, {
        details: { expected: self.mesh, got: peer.mesh },
      })
    }
    const live = this.#byPeer.get(toHex(peer.pk))
    return live?.open === true ? live : this.#hold(peer)
  }

  onSession(listener: (session: TransportSession) => void): void {
    this.#listeners.push(listener)
  }

  /** Stops taking pushes, then closes every session cleanly (each waits for its acks). Idempotent. */
  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true
      this.#offPush()
      this.#offClose()
    }
    await Promise.all([...this.#sessions].map((session) => session.close('transport closed')))
  }

  #assertOpen(): void {
    if (this.#closed) throw new MeshError('MESH_ERR_TRANSPORT_CLOSED', 'open on a closed ws-relay transport')
    if (!this.#limits.link.open) {
      throw new MeshError('MESH_ERR_TRANSPORT_CLOSED', 'the coordinator connection is closed')
    }
  }

  /** A new session to `peer`; it replaces a closing one as the receiver of the peer's envelopes. */
  #hold(peer: PeerRef): RelaySession {
    const key = toHex(peer.pk)
    const session = new RelaySession({ mesh: peer.mesh, pk: peer.pk.slice() }, this.#limits, (s) => {
      this.#sessions.delete(s)
      if (this.#byPeer.get(key) === s) this.#byPeer.delete(key)
    })
    this.#sessions.add(session)
    this.#byPeer.set(key, session)
    return session
  }

  #onPush(push: FrameOf<'push'>, env: Envelope): void {
    if (this.#closed) return
    const self = this.#limits.link.self
    if (!isDirectChannel(env.channel) || env.mesh !== self.mesh) return
    if (!(env.target instanceof Uint8Array) || !bytesEqual(env.target, self.pk)) return
    let session = this.#byPeer.get(toHex(env.from))
    if (session === undefined) {
      session = this.#hold({ mesh: env.mesh, pk: env.from })
      for (const listener of this.#listeners) listener(session)
    }
    if (session.deliver(push.envelope)) this.#limits.link.ack(push.deliveryId, 'ok')
  }

  /** The connection is gone: nothing more can be sent or acked, so every session ends with an error. */
  #onLinkClosed(err: Error | undefined): void {
    const failure = new MeshError('MESH_ERR_TRANSPORT_CLOSED', 'the coordinator connection closed', {
      ...(err !== undefined && { cause: err }),
    })
    for (const session of [...this.#sessions]) session.destroy(failure)
  }
}
