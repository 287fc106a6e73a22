/**
 * The signaler: one per runtime and mesh. It starts offers, answers the offers peers send, routes relayed
 * frames to their handshake (handshake.ts), and enforces the rules of DESIGN.md §5:
 *
 * - offers and answers are signed over `[mesh, from, to, sigId, role, dtlsFingerprints, expiresAt]`, and a
 *   received one is checked (roster vouches for the signer, signature, fields, the SDP's fingerprints)
 *   before `setRemoteDescription`; a failure answers `p2p_reject{invalid}` and never connects;
 * - glare (both ends offer to each other at once): the offer of the lower key (bytewise) wins, the other
 *   end drops its own offer and answers;
 * - at most `maxSessions` handshakes and sessions at once; more offers get `p2p_reject{busy}`;
 * - a handshake not connected within `budgetMs` fails with `MESH_ERR_SIGNAL_TIMEOUT`.
 */
import {
  bytesEqual,
  fingerprintsFromSdp,
  MeshError,
  signP2pSignature,
  systemClock,
  toHex,
  verifyP2pSignature,
  type Clock,
  type FrameOf,
  type Identity,
  type P2pRole,
} from '../protocol/index.js'
import type { InboundSignal, SignalFrame, SignalingChannel } from './channel.js'
import { Handshake, type HandshakeHost, type SignalingPeerConnection } from './handshake.js'

/** DESIGN.md §6: 2 s handshake budget, 32 P2P sessions per runtime. */
export const HANDSHAKE_BUDGET_MS = 2_000
export const MAX_P2P_SESSIONS = 32

/** Options of `new Signaler`. */
export interface SignalerInit {
  /** Our presence key: signs our offers and answers, and is the `to` of theirs. */
  identity: Identity
  mesh: string
  channel: SignalingChannel
  /** True when the roster vouches for `pk` (an attested, unrevoked presence of this mesh). */
  vouch: (pk: Uint8Array) => boolean
  /**
   * Makes the peer connection for an inbound offer that verified; the transport wires its candidates to
   * `handshake.localCandidate`, its open channel to `handshake.connected()`, and `onTeardown`.
   */
  accept: (handshake: Handshake) => SignalingPeerConnection
  clock?: Clock
  budgetMs?: number
  maxSessions?: number
}

/** Why an inbound offer or answer was refused, for logs and tests. */
export type RefusedListener = (err: MeshError, peer: Uint8Array, sigId: string) => void

/** See the module comment. */
export class Signaler {
  readonly #init: SignalerInit
  readonly #clock: Clock
  readonly #budgetMs: number
  readonly #maxSessions: number
  /** Live handshakes (negotiating or connected), by peer and signaling id. */
  readonly #live = new Map<string, Handshake>()
  readonly #refused = new Set<RefusedListener>()
  readonly #unsubscribe: (() => void)[] = []
  readonly #host: HandshakeHost = {
    send: (frame: SignalFrame) => this.#init.channel.send(frame),
    forget: (h: Handshake) => {
      if (this.#live.get(keyOf(h.peer, h.sigId)) === h) this.#live.delete(keyOf(h.peer, h.sigId))
    },
  }
  #closed = false

