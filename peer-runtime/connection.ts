/**
 * The runtime's connection to its coordinator: one WebSocket at a time, re-dialled by itself. Each socket
 * goes challenge → hello → `hello_ack`; replies are matched by `reqId`; `ping` every 30 s and a socket
 * silent for 75 s is dropped (app-level frames, since browsers cannot see WebSocket pings). Platform
 * neutral: the socket comes from an injected factory (the `ws` package in Node, the native WebSocket in a
 * browser), timers from the injected clock.
 *
 * Reconnects use full-jitter backoff from 0.5 s doubling to 30 s, reset by a `hello_ack`. Terminal
 * closes stop it for good (4001 kicked, 4002 revoked, 4010 unsupported version), and so does 4003
 * (replaced) unless the newer connection is one of ours (DESIGN.md §3). A coordinator whose challenge
 * carries another key than the pinned one gets no hello (`MESH_ERR_COORDINATOR_MISMATCH`) and is tried
 * again later, in case the right one comes back at that address.
 */
import type { Clock, ClockTimer } from '../protocol/clock.js'
import { bytesEqual, toHex } from '../protocol/encoding.js'
import { MeshError, type MeshErrorCode } from '../protocol/errors.js'
import {
  decodeFrame,
  encodeFrame,
  REPLY_OF,
  type Frame,
  type FrameOf,
  type FrameType,
} from '../protocol/frames.js'
import { signHello, type Capabilities, type HelloRole } from '../protocol/hello.js'
import type { Identity } from '../protocol/keys.js'
import type { Signed } from '../protocol/signing.js'
import { PROTOCOL_VERSION } from '../protocol/version.js'
import { randomBytes } from '../protocol/crypto.js'
import { Emitter } from '../transports/emitter.js'

/** The part of the W3C WebSocket the connection uses (`ws` in Node implements it too). */
export interface WebSocketLike {
  binaryType: string
  readonly readyState: number
  send(data: Uint8Array): void
  close(code?: number, reason?: string): void
  onopen: ((ev: unknown) => void) | null
  onmessage: ((ev: { data: unknown }) => void) | null
  onclose: ((ev: { code: number; reason: string }) => void) | null
  onerror: ((ev: unknown) => void) | null
}

/** Opens a socket to `url` (binary frames; at most 1 MiB per message where the platform lets us say so). */
export type SocketFactory = (url: string) => WebSocketLike

/** Close codes after which the connection does not reconnect (DESIGN.md §3). */
export const TERMINAL_CLOSE_CODES: ReadonlyMap<number, MeshErrorCode> = new Map([
  [4001, 'MESH_ERR_NOT_AUTHORIZED'],
  [4002, 'MESH_ERR_REVOKED'],
  [4010, 'MESH_ERR_UNSUPPORTED_VERSION'],
])

const OPEN = 1

/** Timings of the connection; each is an option so tests inject their own (DESIGN.md §6). */
export interface ConnectionTimings {
  /** First reconnect delay cap (doubling from here). Default 500 ms. */
  backoffBaseMs: number
  /** Largest reconnect delay. Default 30 s. */
  backoffCapMs: number
  /** A `ping` goes out this long after the last frame sent. Default 30 s. */
  pingMs: number
  /** Nothing heard for this long: the socket is dropped. Default 75 s. */
  staleMs: number
  /** From socket open to `hello_ack`. Default 10 s. */
  helloTimeoutMs: number
  /** A request's reply. Default 30 s. */
  requestTimeoutMs: number
}

export const DEFAULT_CONNECTION_TIMINGS: ConnectionTimings = {
  backoffBaseMs: 500,
  backoffCapMs: 30_000,
  pingMs: 30_000,
  staleMs: 75_000,
  helloTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
}

export interface ConnectionInit {
  /** The coordinator's WebSocket URL (`ws://host:port/ws`). */
  url: string
  socket: SocketFactory
  mesh: string
  /** The presence key the hello authenticates. */
  identity: Identity
  role: HelloRole
  /** The session or service id (absent for control-plane). */
  sessionId?: string
  /** The attestation to present, asked for at every hello so a re-minted one is used. */
  attestation?: () => Signed
  /** The capabilities to advertise, asked for at every hello. */
  capabilities: () => Capabilities
  /** The coordinator key pinned from the invite. */
  coordinatorPk: Uint8Array
  clock: Clock
  timings?: Partial<ConnectionTimings>
  /** Jitter source (tests pin it). Default Math.random. */
  random?: () => number
}

