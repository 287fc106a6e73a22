/**
 * The receiving end of one stream: chunks come in any order and perhaps twice (P2P frames demoted to the
 * relay, retries), are put back in `seq` order, and are handed to the reader as an async iterable of
 * `Uint8Array`. Credit follows the reader, not the network: after the reader took chunk `k` the sender
 * may send up to `k + window`, so at most `window` chunks wait here.
 */
import { MeshError } from '../protocol/errors.js'
import {
  STREAM_INITIAL_CREDIT,
  StreamAbortedError,
  streamError,
  type StreamAbort,
  type StreamWindow,
} from './stream-frames.js'

/** What the receiving end counted. */
export interface IncomingStreamStats {
  /** Chunks and bytes taken by the reader. */
  chunks: number
  bytes: number
  /** Copies of a chunk already held or read (dropped). */
  duplicates: number
  /** Chunks that arrived after a chunk with a higher seq. */
  outOfOrder: number
  /** The most chunks held at once, waiting for the reader (never more than the window). */
  maxBuffered: number
  /** Chunks per transport (`p2p`, `relay`). */
  via: Record<string, number>
  /** `stream_window` grants sent. */
  grants: number
}

export interface IncomingStreamInit {
  from: Uint8Array
  streamId: string
  window: number
  idleTimeoutMs: number
  /** Sends credit (or a cancel) to the sender. */
  grant: (window: Omit<StreamWindow, 't' | 'streamId'>) => void
  /** The stream is over (read to the end, failed or cancelled): the endpoint forgets it. */
  ended: () => void
}

/**
 * One incoming stream, read once with `for await (const chunk of stream)`. Chunks are views of the
 * stored message: treat them as read-only. Breaking out of the loop cancels the stream.
 */
export class IncomingStream implements AsyncIterable<Uint8Array> {
  readonly from: Uint8Array
  readonly streamId: string
  readonly stats: IncomingStreamStats = {
    chunks: 0,
    bytes: 0,
    duplicates: 0,
    outOfOrder: 0,
    maxBuffered: 0,
    via: {},
    grants: 0,
  }
  readonly #o: IncomingStreamInit
  readonly #held = new Map<number, Uint8Array>()
  /** The highest seq the sender may send (what it was granted, or its initial credit). */
  #granted = STREAM_INITIAL_CREDIT - 1
  /** The next seq the reader gets. */
  #next = 0
  #highest = -1
  #fin: number | undefined
  #error: MeshError | undefined
  #ended = false
  #iterating = false
  #wake: (() => void) | undefined

  constructor(o: IncomingStreamInit) {
    this.#o = o
    this.from = o.from
    this.streamId = o.streamId
  }

  /** True once read to the end, failed or cancelled. */
  get ended(): boolean {
    return this.#ended
  }

  /** The handler took the stream: grant the whole window at once. */
  accept(): void {
    this.#grantUpTo(this.#next - 1 + this.#o.window)
  }