  constructor(init: SignalerInit) {
    this.#init = init
    this.#clock = init.clock ?? systemClock
    this.#budgetMs = init.budgetMs ?? HANDSHAKE_BUDGET_MS
    this.#maxSessions = init.maxSessions ?? MAX_P2P_SESSIONS
    this.#unsubscribe.push(init.channel.onFrame((frame) => this.#onFrame(frame)))
    const onError = init.channel.onError?.((err) => this.#onRelayError(err))
    if (onError !== undefined) this.#unsubscribe.push(onError)
  }

  /** Handshakes and sessions holding a slot. */
  get active(): number {
    return this.#live.size
  }

  /** Listens to refused offers and answers (bad signature, unvouched signer, busy). */
  onRefused(listener: RefusedListener): void {
    this.#refused.add(listener)
  }

  /**
   * Starts an offer to `peer` over `pc` (which already has its data channel). Throws
   * `MESH_ERR_P2P_REJECTED {reason: 'busy'}` when every slot is taken. Await `handshake.result`.
   */
  offer(peer: Uint8Array, pc: SignalingPeerConnection, opts: { signal: AbortSignal }): Handshake {
    if (this.#closed) throw new MeshError('MESH_ERR_TRANSPORT_CLOSED', 'the signaler is closed')
    if (this.#live.size >= this.#maxSessions) throw busy(this.#maxSessions)
    const h = new Handshake(this.#host, newSigId(), peer, 'offerer')
    this.#track(h, pc)
    const { signal } = opts
    const onAbort = (): void => h.fail(signal.reason, 'declined')
    if (signal.aborted) onAbort()
    signal.addEventListener('abort', onAbort, { once: true })
    const off = (): void => signal.removeEventListener('abort', onAbort)
    h.result.then(off, off)
    void this.#runOffer(h, pc)
    return h
  }

  /** Fails every handshake still negotiating and stops listening; connected sessions are the caller's. */
  close(): void {
    this.#closed = true
    for (const off of this.#unsubscribe.splice(0)) off()
    for (const h of [...this.#live.values()])
      h.fail(new MeshError('MESH_ERR_TRANSPORT_CLOSED', 'the transport closed'), 'declined')
  }

  #track(h: Handshake, pc: SignalingPeerConnection | undefined): void {
    const timeout = (): void =>
      h.fail(
        new MeshError('MESH_ERR_SIGNAL_TIMEOUT', `P2P handshake ${h.sigId} took over ${this.#budgetMs} ms`, {
          details: { sigId: h.sigId, budgetMs: this.#budgetMs },
        }),
        'expired',
      )
    h.start(pc, this.#clock.setTimeout(timeout, this.#budgetMs))
    this.#live.set(keyOf(h.peer, h.sigId), h)
  }

  async #runOffer(h: Handshake, pc: SignalingPeerConnection): Promise<void> {
    try {
      const sdp = await localDescription(pc, 'offer')
      if (h.state !== 'offering') return
      this.#init.channel.send({ t: 'p2p_offer', ...this.#sign('offer', h, sdp) })
      h.localDescriptionSent()
    } catch (err) {
      h.fail(wrap(err, 'could not make or send the offer'), 'declined')
    }
  }

  #onFrame(frame: InboundSignal): void {
    if (frame.t === 'p2p_offer') return void this.#onOffer(frame)
    const h = this.#live.get(keyOf(frame.from, frame.sigId))
    if (h === undefined) return // unknown or finished handshake: nothing to do
    if (frame.t === 'p2p_candidate') {
      h.remoteCandidate(frame.mid === undefined ? { candidate: frame.candidate } : frame)
    } else if (frame.t === 'p2p_reject') {
      h.fail(
        new MeshError('MESH_ERR_P2P_REJECTED', `the peer refused P2P handshake ${h.sigId}: ${frame.reason}`, {
          details: { sigId: h.sigId, reason: frame.reason },
        }),
      )
    } else if (h.role === 'offerer' && h.state === 'offering' && !h.answered) {
      h.answered = true
      void this.#onAnswer(h, frame)
    }
  }

  async #onOffer(frame: FrameOf<'p2p_offer'> & { from: Uint8Array }): Promise<void> {
    const { from, sigId } = frame
    if (this.#closed || this.#live.has(keyOf(from, sigId))) return
    const mine = [...this.#live.values()].find(
      (h) => h.role === 'offerer' && h.state === 'offering' && !h.answered && bytesEqual(h.peer, from),
    )
    // Glare: the lower key's offer wins. Ours wins: drop theirs unanswered (they drop it too).
    if (mine !== undefined && compareBytes(this.#init.identity.publicKey, from) < 0) return
    if (this.#live.size - (mine === undefined ? 0 : 1) >= this.#maxSessions) {
      this.#refuse(busy(this.#maxSessions), from, sigId, 'busy')
      return
    }
    const err = this.#check('offer', from, sigId, frame)
    if (err !== undefined) return this.#refuse(err, from, sigId, 'invalid')

    const h = new Handshake(this.#host, sigId, from, 'answerer')
    this.#track(h, undefined)
    mine?.supersede(h)
    try {
      const pc = this.#init.accept(h)
      h.attach(pc)
      await h.setRemote('offer', frame.sdp)
      const sdp = await localDescription(pc, 'answer')
      if (h.state !== 'answering') return
      this.#init.channel.send({ t: 'p2p_answer', ...this.#sign('answer', h, sdp) })
      h.localDescriptionSent()
    } catch (cause) {
      h.fail(wrap(cause, 'could not answer the offer'), 'declined')
    }
  }

  async #onAnswer(h: Handshake, frame: FrameOf<'p2p_answer'> & { from: Uint8Array }): Promise<void> {
    const err = this.#check('answer', h.peer, h.sigId, frame)
    if (err !== undefined) {
      h.fail(err, 'invalid')
      for (const listener of this.#refused) listener(err, h.peer, h.sigId)
      return
    }
    try {
      await h.setRemote('answer', frame.sdp)
    } catch (cause) {
      h.fail(wrap(cause, 'could not apply the answer'), 'declined')
    }
  }

  /** The checks before `setRemoteDescription`; returns the refusal, if any. */
  #check(
    role: P2pRole,
    from: Uint8Array,
    sigId: string,
    frame: { sdp: string; signed: Uint8Array; sig: Uint8Array },
  ): MeshError | undefined {
    try {
      if (!this.#init.vouch(from)) {
        throw new MeshError('MESH_ERR_UNKNOWN_KEY', `the roster does not vouch for the p2p-${role} signer`, {
          details: { sigId, from: toHex(from) },
        })
      }
      verifyP2pSignature(
        { signed: frame.signed, sig: frame.sig },
        {
          role,
          mesh: this.#init.mesh,
          from,
          to: this.#init.identity.publicKey,
          sigId,
          sdp: frame.sdp,
          now: this.#clock.now(),
        },
      )
      return undefined
    } catch (err) {
      return err instanceof MeshError ? err : wrap(err, `p2p-${role} did not verify`)
    }
  }

  #refuse(err: MeshError, peer: Uint8Array, sigId: string, reason: 'busy' | 'invalid'): void {
    try {
      this.#init.channel.send({ t: 'p2p_reject', sigId, to: peer, reason })
    } catch {
      // The relay is gone: the offerer's budget ends its handshake.
    }
    for (const listener of this.#refused) listener(err, peer, sigId)
  }

  #sign(role: P2pRole, h: Handshake, sdp: string) {
    const { signed, sig } = signP2pSignature({
      identity: this.#init.identity,
      role,
      mesh: this.#init.mesh,
      to: h.peer,
      sigId: h.sigId,
      dtlsFingerprints: fingerprintsFromSdp(sdp),
      now: this.#clock.now(),
    })
    return { sigId: h.sigId, to: h.peer, sdp, signed, sig }
  }

  #onRelayError(err: MeshError): void {
    const { sigId, to } = err.details ?? {}
    if (typeof sigId !== 'string' || typeof to !== 'string') return
    for (const h of this.#live.values()) if (h.sigId === sigId && toHex(h.peer) === to) h.fail(err)
  }
}

/** Creates the local description of `type` and returns its SDP (the one signed and sent). */
async function localDescription(pc: SignalingPeerConnection, type: 'offer' | 'answer'): Promise<string> {
  const desc = type === 'offer' ? await pc.createOffer() : await pc.createAnswer()
  if (desc.sdp === undefined || desc.sdp === '') throw new Error(`the ${type} has no SDP`)
  await pc.setLocalDescription({ type, sdp: desc.sdp })
  return desc.sdp
}

function busy(max: number): MeshError {
  return new MeshError('MESH_ERR_P2P_REJECTED', `already ${max} P2P sessions`, {
    details: { reason: 'busy' },
  })
}

/** Errors from the RTC stack are not ours; they travel with a code and the original as `cause`. */
function wrap(err: unknown, message: string): MeshError {
  return err instanceof MeshError ? err : new MeshError('MESH_ERR_TRANSPORT_CLOSED', message, { cause: err })
}

function keyOf(peer: Uint8Array, sigId: string): string {
  return `${toHex(peer)}/${sigId}`
}

/** Bytewise order of two keys (glare: the lower key's offer wins). */
export function compareBytes(a: Uint8Array, b: Uint8Array): number {
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return a[i]! - b[i]!
  return a.length - b.length
}

function newSigId(): string {
  return toHex(globalThis.crypto.getRandomValues(new Uint8Array(16)))
}
