/**
 * The data plane's one interface: a `PeerTransport` opens `TransportSession`s to peers, and a session
 * carries opaque frames (msgpack bytes the runtime encodes: `p2p_env`, `p2p_ack`, …) with explicit
 * backpressure. Adapters live one per folder (`memory`, `ws-relay`, `webrtc`, `webhook`) and all pass
 * `transportCompliance` (transports/compliance.ts).
 *
 * Changes since the first draft are backward-compatible (nothing renamed or removed; every addition is
 * optional): `TypedEmitter` gained the type-only, optional `[eventMap]` member so `waitFor(session,
 * 'drain', …)` (transports/emitter.ts) can infer the event map; implementers need not declare it.
 */

/** Type-level only: keys the phantom event map of `TypedEmitter`; no value exists at runtime. */
declare const eventMap: unique symbol

/** Who a session goes to. */
export interface PeerRef {
  mesh: string
  /** The peer's presence key (a session, service or member key). */
  pk: Uint8Array
}

/** What an adapter can promise. */
export interface TransportCapabilities {
  /** Bytes go peer to peer (not through the coordinator). */
  p2p: boolean
  /** Frames arrive in the order they were sent. */
  ordered: boolean
  /** The largest frame `send` takes. */
  maxFrameBytes: number
}

export type TransportKind = 'memory' | 'ws-relay' | 'webrtc' | 'webhook'

/** Events of a session. */
export interface TransportSessionEvents {
  /** One frame from the peer, whole. */
  message: (frame: Uint8Array) => void
  /** The send buffer went below its low-water mark after `send` returned false. */
  drain: () => void
  /** The session ended: cleanly (no error) or not (an error with a `MeshError` code). */
  close: (err?: Error) => void
}

/** A typed event emitter for sessions (Node's EventEmitter shape, without its types). */
export interface TypedEmitter<E extends { [K in keyof E]: (...args: never[]) => void }> {
  /** Never set: lets generic helpers infer `E` (TypeScript cannot infer it from generic methods). */
  readonly [eventMap]?: E
  on<K extends keyof E>(event: K, listener: E[K]): this
  once<K extends keyof E>(event: K, listener: E[K]): this
  off<K extends keyof E>(event: K, listener: E[K]): this
}

/** One open session to one peer. */
export interface TransportSession extends TypedEmitter<TransportSessionEvents> {
  readonly peer: PeerRef
  readonly kind: TransportKind
  /**
   * Queues one frame. Returns false when the window or buffer is full: the frame was NOT taken, and a
   * `drain` event follows when there is room again. Throws `MESH_ERR_FRAME_TOO_LARGE` above
   * `maxFrameBytes`, and `MESH_ERR_TRANSPORT_CLOSED` after close.
   */
  send(frame: Uint8Array): boolean
  /** Bytes taken by `send` and not yet handed to the network. */
  readonly bufferedAmount: number
  /** True until the session closed. */
  readonly open: boolean
  /** Flushes what was taken, then closes; the peer sees a clean close. Idempotent. */
  close(reason?: string): Promise<void>
}

/** An adapter: opens sessions, and accepts the ones peers open to it. */
export interface PeerTransport {
  readonly kind: TransportKind
  readonly capabilities: TransportCapabilities
  /** Opens a session to `peer`. Rejects with a `MeshError` (or the signal's reason when aborted). */
  open(peer: PeerRef, opts: { signal: AbortSignal }): Promise<TransportSession>
  /** Sessions peers opened to us. */
  onSession(listener: (session: TransportSession) => void): void
  /** Closes every session and releases what the adapter holds (sockets, native handles). */
  close(): Promise<void>
}