  /** A chunk from the endpoint (any order, perhaps again). */
  take(seq: number, data: Uint8Array, fin: boolean, via: string): void {
    if (this.#ended) return
    if (seq < this.#next || this.#held.has(seq)) {
      this.stats.duplicates++
      return
    }
    if (seq > this.#granted) {
      this.#fail(
        streamError(
          'MESH_ERR_STREAM_PROTOCOL',
          this.streamId,
          `seq ${seq} is beyond the credit ${this.#granted}`,
        ),
      )
      return
    }
    if (fin) {
      if (this.#fin !== undefined && this.#fin !== seq) {
        this.#fail(streamError('MESH_ERR_STREAM_PROTOCOL', this.streamId, 'a second fin'))
        return
      }
      this.#fin = seq
    }
    if (this.#fin !== undefined && (seq > this.#fin || this.#highest > this.#fin)) {
      this.#fail(streamError('MESH_ERR_STREAM_PROTOCOL', this.streamId, `a chunk after fin ${this.#fin}`))
      return
    }
    if (seq < this.#highest) this.stats.outOfOrder++
    this.#highest = Math.max(this.#highest, seq)
    this.#held.set(seq, data)
    this.stats.maxBuffered = Math.max(this.stats.maxBuffered, this.#held.size)
    this.stats.via[via] = (this.stats.via[via] ?? 0) + 1
    this.#poke()
  }

  /** The sender aborted: the reader's next step throws `StreamAbortedError`. */
  aborted(abort: StreamAbort): void {
    if (this.#ended) return
    this.#error = new StreamAbortedError(this.streamId, 'sender', abort)
    this.#end()
  }

  /** Refuses a chunk the endpoint could not read (neither bytes nor an abort). */
  malformed(): void {
    this.#fail(
      streamError('MESH_ERR_STREAM_PROTOCOL', this.streamId, 'a chunk payload is neither bytes nor an abort'),
    )
  }

  /** Stops reading: the sender is told (`cancel`), and the reader's next step throws. */
  cancel(
    reason: { code: string; message: string } = {
      code: 'MESH_ERR_STREAM_ABORTED',
      message: 'cancelled by the reader',
    },
  ): void {
    if (this.#ended) return
    this.#error = new StreamAbortedError(this.streamId, 'receiver', reason)
    this.#o.grant({ upToSeq: this.#granted, read: this.#next, cancel: reason })
    this.stats.grants++
    this.#end()
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    if (this.#iterating) throw new TypeError(`stream ${this.streamId} is already being read`)
    this.#iterating = true
    try {
      for (;;) {
        const chunk = await this.#nextChunk()
        if (chunk === undefined) return
        yield chunk
      }
    } finally {
      // A reader that breaks out early cancels, so the sender stops instead of waiting for credit.
      if (!this.#ended) this.cancel()
    }
  }

  async #nextChunk(): Promise<Uint8Array | undefined> {
    for (;;) {
      if (this.#error !== undefined) throw this.#error
      if (this.#fin !== undefined && this.#next > this.#fin) return undefined
      const chunk = this.#held.get(this.#next)
      if (chunk !== undefined) {
        this.#held.delete(this.#next)
        this.#next++
        this.stats.chunks++
        this.stats.bytes += chunk.length
        this.#afterRead()
        return chunk
      }
      await this.#waitForChunk()
    }
  }

  #afterRead(): void {
    if (this.#fin !== undefined && this.#next > this.#fin) {
      // Read to the end: the last grant tells the sender (read = fin + 1), and the stream is over.
      this.#o.grant({ upToSeq: Math.max(this.#granted, this.#fin), read: this.#next })
      this.stats.grants++
      this.#end()
      return
    }
    const target = this.#next - 1 + this.#o.window
    // Credit in steps of a quarter window: fewer grant envelopes, and the sender never runs dry.
    if (target - this.#granted >= Math.max(1, Math.floor(this.#o.window / 4))) this.#grantUpTo(target)
  }

  #grantUpTo(target: number): void {
    const upTo = this.#fin === undefined ? target : Math.min(target, this.#fin)
    if (upTo <= this.#granted || this.#ended) return
    this.#granted = upTo
    this.#o.grant({ upToSeq: upTo, read: this.#next })
    this.stats.grants++
  }

  #waitForChunk(): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#fail(
          streamError(
            'MESH_ERR_STREAM_TIMEOUT',
            this.streamId,
            `no chunk of stream ${this.streamId} for ${this.#o.idleTimeoutMs} ms`,
          ),
        )
      }, this.#o.idleTimeoutMs)
      this.#wake = () => {
        clearTimeout(timer)
        this.#wake = undefined
        resolve()
      }
    })
  }

  #poke(): void {
    this.#wake?.()
  }

  #fail(error: MeshError): void {
    if (this.#ended) return
    this.#error = error
    this.#o.grant({
      upToSeq: this.#granted,
      read: this.#next,
      cancel: { code: error.code, message: error.message },
    })
    this.stats.grants++
    this.#end()
  }

  #end(): void {
    if (this.#ended) return
    this.#ended = true
    this.#held.clear()
    this.#o.ended()
    this.#poke()
  }
}
