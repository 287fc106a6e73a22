/**
 * One WebSocket on the coordinator: frame decoding with per-frame errors (a bad frame never kills the
 * socket's other traffic), app-level ping and stale detection, the slow-consumer cut-off, and the
 * presence it carries once its hello is accepted.
 */
import type { WebSocket } from 'ws'
import {
  CLOSE,
  decodeFrame,
  encodeFrame,
  errorFrame,
  isMeshError,
  MeshError,
  toHex,
  type Capabilities,
  type ClockTimer,
  type Frame,
  type FrameOf,
  type HelloRole,
} from '../protocol/index.js'
import type { CoordinatorContext } from './context.js'

/** The presence a connection carries after its hello. */
export interface PresenceIdentity {
  mesh: string
  pk: Uint8Array
  pkHex: string
  memberPk: Uint8Array
  memberHex: string
  role: HelloRole
  sessionId?: string
  instanceId: string
  /** Names this connection (claims are owned by it). */
  presenceId: string
  capabilities: Capabilities
  /** The capabilities as the hello carried them (what discovery hands out). */
  capabilityBytes: Uint8Array
  attestation?: { signed: Uint8Array; sig: Uint8Array }
}

type ConnState = 'challenged' | 'ready' | 'closed'

let connectionSeq = 0

export class Connection {
  readonly id = ++connectionSeq
  readonly nonce: Uint8Array
  state: ConnState = 'challenged'
  presence: PresenceIdentity | undefined
  /** Unacked pushes on this connection: count and bytes (the push window). */
  inFlight = 0
  inFlightBytes = 0
  /** False once a drain found nothing more stored for this key; an explicit drain sets it again. */
  maybeStored = true
  readonly closed: Promise<{ code: number; reason: string }>
  /** Resolves once the connection stopped carrying frames: closing began, or the socket went away. */
  readonly ended: Promise<void>
  /** Resolves once the close hooks ran (claims released, presence leased). */
  readonly settled: Promise<void>
  #end!: () => void
  #settle!: () => void

  readonly #ws: WebSocket
  readonly #ctx: CoordinatorContext
  #lastHeard: number
  #corked = false
  #pingTimer: ClockTimer | undefined
  #helloTimer: ClockTimer | undefined

