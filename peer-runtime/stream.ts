/**
 * Streams over a `Peer` (DESIGN.md §5, **stream**; docs/PROTOCOL.md §6.1): bytes of any length cut into
 * `stream` envelopes of at most 60 KiB payload, `meta.streamId`, `meta.seq` from 0 and `fin: true` on
 * the last. Each chunk is an ordinary message (sealed, kept in the durable outbox, P2P when warm, else
 * the relay), so chunks may arrive out of order or twice; the receiver puts them back in order
 * (`IncomingStream`) and grants credit with `stream_window{streamId, upToSeq}`, sealed as the payload of
 * a `stream` envelope back to the sender. The sender never has a seq beyond its credit in flight.
 *
 * One endpoint per peer (`streamEndpoint(peer)`, used by `openStream` and `onStream`): it reads the
 * peer's `stream` inbox rows, chunks and credit alike, and marks them consumed as it takes them (a stream
 * lives in memory; it does not outlast a restart of either end).
 */
import { toHex } from '../protocol/encoding.js'
import { isMeshError, MeshError } from '../protocol/errors.js'
import { ulidFactory } from '../protocol/ulid.js'
import type { InboundMessage } from './inbox.js'
import type { Peer } from './peer.js'
import { deliveryFailure } from './rpc.js'
import type { OutboxRow } from './store/types.js'
import {
  isStreamAbort,
  isStreamWindow,
  STREAM_CHUNK_BYTES,
  STREAM_DEFAULT_WINDOW,
  STREAM_IDLE_TIMEOUT_MS,
  STREAM_INITIAL_CREDIT,
  StreamAbortedError,
  streamError,
  type StreamAbort,
  type StreamWindow,
} from './stream-frames.js'
import { IncomingStream } from './stream-incoming.js'

export { IncomingStream, type IncomingStreamStats } from './stream-incoming.js'
export * from './stream-frames.js'

/** Bytes to stream: one buffer, chunks from an (async) iterable (a Node file stream), or a ReadableStream. */
export type StreamSource =
  Uint8Array | Iterable<Uint8Array> | AsyncIterable<Uint8Array> | ReadableStream<Uint8Array>

export interface StreamEndpointOptions {
  /** The receiver's window in chunks (at least 8). Default 32. */
  window?: number
  /** Idle timeout of both ends. Default 2 min. */
  idleTimeoutMs?: number
}

export interface OpenStreamOptions {
  signal?: AbortSignal
}

/** What the sending end counted. */
export interface OutgoingStreamStats {
  chunks: number
  bytes: number
  /** The most chunks sent and not yet read by the receiver (never more than its window). */
  maxUnread: number
  /** Credit envelopes received. */
  windows: number
}

/** A handler of incoming streams; a throw (or rejection) cancels the stream. */
export type StreamHandler = (stream: IncomingStream) => void | Promise<void>

const endpoints = new WeakMap<Peer, StreamEndpoint>()

/** The peer's stream endpoint (made on first use; one per peer; `o` counts only the first time). */
export function streamEndpoint(peer: Peer, o: StreamEndpointOptions = {}): StreamEndpoint {
  let endpoint = endpoints.get(peer)
  if (endpoint === undefined || endpoint.closed) {
    endpoint = new StreamEndpoint(peer, o)
    endpoints.set(peer, endpoint)
  }
  return endpoint
}

/** Streams `source` to `to`; `done` resolves once the receiver has read all of it. */
export function openStream(
  peer: Peer,
  to: Uint8Array,
  source: StreamSource,
  o: OpenStreamOptions = {},
): OutgoingStream {
  return streamEndpoint(peer).open(to, source, o)
}

/** Calls `handler` with every stream that comes in; returns a function that stops it. */
export function onStream(peer: Peer, handler: StreamHandler): () => void {
  return streamEndpoint(peer).accept(handler)
}

