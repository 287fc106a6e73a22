/**
 * The runtime's connection to its coordinator: one WebSocket at a time, re-dialled by itself. Each socket
 * goes challenge → hello → `hello_ack`; replies are matched by `reqId`; `ping` every 30 s and a socket
 * silent for 75 s is dropped (app-level frames, since browsers cannot see WebSocket pings). Platform
 * neutral: the socket comes from an injected factory (the `ws` package in Node, the native WebSocket in a
 * browser), timers from the injected clock.
 *
 * Reconnects follow a `ReconnectPolicy`: by default forever, full-jitter backoff from 0.5 s doubling to a
 * cap of 5 s (DESIGN.md §6 says 30 s: a departure, see docs/ARCHITECTURE.md), reset by a `hello_ack`.
 * Every wait is announced (`retrying`, with its delay) so a command can tell its user. Terminal closes
 * stop it for good (4001 kicked, 4002 revoked, 4010 unsupported version), and so does 4003 (replaced)
 * unless the newer connection is one of ours (DESIGN.md §3), and so does a hello the coordinator refuses
 * with a code retrying cannot fix (`giveUpOn`: revoked, unknown mesh, not a member, unsupported version;
 * the last two only when several hellos in a row say so, `giveUpAfter`).
 * A coordinator whose challenge carries another key than the pinned one gets no hello
 * (`MESH_ERR_COORDINATOR_MISMATCH`) and is tried again later, in case the right one comes back there.
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

/** How a refused hello's `error` frame waits for the coordinator's close (which carries the close code). */
const REFUSAL_CLOSE_WAIT_MS = 1_000

/** Hello refusals that retrying cannot fix: the connection stops with them (`ReconnectPolicy.giveUpOn`). */
export const GIVE_UP_ON_HELLO: ReadonlySet<MeshErrorCode> = new Set<MeshErrorCode>([
  'MESH_ERR_REVOKED',
  'MESH_ERR_UNSUPPORTED_VERSION',
  'MESH_ERR_UNKNOWN_MESH',
  'MESH_ERR_UNKNOWN_KEY',
])

/** When and how often the connection dials again after a socket or a hello failed. */
export interface ReconnectPolicy {
  /**
   * Failures in a row (sockets or hellos that failed, or a live socket gone, with no `hello_ack` between
   * them) after which the connection stops with `MESH_ERR_COORDINATOR_UNREACHABLE`. Default `'forever'`.
   */
  attempts: number | 'forever'
  /** First delay cap, doubling per failed dial (full jitter: the delay is uniform below the cap). Default 500 ms. */
  baseMs: number
  /** Largest delay. Default 5 s. */
  capMs: number
  /** Refusal codes of a hello that stop the connection for good. Default `GIVE_UP_ON_HELLO`. */
  giveUpOn: ReadonlySet<MeshErrorCode>
  /**
   * How many hellos in a row must be refused with such a code before it stops. Default 3: a coordinator
   * node whose cached roster is a moment behind another's (a member who just joined) is not final.
   * Refusals that come with a terminal close code (4002, 4010) stop at once.
   */
  giveUpAfter: number
  /**
   * Called with every wait, like the `retrying` event: a hook for code that holds a `Peer` rather than
   * the connection (a command telling its user "retrying in 2.1 s").
   */
  onRetry?: (info: RetryInfo) => void
}

/** What `retrying` reports: the connection waits `delayMs` before its next dial. */
export interface RetryInfo {
  /** Whose connection waits: its mesh, role and session id (one callback may serve several peers). */
  mesh: string
  role: HelloRole
  sessionId?: string
  delayMs: number
  /** Failed dials in a row so far (1 after the first failure). */
  attempt: number
  /** When the outage began (the clock's ms): the first failure since the last `hello_ack`. */
  since: number
  /** Why the last dial failed (or the last socket went), when known. */
  error?: MeshError
}

/** Timings of the connection; each is an option so tests inject their own (DESIGN.md §6). */
export interface ConnectionTimings {
  /** First reconnect delay cap (doubling from here). Default 500 ms (`ReconnectPolicy.baseMs` wins). */
  backoffBaseMs: number
  /** Largest reconnect delay. Default 5 s (`ReconnectPolicy.capMs` wins). */
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
  backoffCapMs: 5_000,
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
  /** When to dial again (default: forever, 0.5 s to 5 s). */
  reconnect?: Partial<ReconnectPolicy>
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
  /** The connection waits `delayMs` before dialling again (after every `down` or `failed` it retries). */
  retrying: (info: RetryInfo) => void
}