/** How one socket ended. */
export interface DownInfo {
  code: number
  reason: string
  /** What went wrong, when we know (a refused hello, a pinned-key mismatch, staleness). */
  error?: MeshError
}

export interface ConnectionEvents {
  /** A hello was accepted on a new socket. */
  ready: (ack: FrameOf<'hello_ack'>) => void
  /** Every frame after `hello_ack` (replies to requests included, after their promise settled). */
  frame: (frame: Frame) => void
  /** A socket that had said hello is gone; the connection reconnects unless it stopped. */
  down: (info: DownInfo) => void
  /** A socket or hello failed before `hello_ack` (the coordinator is down, refused us, or is not ours). */
  failed: (info: DownInfo) => void
  /** The connection stopped for good (terminal close code, replaced by another process, or `close()`). */
  stopped: (error?: MeshError) => void
}

export type ConnectionState = 'idle' | 'connecting' | 'ready' | 'waiting' | 'stopped'

/** A request as `request` takes it: the connection assigns the `reqId`. */
export type RequestType = keyof typeof REPLY_OF
export type RequestBody<T extends RequestType> = { t: T } & Omit<FrameOf<T>, 't' | 'reqId'>
export type ReplyTo<T extends RequestType> = FrameOf<(typeof REPLY_OF)[T]>

interface Pending {
  expect: FrameType
  resolve: (frame: Frame) => void
  reject: (err: Error) => void
  timer: ClockTimer
}

/** See the module comment. */
export class CoordinatorConnection extends Emitter<ConnectionEvents> {
  readonly #init: ConnectionInit
  readonly #timings: ConnectionTimings
  readonly #random: () => number
  #state: ConnectionState = 'idle'
  #socket: WebSocketLike | undefined
  #helloAck: FrameOf<'hello_ack'> | undefined
  /** The instance ids of our sockets, so a 4003 naming one of them is known to be our own newer one. */
  readonly #instanceIds = new Set<string>()
  #attempt = 0
  #retry: ClockTimer | undefined
  #helloTimer: ClockTimer | undefined
  #pingTimer: ClockTimer | undefined
  #staleTimer: ClockTimer | undefined
  #nextReqId = 1
  readonly #pending = new Map<number, Pending>()
  #readyWaiters = new Set<{ resolve: () => void; reject: (e: Error) => void }>()
  #stopError: MeshError | undefined

  constructor(init: ConnectionInit) {
    super()
    this.#init = init
    this.#timings = { ...DEFAULT_CONNECTION_TIMINGS, ...init.timings }
    this.#random = init.random ?? Math.random
  }

  get state(): ConnectionState {
    return this.#state
  }

  /** True while a socket is past its `hello_ack`. */
  get ready(): boolean {
    return this.#state === 'ready'
  }

  /** The accepted hello's reply on the current socket. */
  get helloAck(): FrameOf<'hello_ack'> | undefined {
    return this.#state === 'ready' ? this.#helloAck : undefined
  }

  /** The key the hello authenticates. */
  get self(): Uint8Array {
    return this.#init.identity.publicKey
  }