export class StreamEndpoint {
  readonly #peer: Peer
  readonly #window: number
  readonly #idleTimeoutMs: number
  readonly #nextId = ulidFactory()
  readonly #incoming = new Map<string, IncomingStream>()
  readonly #outgoing = new Map<string, OutgoingStream>()
  /** Streams that ended here: late chunks of theirs are dropped, not taken for a new stream. */
  readonly #finished = new Set<string>()
  /** Streams that came before any handler did. */
  readonly #unclaimed: IncomingStream[] = []
  readonly #handlers = new Set<StreamHandler>()
  readonly #stop = new AbortController()
  readonly #onStopped = (): void => this.close()
  /** Chunks (and grants) on their way, by clientMessageId: a dead one ends its stream at once. */
  readonly #inFlight = new Map<string, { to: string; fail: (err: MeshError) => void }>()
  readonly #onOutbox = (row: OutboxRow): void => {
    const owner = this.#inFlight.get(row.id)
    if (owner === undefined) return
    if (row.state === 'done' || row.state === 'aborted') this.#inFlight.delete(row.id)
    const failure = deliveryFailure(row, owner.to)
    if (failure === undefined) return
    this.#inFlight.delete(row.id)
    owner.fail(failure)
  }
  #closed = false

  constructor(peer: Peer, o: StreamEndpointOptions = {}) {
    this.#peer = peer
    this.#window = Math.max(STREAM_INITIAL_CREDIT, o.window ?? STREAM_DEFAULT_WINDOW)
    this.#idleTimeoutMs = o.idleTimeoutMs ?? STREAM_IDLE_TIMEOUT_MS
    peer.on('stopped', this.#onStopped)
    peer.on('outbox', this.#onOutbox)
    void this.#read()
  }

  get closed(): boolean {
    return this.#closed
  }

  open(to: Uint8Array, source: StreamSource, o: OpenStreamOptions = {}): OutgoingStream {
    if (this.#closed) throw new MeshError('MESH_ERR_TRANSPORT_CLOSED', 'the stream endpoint is closed')
    const streamId = this.#nextId()
    const key = `${toHex(to)}:${streamId}`
    const toHexKey = toHex(to)
    const stream: OutgoingStream = new OutgoingStream(this.#peer, to, streamId, source, {
      idleTimeoutMs: this.#idleTimeoutMs,
      track: (id) => this.#inFlight.set(id, { to: toHexKey, fail: (err) => stream.fail(err) }),
      ...(o.signal !== undefined && { signal: o.signal }),
    })
    this.#outgoing.set(key, stream)
    void stream.done.then(
      () => this.#outgoing.delete(key),
      () => this.#outgoing.delete(key),
    )
    return stream
  }

  accept(handler: StreamHandler): () => void {
    this.#handlers.add(handler)
    for (const stream of this.#unclaimed.splice(0)) if (!stream.ended) this.#hand(stream)
    return () => void this.#handlers.delete(handler)
  }

  /** Stops reading and cancels the streams in progress. */
  close(): void {
    if (this.#closed) return
    this.#closed = true
    this.#stop.abort()
    this.#peer.off('stopped', this.#onStopped)
    this.#peer.off('outbox', this.#onOutbox)
    for (const s of this.#incoming.values())
      s.cancel({ code: 'MESH_ERR_TRANSPORT_CLOSED', message: 'closed' })
    for (const s of this.#outgoing.values())
      s.fail(new MeshError('MESH_ERR_TRANSPORT_CLOSED', 'the stream endpoint closed'))
    if (endpoints.get(this.#peer) === this) endpoints.delete(this.#peer)
  }

  async #read(): Promise<void> {
    try {
      for await (const m of this.#peer.messages({ channels: ['stream'], signal: this.#stop.signal })) {
        this.#take(m)
      }
    } catch {
      // The store closed under the reader (the peer is shutting down): nothing more to read.
    }
  }

  #take(m: InboundMessage): void {
    const streamId = m.meta?.streamId
    const seq = m.meta?.seq
    if (m.status !== 'ok' || streamId === undefined || seq === undefined) return
    const key = `${toHex(m.from)}:${streamId}`
    if (isStreamWindow(m.payload)) {
      this.#outgoing.get(key)?.credit(m.payload)
      return
    }
    if (this.#finished.has(key)) return
    let stream = this.#incoming.get(key)
    if (stream === undefined) {
      stream = this.#open(m.from, streamId, key)
      if (this.#handlers.size > 0) this.#hand(stream)
      else this.#unclaimed.push(stream)
    }
    if (m.payload instanceof Uint8Array) stream.take(seq, m.payload, m.meta?.fin === true, m.via)
    else if (isStreamAbort(m.payload)) stream.aborted(m.payload)
    else stream.malformed()
  }

  #open(from: Uint8Array, streamId: string, key: string): IncomingStream {
    const fromHex = toHex(from)
    const stream: IncomingStream = new IncomingStream({
      from,
      streamId,
      window: this.#window,
      idleTimeoutMs: this.#idleTimeoutMs,
      grant: (w) => {
        const payload: StreamWindow = { t: 'stream_window', streamId, ...w }
        this.#peer.send(from, payload, { channel: 'stream', meta: { streamId, seq: w.upToSeq } }).then(
          (sent) => {
            // Credit that cannot reach the sender: the stream cannot go on.
            if (!stream.ended)
              this.#inFlight.set(sent.clientMessageId, {
                to: fromHex,
                fail: (e) => stream.cancel(reasonOf(e)),
              })
          },
          (err: unknown) => stream.cancel(reasonOf(err)),
        )
      },
      ended: () => {
        this.#incoming.delete(key)
        this.#finished.add(key)
        // Remember the last thousand: enough to drop stragglers, bounded for a long-lived peer.
        if (this.#finished.size > 1_000) this.#finished.delete(this.#finished.values().next().value!)
      },
    })
    this.#incoming.set(key, stream)
    return stream
  }

  #hand(stream: IncomingStream): void {
    stream.accept()
    for (const handler of this.#handlers) {
      Promise.resolve()
        .then(() => handler(stream))
        .catch((err: unknown) => stream.cancel(reasonOf(err)))
    }
  }
}

export class OutgoingStream {
  readonly to: Uint8Array
  readonly streamId: string
  readonly stats: OutgoingStreamStats = { chunks: 0, bytes: 0, maxUnread: 0, windows: 0 }
  /** Resolves once the receiver has read every chunk; rejects on abort, cancel or timeout. */
  readonly done: Promise<OutgoingStreamStats>
  readonly #peer: Peer
  readonly #signal: AbortSignal | undefined
  readonly #idleTimeoutMs: number
  readonly #track: (clientMessageId: string) => void
  #granted = STREAM_INITIAL_CREDIT - 1
  #read = 0
  #nextSeq = 0
  #error: Error | undefined
  #wake: (() => void) | undefined

  constructor(
    peer: Peer,
    to: Uint8Array,
    streamId: string,
    source: StreamSource,
    o: { signal?: AbortSignal; idleTimeoutMs: number; track: (clientMessageId: string) => void },
  ) {
    this.#peer = peer
    this.to = to
    this.streamId = streamId
    this.#signal = o.signal
    this.#idleTimeoutMs = o.idleTimeoutMs
    this.#track = o.track
    this.done = this.#run(source)
    // Handled here so an ignored `done` is no unhandled rejection; awaiting it still throws.
    this.done.catch(() => undefined)
  }

  /** Credit from the receiver (in any order: the highest wins). */
  credit(w: StreamWindow): void {
    this.stats.windows++
    this.#granted = Math.max(this.#granted, w.upToSeq)
    this.#read = Math.max(this.#read, w.read)
    if (w.cancel !== undefined) this.fail(new StreamAbortedError(this.streamId, 'receiver', w.cancel))
    this.#wake?.()
  }

  /** Ends the stream with `error` (the endpoint closed). */
  fail(error: Error): void {
    this.#error ??= error
    this.#wake?.()
  }

  async #run(source: StreamSource): Promise<OutgoingStreamStats> {
    const onAbort = (): void => this.#wake?.()
    this.#signal?.addEventListener('abort', onAbort, { once: true })
    try {
      let held: Uint8Array | undefined
      for await (const chunk of rechunk(source, STREAM_CHUNK_BYTES)) {
        // One chunk behind the source, so the last one goes out with `fin`.
        if (held !== undefined) await this.#send(held, false)
        held = chunk
      }
      const finSeq = this.#nextSeq
      await this.#send(held ?? new Uint8Array(0), true)
      await this.#until(() => this.#read > finSeq, 'the receiver to read the stream')
      return this.stats
    } catch (err) {
      // Tell the receiver, unless it is the one that ended the stream.
      if (!(err instanceof StreamAbortedError)) await this.#abort(reasonOf(err))
      throw err
    } finally {
      this.#signal?.removeEventListener('abort', onAbort)
    }
  }

  async #send(data: Uint8Array, fin: boolean): Promise<void> {
    const seq = this.#nextSeq
    await this.#until(() => seq <= this.#granted, 'credit')
    this.stats.maxUnread = Math.max(this.stats.maxUnread, seq + 1 - this.#read)
    const sent = await this.#peer.send(this.to, data, {
      channel: 'stream',
      meta: { streamId: this.streamId, seq, ...(fin && { fin: true as const }) },
      ...(this.#signal !== undefined && { signal: this.#signal }),
    })
    this.#track(sent.clientMessageId)
    this.#nextSeq++
    this.stats.chunks++
    this.stats.bytes += data.length
  }

  async #abort(reason: { code: string; message: string }): Promise<void> {
    const payload: StreamAbort = { t: 'stream_abort', ...reason }
    try {
      await this.#peer.send(this.to, payload, {
        channel: 'stream',
        meta: { streamId: this.streamId, seq: this.#nextSeq, fin: true },
      })
    } catch {
      // The peer closed: the receiver times out instead.
    }
  }

  /** Waits until `ready()` holds, the stream fails, the signal aborts, or nothing happens for the idle timeout. */
  async #until(ready: () => boolean, what: string): Promise<void> {
    for (;;) {
      if (this.#error !== undefined) throw this.#error
      if (this.#signal?.aborted === true) throw this.#signal.reason
      if (ready()) return
      const progressed = await new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => resolve(false), this.#idleTimeoutMs)
        this.#wake = () => {
          clearTimeout(timer)
          this.#wake = undefined
          resolve(true)
        }
      })
      if (!progressed) {
        throw streamError(
          'MESH_ERR_STREAM_TIMEOUT',
          this.streamId,
          `waited ${this.#idleTimeoutMs} ms for ${what} on stream ${this.streamId}`,
        )
      }
    }
  }
}

