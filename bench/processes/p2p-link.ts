/**
 * A P2P bench peer's one coordinator connection: a lean `PeerSocket` whose hello advertises `p2p`, with the
 * two faces the transports need over it: the `CoordinatorLink` signaling rides on (webrtc) and the
 * `ControlLink` the ws-relay adapter submits envelopes through. Like `PeerSocket` it keeps no log and
 * decodes nothing it does not hand on, so the figures measure the adapters, not test bookkeeping.
 */
import {
  decodeEnvelope,
  encodeFrame,
  MeshError,
  type Envelope,
  type Frame,
  type FrameOf,
  type Identity,
} from '../../protocol/index.js'
import { coordinatorSignalingChannel, type SignalingChannel } from '../../signaling/index.js'
import type { AckStatus, ControlLink, SendRequest } from '../../transports/ws-relay/index.js'
import { PeerSocket } from './peer-socket.js'

/** Replies to a `send` frame, by `reqId`. */
interface Pending {
  resolve: (ack: FrameOf<'send_ack'>) => void
  reject: (err: Error) => void
}

/** See the module comment. */
export class P2pLink {
  readonly identity: Identity
  readonly mesh: string
  readonly #listeners = new Set<(frame: Frame) => void>()
  readonly #pending = new Map<number, Pending>()
  #socket!: PeerSocket
  #open = true
  #nextReqId = 1

  private constructor(identity: Identity, mesh: string) {
    this.identity = identity
    this.mesh = mesh
  }

  /** Connects `identity` as a control-plane presence that advertises `p2p`. */
  static async connect(wsUrl: string, identity: Identity, mesh: string): Promise<P2pLink> {
    const link = new P2pLink(identity, mesh)
    link.#socket = await PeerSocket.connect(wsUrl, {
      identity,
      mesh,
      capabilities: { p2p: true, transports: ['webrtc', 'ws'] },
      onFrame: (frame) => link.#onFrame(frame),
    })
    void link.#socket.closed.then(() => link.#onClosed())
    return link
  }

  /** The signaling channel of this connection (the coordinator's relay stamps `from`). */
  signaling(): SignalingChannel {
    return coordinatorSignalingChannel({
      send: (frame) => this.#socket.send(encodeFrame(frame)),
      onFrame: (listener) => this.#listen(listener),
      self: this.identity.publicKey,
    })
  }

  /** The ws-relay adapter's view of this connection. */
  controlLink(): ControlLink {
    const closeListeners = new Set<(err?: Error) => void>()
    const isOpen = (): boolean => this.#open
    void this.#socket.closed.then(() => {
      for (const listener of closeListeners) listener(new Error('the coordinator connection closed'))
      closeListeners.clear()
    })
    return {
      self: { mesh: this.mesh, pk: this.identity.publicKey },
      get open() {
        return isOpen()
      },
      request: (frame) => this.#request(frame),
      onPush: (listener) =>
        this.#listen((frame) => {
          if (frame.t !== 'push') return
          let envelope: Envelope
          try {
            envelope = decodeEnvelope(frame.envelope)
          } catch {
            return // a runtime would ack it `rejected`; no bench sends one
          }
          listener(frame, envelope)
        }),
      ack: (deliveryId: string, status: AckStatus) => {
        if (this.#open) this.#socket.send(encodeFrame({ t: 'client_ack', deliveryId, status }))
      },
      onClose: (listener) => {
        if (!this.#open) {
          listener(new Error('the coordinator connection closed'))
          return () => {}
        }
        closeListeners.add(listener)
        return () => closeListeners.delete(listener)
      },
    }
  }

  close(): Promise<void> {
    return this.#socket.close()
  }

  #listen(listener: (frame: Frame) => void): () => void {
    this.#listeners.add(listener)
    return () => this.#listeners.delete(listener)
  }

  #request(frame: SendRequest): Promise<FrameOf<'send_ack'>> {
    if (!this.#open) return Promise.reject(new Error('the coordinator connection closed'))
    const reqId = this.#nextReqId++
    return new Promise((resolve, reject) => {
      this.#pending.set(reqId, { resolve, reject })
      this.#socket.send(encodeFrame({ ...frame, reqId }))
    })
  }

  #onFrame(frame: Frame): void {
    if (frame.t === 'send_ack' || (frame.t === 'error' && frame.reqId !== undefined)) {
      const p = this.#pending.get(frame.reqId!)
      if (p !== undefined) {
        this.#pending.delete(frame.reqId!)
        if (frame.t === 'send_ack') p.resolve(frame)
        else p.reject(MeshError.fromWire(frame))
        return
      }
    }
    for (const listener of this.#listeners) listener(frame)
  }

  #onClosed(): void {
    this.#open = false
    const gone = new Error('the coordinator connection closed')
    for (const p of this.#pending.values()) p.reject(gone)
    this.#pending.clear()
  }
}