  /** Starts dialling; failures are retried with backoff, never thrown. */
  start(): void {
    if (this.#state !== 'idle') return
    this.#dial()
  }

  /** Resolves once the connection is ready; rejects when it stops or `signal` aborts. */
  whenReady(signal?: AbortSignal): Promise<void> {
    if (this.#state === 'ready') return Promise.resolve()
    if (this.#state === 'stopped') return Promise.reject(this.#stoppedError())
    if (signal?.aborted === true) return Promise.reject(signal.reason as Error)
    return new Promise((resolve, reject) => {
      const waiter = {
        resolve: () => (signal?.removeEventListener('abort', onAbort), resolve()),
        reject: (e: Error) => (signal?.removeEventListener('abort', onAbort), reject(e)),
      }
      const onAbort = (): void => {
        this.#readyWaiters.delete(waiter)
        reject(signal?.reason as Error)
      }
      signal?.addEventListener('abort', onAbort, { once: true })
      this.#readyWaiters.add(waiter)
    })
  }

  /**
   * Sends a request and resolves with its reply; rejects with the `MeshError` of an `error` reply,
   * `MESH_ERR_DISCONNECTED` when no socket is ready or it closes first, `MESH_ERR_REQUEST_TIMEOUT`, or
   * the signal's reason.
   */
  request<T extends RequestType>(
    body: RequestBody<T>,
    o: { signal?: AbortSignal; timeoutMs?: number } = {},
  ): Promise<ReplyTo<T>> {
    const socket = this.#socket
    if (this.#state !== 'ready' || socket === undefined) return Promise.reject(this.#disconnected())
    if (o.signal?.aborted === true) return Promise.reject(o.signal.reason as Error)
    const reqId = this.#nextReqId
    this.#nextReqId = reqId >= 2 ** 32 - 1 ? 1 : reqId + 1
    return new Promise<ReplyTo<T>>((resolve, reject) => {
      const onAbort = (): void => settle(undefined, o.signal?.reason as Error)
      const settle = (frame: Frame | undefined, err?: Error): void => {
        const p = this.#pending.get(reqId)
        if (p === undefined) return
        this.#pending.delete(reqId)
        p.timer.cancel()
        o.signal?.removeEventListener('abort', onAbort)
        if (err !== undefined) reject(err)
        else if (frame?.t === 'error') reject(MeshError.fromWire(frame))
        else if (frame?.t !== p.expect) {
          reject(
            new MeshError('MESH_ERR_MALFORMED_FRAME', `${body.t} got a ${frame?.t} reply, not ${p.expect}`),
          )
        } else resolve(frame as ReplyTo<T>)
      }
      const ms = o.timeoutMs ?? this.#timings.requestTimeoutMs
      const timer = this.#init.clock.setTimeout(
        () =>
          settle(
            undefined,
            new MeshError('MESH_ERR_REQUEST_TIMEOUT', `no reply to ${body.t} within ${ms} ms`, {
              details: { type: body.t, timeoutMs: ms },
            }),
          ),
        ms,
      )
      this.#pending.set(reqId, {
        expect: REPLY_OF[body.t],
        resolve: (f) => settle(f),
        reject: (e) => settle(undefined, e),
        timer,
      })
      o.signal?.addEventListener('abort', onAbort, { once: true })
      try {
        this.#write(socket, { ...body, reqId } as Frame)
      } catch (err) {
        settle(undefined, err instanceof Error ? err : new Error(String(err)))
      }
    })
  }

  /** Sends a frame that expects no reply; throws `MESH_ERR_DISCONNECTED` when no socket is ready. */
  send(frame: Frame): void {
    const socket = this.#socket
    if (this.#state !== 'ready' || socket === undefined) throw this.#disconnected()
    this.#write(socket, frame)
  }

  /** Closes the socket (1000) and stops reconnecting. Idempotent. */
  async close(): Promise<void> {
    if (this.#state === 'stopped') return
    const socket = this.#socket
    this.#stop(undefined)
    if (socket !== undefined && socket.readyState === OPEN) {
      await new Promise<void>((resolve) => {
        const timer = this.#init.clock.setTimeout(resolve, 2_000)
        socket.onclose = () => (timer.cancel(), resolve())
        socket.close(1000, 'closing')
      })
    } else socket?.close()
  }

  #dial(): void {
    this.#state = 'connecting'
    let socket: WebSocketLike
    try {
      socket = this.#init.socket(this.#init.url)
    } catch (err) {
      this.#failed({ code: 1006, reason: 'could not open a socket', error: asDisconnected(err) })
      return
    }
    socket.binaryType = 'arraybuffer'
    this.#socket = socket
    const instanceId = `i-${toHex(randomBytes(8))}`
    this.#instanceIds.add(instanceId)
    // Only recent ids matter: a 4003 names the connection that replaced the current one.
    if (this.#instanceIds.size > 16) this.#instanceIds.delete(this.#instanceIds.values().next().value!)
    let helloSent = false
    this.#helloTimer = this.#init.clock.setTimeout(() => {
      this.#drop(
        socket,
        4000,
        'no hello_ack in time',
        new MeshError('MESH_ERR_HELLO_TIMEOUT', 'no hello_ack in time'),
      )
    }, this.#timings.helloTimeoutMs)

    socket.onmessage = (ev) => {
      if (this.#socket !== socket) return
      const bytes = asBytes(ev.data)
      if (bytes === undefined) return
      let frame: Frame
      try {
        frame = decodeFrame(bytes)
      } catch {
        // A frame we cannot read is the coordinator's bug or a newer protocol; the socket carries on.
        return
      }
      this.#heard(socket)
      if (frame.t === 'ping') {
        this.#tryWrite(socket, { t: 'pong' })
        return
      }
      if (this.#state === 'connecting') {
        if (frame.t === 'challenge' && !helloSent) {
          helloSent = true
          this.#sayHello(socket, frame, instanceId)
        } else if (frame.t === 'hello_ack') this.#onHelloAck(socket, frame)
        else if (frame.t === 'error') {
          const err = MeshError.fromWire(frame)
          this.#drop(socket, 1000, 'hello refused', err)
        }
        return
      }
      this.#onFrame(frame)
    }
    socket.onclose = (ev) => {
      if (this.#socket !== socket) return
      this.#socketGone({ code: ev.code, reason: ev.reason })
    }
    socket.onerror = () => {
      // onclose follows every error; nothing to do here but not to crash on an unhandled 'error'.
    }
  }

  #sayHello(socket: WebSocketLike, challenge: FrameOf<'challenge'>, instanceId: string): void {
    if (!bytesEqual(challenge.coordinatorPk, this.#init.coordinatorPk)) {
      const err = new MeshError(
        'MESH_ERR_COORDINATOR_MISMATCH',
        "the coordinator's key is not the pinned one",
        {
          details: { expected: toHex(this.#init.coordinatorPk), got: toHex(challenge.coordinatorPk) },
        },
      )
      this.#drop(socket, 1000, 'coordinator key mismatch', err)
      return
    }
    try {
      const attestation = this.#init.attestation?.()
      const body = signHello({
        identity: this.#init.identity,
        mesh: this.#init.mesh,
        role: this.#init.role,
        challengeNonce: challenge.nonce,
        capabilities: this.#init.capabilities(),
        instanceId,
        ...(attestation !== undefined && { attestation }),
        ...(this.#init.sessionId !== undefined && { sessionId: this.#init.sessionId }),
      })
      this.#write(socket, { t: 'hello', proto: { ...PROTOCOL_VERSION }, features: [], ...body })
    } catch (err) {
      this.#drop(socket, 1000, 'hello failed', asMeshError(err))
    }
  }

  #onHelloAck(socket: WebSocketLike, ack: FrameOf<'hello_ack'>): void {
    this.#helloTimer?.cancel()
    this.#helloTimer = undefined
    this.#helloAck = ack
    this.#state = 'ready'
    this.#attempt = 0
    this.#schedulePing(socket)
    for (const w of this.#readyWaiters) w.resolve()
    this.#readyWaiters.clear()
    this.emit('ready', ack)
  }

  #onFrame(frame: Frame): void {
    const reqId = 'reqId' in frame ? frame.reqId : undefined
    if (reqId !== undefined) {
      const pending = this.#pending.get(reqId)
      if (pending !== undefined) {
        if (frame.t === pending.expect || frame.t === 'error') pending.resolve(frame)
      }
    }
    this.emit('frame', frame)
  }

  /** The current socket closed (by the coordinator, the network, or us dropping it). */
  #socketGone(info: DownInfo): void {
    const wasReady = this.#state === 'ready'
    this.#clearSocketTimers()
    this.#socket = undefined
    const gone = new MeshError('MESH_ERR_DISCONNECTED', `the coordinator connection closed (${info.code})`, {
      details: { code: info.code, reason: info.reason },
    })
    for (const p of [...this.#pending.values()]) p.reject(gone)
    if (this.#state === 'stopped') return

    const terminal = TERMINAL_CLOSE_CODES.get(info.code)
    if (terminal !== undefined) {
      const err =
        info.error ??
        new MeshError(terminal, `the coordinator closed the connection: ${info.reason}`, {
          details: { code: info.code, reason: info.reason },
        })
      if (wasReady) this.emit('down', { ...info, error: err })
      this.#stop(err)
      return
    }
    if (info.code === 4003 && ![...this.#instanceIds].some((id) => info.reason.includes(id))) {
      const err = new MeshError('MESH_ERR_SESSION_REPLACED', 'another connection of this key replaced ours', {
        details: { newerInstanceId: info.reason },
      })
      if (wasReady) this.emit('down', { ...info, error: err })
      this.#stop(err)
      return
    }
    if (wasReady) this.emit('down', info)
    else this.emit('failed', info)
    this.#scheduleRetry()
  }

  #failed(info: DownInfo): void {
    this.#clearSocketTimers()
    this.#socket = undefined
    this.emit('failed', info)
    this.#scheduleRetry()
  }

  /** Drops `socket` on our side, reporting `error` as the cause. */
  #drop(socket: WebSocketLike, code: number, reason: string, error: MeshError): void {
    if (this.#socket !== socket) return
    socket.onclose = null
    socket.onmessage = null
    try {
      socket.close(code >= 4000 || code === 1000 ? code : 1000, reason)
    } catch {
      // already closing
    }
    this.#socketGone({ code: 1006, reason, error })
  }

  #scheduleRetry(): void {
    if (this.#state === 'stopped') return
    this.#state = 'waiting'
    const cap = Math.min(this.#timings.backoffCapMs, this.#timings.backoffBaseMs * 2 ** this.#attempt)
    this.#attempt = Math.min(this.#attempt + 1, 30)
    const delay = Math.floor(this.#random() * cap)
    this.#retry = this.#init.clock.setTimeout(() => {
      this.#retry = undefined
      if (this.#state === 'waiting') this.#dial()
    }, delay)
  }

  #stop(error: MeshError | undefined): void {
    this.#state = 'stopped'
    this.#stopError = error
    this.#retry?.cancel()
    this.#retry = undefined
    this.#clearSocketTimers()
    const socket = this.#socket
    this.#socket = undefined
    if (socket !== undefined) {
      socket.onmessage = null
      socket.onclose = null
    }
    const stopped = this.#stoppedError()
    for (const p of [...this.#pending.values()]) p.reject(stopped)
    for (const w of this.#readyWaiters) w.reject(stopped)
    this.#readyWaiters.clear()
    this.emit('stopped', error)
  }

  #heard(socket: WebSocketLike): void {
    this.#staleTimer?.cancel()
    this.#staleTimer = this.#init.clock.setTimeout(() => {
      this.#drop(socket, 4000, 'stale', new MeshError('MESH_ERR_DISCONNECTED', 'nothing heard for too long'))
    }, this.#timings.staleMs)
  }

  #schedulePing(socket: WebSocketLike): void {
    this.#pingTimer?.cancel()
    this.#pingTimer = this.#init.clock.setTimeout(() => {
      if (this.#socket !== socket) return
      this.#tryWrite(socket, { t: 'ping' })
    }, this.#timings.pingMs)
  }

  #write(socket: WebSocketLike, frame: Frame): void {
    if (socket.readyState !== OPEN) throw this.#disconnected()
    socket.send(encodeFrame(frame))
    if (this.#state === 'ready') this.#schedulePing(socket)
  }

  #tryWrite(socket: WebSocketLike, frame: Frame): void {
    try {
      this.#write(socket, frame)
    } catch {
      // The close event follows.
    }
  }

  #clearSocketTimers(): void {
    for (const t of [this.#helloTimer, this.#pingTimer, this.#staleTimer]) t?.cancel()
    this.#helloTimer = this.#pingTimer = this.#staleTimer = undefined
  }

  #disconnected(): MeshError {
    if (this.#state === 'stopped') return this.#stoppedError()
    return new MeshError('MESH_ERR_DISCONNECTED', 'not connected to the coordinator (reconnecting)')
  }

  #stoppedError(): MeshError {
    return (
      this.#stopError ?? new MeshError('MESH_ERR_TRANSPORT_CLOSED', 'the coordinator connection was closed')
    )
  }
}

function asBytes(data: unknown): Uint8Array | undefined {
  if (data instanceof ArrayBuffer) return new Uint8Array(data)
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
  return undefined
}

function asMeshError(err: unknown): MeshError {
  if (err instanceof MeshError) return err
  return new MeshError('MESH_ERR_INTERNAL', err instanceof Error ? err.message : String(err), { cause: err })
}

function asDisconnected(err: unknown): MeshError {
  return new MeshError('MESH_ERR_DISCONNECTED', err instanceof Error ? err.message : String(err), {
    cause: err,
  })
}