  constructor(ws: WebSocket, ctx: CoordinatorContext, nonce: Uint8Array) {
    this.#ws = ws
    this.#ctx = ctx
    this.nonce = nonce
    this.#lastHeard = ctx.clock.now()
    this.ended = new Promise((resolve) => (this.#end = resolve))
    this.settled = new Promise((resolve) => (this.#settle = resolve))
    this.closed = new Promise((resolve) => {
      ws.once('close', (code, reason) => {
        this.#stopTimers()
        this.state = 'closed'
        this.#end()
        resolve({ code, reason: reason.toString() })
      })
    })
    ws.on('message', (data, isBinary) => this.#onMessage(data, isBinary))
    ws.on('error', (err) => ctx.log.debug({ err, conn: this.id }, 'socket error'))
    this.#helloTimer = ctx.clock.setTimeout(() => {
      if (this.state !== 'challenged') return
      this.fail(
        new MeshError('MESH_ERR_HELLO_TIMEOUT', `no valid hello within ${ctx.limits.helloDeadlineMs} ms`),
        CLOSE.POLICY,
      )
    }, ctx.limits.helloDeadlineMs)
    this.#schedulePing()
  }

  /** True while frames can still be sent. */
  get open(): boolean {
    return this.state !== 'closed' && this.#ws.readyState === this.#ws.OPEN
  }

  /** Bytes queued in the socket and not yet written. */
  get bufferedAmount(): number {
    return this.#ws.bufferedAmount
  }

  /**
   * True once `hello_ack` went out. A peer drops every frame before it (its connection is still saying
   * hello), so nothing is pushed to a connection until then.
   */
  helloAcked = false

  /** Marks the hello accepted. */
  accept(presence: PresenceIdentity): void {
    this.presence = presence
    this.state = 'ready'
    this.#helloTimer?.cancel()
  }

  /** Sends a frame; false when the socket is gone. A consumer too far behind is closed 1013. */
  send(frame: Frame): boolean {
    if (!this.open) return false
    const bytes = encodeFrame(frame)
    this.#cork()
    this.#ws.send(bytes, { binary: true })
    this.#ctx.metrics.framesOut.inc({ type: frame.t })
    if (this.#ws.bufferedAmount > this.#ctx.limits.slowConsumerBytes) {
      this.#ctx.log.warn({ conn: this.id, buffered: this.#ws.bufferedAmount }, 'slow consumer closed')
      this.close(CLOSE.TOO_SLOW, 'too slow: buffered output over the limit')
      return false
    }
    return true
  }

  /**
   * Frames sent in one turn of the event loop leave in one write: a push and an ack, or a burst of
   * send_acks, do not each cost a syscall. `ws` keeps its socket private; it is the `_socket` field.
   */
  #cork(): void {
    if (this.#corked) return
    const socket = (this.#ws as unknown as { _socket?: { cork(): void; uncork(): void } })._socket
    if (socket === undefined) return
    this.#corked = true
    socket.cork()
    process.nextTick(() => {
      this.#corked = false
      socket.uncork()
    })
  }

  /** Sends an `error` frame for `err` (correlated by `reqId` when given). */
  sendError(err: unknown, reqId?: number): void {
    const meshErr = toMeshError(err)
    this.#ctx.metrics.rejects.inc({ code: meshErr.code })
    if (meshErr.code === 'MESH_ERR_INTERNAL') this.#ctx.log.error({ err, conn: this.id }, 'frame failed')
    this.send(errorFrame(meshErr, reqId))
  }

  /** Sends the error, then closes with `code` (auth failures: 1008). */
  fail(err: unknown, code: number, reqId?: number): void {
    const meshErr = toMeshError(err)
    this.sendError(meshErr, reqId)
    this.close(code, `${meshErr.code}: ${meshErr.message}`.slice(0, 120))
  }

  /** Called by the owner once the close hooks ran. */
  markSettled(): void {
    this.#settle()
  }

  close(code: number = CLOSE.NORMAL, reason = ''): void {
    if (this.state === 'closed') return
    this.state = 'closed'
    this.#stopTimers()
    this.#end()
    // Close reasons are capped at 123 bytes by the WebSocket protocol.
    this.#ws.close(code, Buffer.from(reason).subarray(0, 123).toString())
    // A peer that never answers the close handshake is cut off.
    this.#ctx.clock.setTimeout(() => this.#ws.terminate(), 5_000)
  }

  /** Drops the socket without a close handshake (a dead peer). */
  terminate(): void {
    this.state = 'closed'
    this.#stopTimers()
    this.#end()
    this.#ws.terminate()
  }

  #onMessage(data: unknown, isBinary: boolean): void {
    this.#lastHeard = this.#ctx.clock.now()
    if (this.state === 'closed') return
    const bytes = toBytes(data)
    let frame: Frame
    try {
      if (!isBinary) throw new MeshError('MESH_ERR_MALFORMED_FRAME', 'frames are binary msgpack, not text')
      frame = decodeFrame(bytes)
    } catch (err) {
      const reqId = isMeshError(err) ? err.details?.['reqId'] : undefined
      this.sendError(err, typeof reqId === 'number' ? reqId : undefined)
      return
    }
    this.#ctx.metrics.framesIn.inc({ type: frame.t })
    this.#dispatch(frame)
  }

  #dispatch(frame: Frame): void {
    const reqId = 'reqId' in frame ? frame.reqId : undefined
    if (frame.t === 'ping') {
      this.send({ t: 'pong' })
      return
    }
    if (frame.t === 'pong') return
    if (this.state === 'challenged' && frame.t !== 'hello') {
      this.sendError(new MeshError('MESH_ERR_HELLO_REQUIRED', `${frame.t} before hello`), reqId)
      return
    }
    const handler = this.#ctx.handlers.get(frame.t)
    if (handler === undefined) {
      this.sendError(
        new MeshError('MESH_ERR_UNKNOWN_FRAME_TYPE', `the coordinator does not accept ${frame.t} frames`),
        reqId,
      )
      return
    }
    // Frames are handled concurrently (a send may wait for its ack); each failure answers its own frame.
    // A handler that throws synchronously is answered the same way as one that rejects.
    const failed = (err: unknown): void => {
      if (this.state === 'closed') return
      this.sendError(err, reqId)
    }
    try {
      handler(this, frame).catch(failed)
    } catch (err) {
      failed(err)
    }
  }

  #schedulePing(): void {
    const { pingIntervalMs, staleAfterMs } = this.#ctx.limits
    this.#pingTimer = this.#ctx.clock.setTimeout(
      () => {
        if (this.state === 'closed') return
        if (this.#ctx.clock.now() - this.#lastHeard >= staleAfterMs) {
          this.#ctx.log.info({ conn: this.id }, 'stale connection terminated')
          this.terminate()
          return
        }
        this.send({ t: 'ping' })
        this.#schedulePing()
      },
      Math.min(pingIntervalMs, staleAfterMs),
    )
  }

  #stopTimers(): void {
    this.#pingTimer?.cancel()
    this.#helloTimer?.cancel()
  }
}

/** Any thrown value as a MeshError; unknown failures become `MESH_ERR_INTERNAL` (details stay in the log). */
export function toMeshError(err: unknown): MeshError {
  if (err instanceof MeshError) return err
  return new MeshError('MESH_ERR_INTERNAL', 'internal error', { cause: err })
}

function toBytes(data: unknown): Uint8Array {
  if (data instanceof Uint8Array) return data
  if (Array.isArray(data)) return Buffer.concat(data as Buffer[])
  if (data instanceof ArrayBuffer) return new Uint8Array(data)
  return new Uint8Array(0)
}

/** The key of a presence in maps: mesh and hex key. */
export function presenceKey(mesh: string, pk: Uint8Array | string): string {
  return `${mesh}/${typeof pk === 'string' ? pk : toHex(pk)}`
}

export type FrameHandler<T extends Frame['t'] = Frame['t']> = (
  conn: Connection,
  frame: FrameOf<T>,
) => Promise<void>
