/**
 * The signaling relay (DESIGN.md §4): `p2p_offer`, `p2p_answer`, `p2p_candidate` and `p2p_reject` go from
 * one live presence to another of the same mesh, both advertising `p2p`, with `from` stamped by the
 * coordinator. The SDP and its signature pass untouched: the peers verify them (PROTOCOL.md §4.7). Each
 * presence may send `offersPerMinute` offers in any rolling minute and `candidatesPerSignal` candidates
 * per signaling id; what the limits remember goes with the connection.
 *
 * Only this node's connections are reachable: signaling is never queued or sent across nodes.
 */
import fp from 'fastify-plugin'
import { Counter } from 'prom-client'
import {
  bytesEqual,
  MeshError,
  P2P_SIGNATURE_MAX_TTL_MS,
  toHex,
  type Clock,
  type Frame,
} from '../../protocol/index.js'
import type { Connection } from '../connection.js'
import type { CoordinatorContext } from '../context.js'

/** The frames the coordinator relays between peers. */
type SignalFrame = Extract<Frame, { t: 'p2p_offer' | 'p2p_answer' | 'p2p_candidate' | 'p2p_reject' }>

const OFFER_WINDOW_MS = 60_000
/** A signaling id outlives no signed offer (5 min at most), so its candidate count can go after that. */
const SIGNAL_TTL_MS = P2P_SIGNATURE_MAX_TTL_MS
/** Signaling ids remembered per sender; past it the oldest goes (a fresh id buys a fresh count anyway). */
const MAX_SIGNALS_PER_SENDER = 1024

export const signalingPlugin = fp(
  (app, _opts, done) => {
    const ctx = app.mesh
    const limits = new SignalingLimits(ctx.clock, ctx.limits.offersPerMinute, ctx.limits.candidatesPerSignal)
    const relayed = new Counter({
      name: 'agentmesh_signaling_relayed_total',
      help: 'Signaling frames relayed between peers, by type',
      labelNames: ['type'] as const,
      registers: [ctx.metrics.registry],
    })

    const relay = (conn: Connection, frame: SignalFrame): void => {
      const target = reachableTarget(ctx, conn, frame)
      if (frame.t === 'p2p_offer') limits.offer(conn, frame)
      if (frame.t === 'p2p_candidate') limits.candidate(conn, frame)
      // Whatever `from` the client put is replaced; `signed`, `sig` and `sdp` pass as they came.
      if (!target.send({ ...frame, from: conn.presence!.pk }))
        throw unreachable(frame, 'the peer went offline')
      relayed.inc({ type: frame.t })
    }
    // Relaying is synchronous; a throw in the executor becomes the rejection the connection answers with
    // an `error` frame.
    const handler = (conn: Connection, frame: SignalFrame): Promise<void> =>
      new Promise((resolve) => resolve(relay(conn, frame)))
    ctx.on('p2p_offer', handler)
    ctx.on('p2p_answer', handler)
    ctx.on('p2p_candidate', handler)
    ctx.on('p2p_reject', handler)
    ctx.hooks.closed.push((conn) => Promise.resolve(limits.forget(conn)))
    done()
  },
  { name: 'agentmesh-signaling', dependencies: ['agentmesh-auth'] },
)

/** The live connection `frame.to` names in the sender's mesh, when both sides advertise `p2p`. */
function reachableTarget(ctx: CoordinatorContext, conn: Connection, frame: SignalFrame): Connection {
  const sender = conn.presence!
  if (!sender.capabilities.p2p) throw unreachable(frame, 'this presence does not advertise p2p')
  if (bytesEqual(frame.to, sender.pk)) throw unreachable(frame, 'a presence cannot signal itself')
  const target = ctx.connections.get(sender.mesh, frame.to)
  if (target?.presence === undefined || !target.open)
    throw unreachable(frame, 'the peer is not online in this mesh')
  if (!target.presence.capabilities.p2p) throw unreachable(frame, 'the peer does not advertise p2p')
  return target
}

/** No `reqId` to echo: `sigId` and `to` tell the client which handshake failed. */
function unreachable(frame: SignalFrame, why: string): MeshError {
  return new MeshError('MESH_ERR_PEER_UNREACHABLE', `${frame.t} not relayed: ${why}`, {
    details: { sigId: frame.sigId, to: toHex(frame.to) },
  })
}

/** Per connection: when its recent offers went, and how many candidates each signaling id carried. */
interface SenderState {
  /** Times of the offers relayed in the current window, oldest first. */
  offers: number[]
  /** By signaling id, in order of first use (which is also the order they expire in). */
  signals: Map<string, { firstAt: number; candidates: number }>
}

/** The offer budget and the candidate counts of every connection, forgotten when it closes. */
class SignalingLimits {
  readonly #bySender = new Map<Connection, SenderState>()
  readonly #clock: Clock
  readonly #offersPerMinute: number
  readonly #candidatesPerSignal: number

  constructor(clock: Clock, offersPerMinute: number, candidatesPerSignal: number) {
    this.#clock = clock
    this.#offersPerMinute = offersPerMinute
    this.#candidatesPerSignal = candidatesPerSignal
  }

  /** Spends one offer of `conn`'s rolling-minute budget, or throws `MESH_ERR_SIGNAL_LIMIT`. */
  offer(conn: Connection, frame: SignalFrame): void {
    const now = this.#clock.now()
    const s = this.#state(conn)
    while (s.offers.length > 0 && s.offers[0]! <= now - OFFER_WINDOW_MS) s.offers.shift()
    if (s.offers.length >= this.#offersPerMinute) {
      const retryAfterMs = s.offers[0]! + OFFER_WINDOW_MS - now
      throw new MeshError(
        'MESH_ERR_SIGNAL_LIMIT',
        `over ${this.#offersPerMinute} offers a minute; retry in ${retryAfterMs} ms`,
        { details: { sigId: frame.sigId, to: toHex(frame.to), retryAfterMs } },
      )
    }
    s.offers.push(now)
  }

  /** Counts one candidate for `conn`'s signaling id, or throws `MESH_ERR_SIGNAL_LIMIT` past the cap. */
  candidate(conn: Connection, frame: SignalFrame): void {
    const now = this.#clock.now()
    const { signals } = this.#state(conn)
    for (const [sigId, signal] of signals) {
      if (signal.firstAt > now - SIGNAL_TTL_MS) break
      signals.delete(sigId)
    }
    let signal = signals.get(frame.sigId)
    if (signal === undefined) {
      signal = { firstAt: now, candidates: 0 }
      signals.set(frame.sigId, signal)
      if (signals.size > MAX_SIGNALS_PER_SENDER) signals.delete(signals.keys().next().value!)
    }
    if (signal.candidates >= this.#candidatesPerSignal) {
      throw new MeshError(
        'MESH_ERR_SIGNAL_LIMIT',
        `over ${this.#candidatesPerSignal} candidates for signaling id ${frame.sigId}`,
        { details: { sigId: frame.sigId, to: toHex(frame.to), limit: this.#candidatesPerSignal } },
      )
    }
    signal.candidates++
  }

  forget(conn: Connection): void {
    this.#bySender.delete(conn)
  }

  #state(conn: Connection): SenderState {
    let s = this.#bySender.get(conn)
    if (s === undefined) this.#bySender.set(conn, (s = { offers: [], signals: new Map() }))
    return s
  }
}
