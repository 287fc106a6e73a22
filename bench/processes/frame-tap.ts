/**
 * A `SocketFactory` around the real `ws` one that counts the frames a runtime exchanges with its
 * coordinator, by type, and the mesh events the coordinator returned: what a restart test reads to see
 * how much of the mesh log a start fetched.
 */
import type { SocketFactory, WebSocketLike } from '../../peer-runtime/connection.js'
import { wsSocketFactory } from '../../peer-runtime/node/node-peer.js'
import { decodeFrame } from '../../protocol/frames.js'

/** Counts of one tap (reset with `reset()`). */
export class FrameTap {
  /** Frames the runtime sent, by type. */
  readonly sent = new Map<string, number>()
  /** Frames the runtime received, by type. */
  readonly received = new Map<string, number>()
  /** Events carried by the `mesh_events_result` frames received. */
  eventsReceived = 0

  /** The socket factory to hand the `Peer`. */
  readonly socket: SocketFactory = (url) => new TappedSocket(wsSocketFactory(url), this)

  /** How many `mesh_events` requests went out. */
  get meshEventRequests(): number {
    return this.sent.get('mesh_events') ?? 0
  }

  reset(): void {
    this.sent.clear()
    this.received.clear()
    this.eventsReceived = 0
  }

  /** @internal */
  out(data: Uint8Array): void {
    const frame = decodeFrame(data)
    this.sent.set(frame.t, (this.sent.get(frame.t) ?? 0) + 1)
  }

  /** @internal */
  in(data: unknown): void {
    const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : (data as Uint8Array)
    const frame = decodeFrame(bytes)
    this.received.set(frame.t, (this.received.get(frame.t) ?? 0) + 1)
    if (frame.t === 'mesh_events_result') this.eventsReceived += frame.events.length
  }
}

/** A W3C-shaped socket passing everything through to `inner`, telling `tap` about each frame. */
class TappedSocket implements WebSocketLike {
  readonly #inner: WebSocketLike
  readonly #tap: FrameTap

  constructor(inner: WebSocketLike, tap: FrameTap) {
    this.#inner = inner
    this.#tap = tap
  }

  get binaryType(): string {
    return this.#inner.binaryType
  }
  set binaryType(v: string) {
    this.#inner.binaryType = v
  }
  get readyState(): number {
    return this.#inner.readyState
  }
  send(data: Uint8Array): void {
    this.#tap.out(data)
    this.#inner.send(data)
  }
  close(code?: number, reason?: string): void {
    this.#inner.close(code, reason)
  }
  get onopen(): WebSocketLike['onopen'] {
    return this.#inner.onopen
  }
  set onopen(h: WebSocketLike['onopen']) {
    this.#inner.onopen = h
  }
  get onclose(): WebSocketLike['onclose'] {
    return this.#inner.onclose
  }
  set onclose(h: WebSocketLike['onclose']) {
    this.#inner.onclose = h
  }
  get onerror(): WebSocketLike['onerror'] {
    return this.#inner.onerror
  }
  set onerror(h: WebSocketLike['onerror']) {
    this.#inner.onerror = h
  }
  get onmessage(): WebSocketLike['onmessage'] {
    return this.#inner.onmessage
  }
  set onmessage(h: WebSocketLike['onmessage']) {
    this.#inner.onmessage =
      h === null
        ? null
        : (ev) => {
            this.#tap.in(ev.data)
            h(ev)
          }
  }
}
