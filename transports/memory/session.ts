/**
 * One end of an in-process session. Frames `send` takes wait in a bounded buffer that a macrotask hands
 * to the "wire" in one batch; the batch loses frames at `lossRate` and arrives after `latencyMs` on the
 * injected clock. Each direction ends with a fin after its last frame, so a clean close loses nothing.
 */
import { MeshError } from '../../protocol/errors.js'
import { Emitter } from '../emitter.js'
import type { PeerRef, TransportSession, TransportSessionEvents } from '../types.js'
import type { MemoryNetwork } from './network.js'

/** What a session needs from its transport: knobs and a tracked scheduler. */
export interface MemoryLink {
  readonly network: MemoryNetwork
  readonly latencyMs: number
  readonly lossRate: number
  readonly bufferBytes: number
  readonly maxFrameBytes: number
  readonly random: () => number
  /** Runs `fn` after `ms` on the clock (after a macrotask when 0); returns a cancel function. */
  after(ms: number, fn: () => void): () => void
}

type State = 'open' | 'closing' | 'closed'

export class MemorySession extends Emitter<TransportSessionEvents> implements TransportSession {
  readonly kind = 'memory'
  readonly peer: PeerRef
  #link: MemoryLink
  #remote: MemorySession | undefined
  #state: State = 'open'
  #buffer: Uint8Array[] = []
  #buffered = 0
  #needDrain = false
  #cancelFlush: (() => void) | undefined
  /** Wire deliveries (batches, fins) scheduled and not yet arrived, cancelled on an abrupt end. */
  #inFlight = new Set<() => void>()
  #finSent = false
  #finReceived = false
  #closed: Promise<void>
  #resolveClosed!: () => void
  /** Told when the session closed, so the transport stops holding it. */
  #onClosed: (session: MemorySession) => void

  constructor(peer: PeerRef, link: MemoryLink, onClosed: (session: MemorySession) => void) {
    super()
    this.peer = peer
    this.#link = link
    this.#onClosed = onClosed
    this.#closed = new Promise((resolve) => (this.#resolveClosed = resolve))
    link.network.track('session', 1)
  }

  /** Joins two fresh sessions into one connection. */
  static pair(a: MemorySession, b: MemorySession): void {
    a.#remote = b
    b.#remote = a
  }

  get bufferedAmount(): number {
    return this.#buffered
  }

  get open(): boolean {
    return this.#state === 'open'
  }

  send(frame: Uint8Array): boolean {
    if (this.#state !== 'open') {
      throw new MeshError('MESH_ERR_TRANSPORT_CLOSED', 'send on a closed memory session', {
        details: { state: this.#state },
      })
    }
    if (frame.byteLength > this.#link.maxFrameBytes) {
      throw new MeshError('MESH_ERR_FRAME_TOO_LARGE', `frame of ${frame.byteLength} bytes is too large`, {
        details: { bytes: frame.byteLength, maxFrameBytes: this.#link.maxFrameBytes },
      })
    }
    // An empty buffer takes any legal frame, so a buffer smaller than maxFrameBytes cannot wedge a sender.
    if (this.#buffered > 0 && this.#buffered + frame.byteLength > this.#link.bufferBytes) {
      this.#needDrain = true
      return false
    }
    // A copy: the caller may reuse its array once send returned, as with RTCDataChannel.send.
    this.#buffer.push(frame.slice())
    this.#buffered += frame.byteLength
    this.#scheduleFlush()
    return true
  }

  close(_reason?: string): Promise<void> {
    if (this.#state === 'open') {
      this.#state = 'closing'
      this.#scheduleFlush()
    }
    return this.#closed
  }

  /** Ends the session at once on both sides, dropping what is buffered or in flight; `close` carries `err`. */
  destroy(err: Error): void {
    const remote = this.#remote
    this.#end(err)
    if (remote !== undefined) remote.#end(err)
  }

  #scheduleFlush(): void {
    this.#cancelFlush ??= this.#link.after(0, () => {
      this.#cancelFlush = undefined
      this.#flush()
    })
  }

  /** Hands the whole buffer to the wire, then the fin when closing, then tells a waiting sender. */
  #flush(): void {
    if (this.#state === 'closed') return
    const batch: Uint8Array[] = []
    for (const frame of this.#buffer) {
      if (this.#link.lossRate === 0 || this.#link.random() >= this.#link.lossRate) batch.push(frame)
    }
    this.#buffer = []
    this.#buffered = 0
    const fin = this.#state === 'closing' && !this.#finSent
    if (fin) this.#finSent = true
    if (batch.length > 0 || fin) this.#transmit(batch, fin)
    if (this.#needDrain && this.#state === 'open') {
      this.#needDrain = false
      this.emit('drain')
    }
    if (fin) this.#maybeClosed()
  }

  #transmit(batch: Uint8Array[], fin: boolean): void {
    const remote = this.#remote
    if (remote === undefined) return
    // Latency 0: we already are in the flush macrotask, so the batch arrives now.
    if (this.#link.latencyMs <= 0) return remote.#arrive(batch, fin)
    const cancel = this.#link.after(this.#link.latencyMs, () => {
      this.#inFlight.delete(cancel)
      remote.#arrive(batch, fin)
    })
    this.#inFlight.add(cancel)
  }

  #arrive(batch: Uint8Array[], fin: boolean): void {
    if (this.#state === 'closed') return
    for (const frame of batch) {
      this.emit('message', frame)
      // A message listener may have closed or destroyed us.
      if ((this.#state as State) === 'closed') return
    }
    if (!fin) return
    this.#finReceived = true
    if (this.#state === 'open') {
      // The peer is done: stop taking frames, flush ours and answer with our fin.
      this.#state = 'closing'
      this.#scheduleFlush()
    }
    this.#maybeClosed()
  }

  /** Closed once our fin went out and the peer's came in: both directions are drained. */
  #maybeClosed(): void {
    if (this.#finSent && this.#finReceived) this.#end(undefined)
  }

  #end(err: Error | undefined): void {
    if (this.#state === 'closed') return
    this.#state = 'closed'
    this.#cancelFlush?.()
    this.#cancelFlush = undefined
    // A clean end keeps what is on the wire (our fin may still be travelling); an abrupt one drops it.
    if (err !== undefined) for (const cancel of this.#inFlight) cancel()
    this.#inFlight.clear()
    this.#buffer = []
    this.#buffered = 0
    this.#link.network.track('session', -1)
    this.#onClosed(this)
    this.#resolveClosed()
    this.emit('close', err)
    this.removeAllListeners()
  }
}