/** The connection options a `Peer` passes through: timings, plus the reconnect policy. */
export type ConnectionOptions = Partial<ConnectionTimings> & { reconnect?: Partial<ReconnectPolicy> }

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
  readonly #policy: ReconnectPolicy
  readonly #random: () => number
  #state: ConnectionState = 'idle'
  #socket: WebSocketLike | undefined
  #helloAck: FrameOf<'hello_ack'> | undefined
  /** The instance ids of our sockets, so a 4003 naming one of them is known to be our own newer one. */
  readonly #instanceIds = new Set<string>()
  #attempt = 0
  /** When the current outage began; undefined while ready (or before the first failure). */
  #outageSince: number | undefined
  #lastFailure: MeshError | undefined
  /** Hellos refused in a row with a `giveUpOn` code. */
  #refusals = 0
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
    this.#policy = {
      attempts: init.reconnect?.attempts ?? 'forever',
      baseMs: init.reconnect?.baseMs ?? this.#timings.backoffBaseMs,
      capMs: init.reconnect?.capMs ?? this.#timings.backoffCapMs,
      giveUpOn: init.reconnect?.giveUpOn ?? GIVE_UP_ON_HELLO,
      giveUpAfter: init.reconnect?.giveUpAfter ?? 3,
      ...(init.reconnect?.onRetry !== undefined && { onRetry: init.reconnect.onRetry }),
    }
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
    let refusal: MeshError | undefined
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
        else if (frame.t === 'error' && refusal === undefined) {
          // The coordinator closes right after its error, and the close code says more (4002, 4010):
          // wait a moment for it, then drop the socket ourselves.
          refusal = MeshError.fromWire(frame)
          const err = refusal
          this.#helloTimer?.cancel()
          this.#helloTimer = this.#init.clock.setTimeout(
            () => this.#drop(socket, 1000, 'hello refused', err),
            REFUSAL_CLOSE_WAIT_MS,
          )
        }
        return
      }
      this.#onFrame(frame)
    }
    socket.onclose = (ev) => {
      if (this.#socket !== socket) return
      this.#socketGone({ code: ev.code, reason: ev.reason, ...(refusal !== undefined && { error: refusal }) })
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
    this.#outageSince = undefined
    this.#lastFailure = undefined
    this.#refusals = 0
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
      else this.emit('failed', { ...info, error: err })
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
    // A listener may have closed the connection meanwhile.
    if ((this.#state as ConnectionState) === 'stopped') return
    if (!wasReady && info.error !== undefined && this.#policy.giveUpOn.has(info.error.code)) {
      if (++this.#refusals >= this.#policy.giveUpAfter) {
        this.#stop(info.error)
        return
      }
    } else this.#refusals = 0
    this.#scheduleRetry(info.error)
  }

  #failed(info: DownInfo): void {
    this.#clearSocketTimers()
    this.#socket = undefined
    this.emit('failed', info)
    this.#scheduleRetry(info.error)
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

  #scheduleRetry(error: MeshError | undefined): void {
    if (this.#state === 'stopped') return
    this.#outageSince ??= this.#init.clock.now()
    if (error !== undefined) this.#lastFailure = error
    const { attempts, baseMs, capMs } = this.#policy
    if (attempts !== 'forever' && this.#attempt + 1 >= attempts) {
      this.#stop(
        new MeshError(
          'MESH_ERR_COORDINATOR_UNREACHABLE',
          `no hello accepted by ${this.#init.url} in ${this.#attempt + 1} attempts`,
          {
            details: { url: this.#init.url, attempts: this.#attempt + 1 },
            ...(this.#lastFailure !== undefined && { cause: this.#lastFailure }),
          },
        ),
      )
      return
    }
    this.#state = 'waiting'
    const cap = Math.min(capMs, baseMs * 2 ** Math.min(this.#attempt, 30))
    this.#attempt++
    const delay = Math.floor(this.#random() * cap)
    this.#retry = this.#init.clock.setTimeout(() => {
      this.#retry = undefined
      if (this.#state === 'waiting') this.#dial()
    }, delay)
    const info: RetryInfo = {
      mesh: this.#init.mesh,
      role: this.#init.role,
      ...(this.#init.sessionId !== undefined && { sessionId: this.#init.sessionId }),
      delayMs: delay,
      attempt: this.#attempt,
      since: this.#outageSince,
      ...(this.#lastFailure !== undefined && { error: this.#lastFailure }),
    }
    this.emit('retrying', info)
    this.#policy.onRetry?.(info)
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