function reasonOf(err: unknown): { code: string; message: string } {
  if (isMeshError(err)) return { code: err.code, message: err.message }
  return { code: 'MESH_ERR_STREAM_ABORTED', message: err instanceof Error ? err.message : String(err) }
}

/** The source cut into chunks of exactly `size` bytes (the last one shorter), each a copy of its own. */
async function* rechunk(source: StreamSource, size: number): AsyncGenerator<Uint8Array> {
  let buf = new Uint8Array(size)
  let fill = 0
  for await (const piece of pieces(source)) {
    let off = 0
    while (off < piece.length) {
      const n = Math.min(size - fill, piece.length - off)
      buf.set(piece.subarray(off, off + n), fill)
      fill += n
      off += n
      if (fill === size) {
        yield buf
        buf = new Uint8Array(size)
        fill = 0
      }
    }
  }
  if (fill > 0) yield buf.subarray(0, fill)
}

async function* pieces(source: StreamSource): AsyncGenerator<Uint8Array> {
  if (source instanceof Uint8Array) {
    yield source
    return
  }
  if (typeof (source as ReadableStream<Uint8Array>).getReader === 'function') {
    const reader = (source as ReadableStream<Uint8Array>).getReader()
    try {
      for (;;) {
        const { done, value } = await reader.read()
        if (done) return
        yield value
      }
    } finally {
      reader.releaseLock()
    }
  }
  yield* source as Iterable<Uint8Array> | AsyncIterable<Uint8Array>
}
