/**
 * The client the coordinator's black-box tests drive: one WebSocket speaking protocol frames, with every
 * received frame decoded, logged and queued per type so a test can wait for it without racing its arrival.
 * It does what a test asks and nothing more: no reconnects, no runtime, and `sendRaw` or `tamper` let a
 * test put bytes on the wire that no honest client would.
 */
import { EventEmitter } from 'node:events'
import { WebSocket, type RawData } from 'ws'
import {
  ACK_STATUSES,
  decodeEnvelope,
  decodeFrame,
  encode,
  encodeEnvelope,
  encodeFrame,
  initCrypto,
  MAX_WS_PAYLOAD_BYTES,
  MeshError,
  PROTOCOL_VERSION,
  randomBytes,
  REPLY_OF,
  signAdminRequest,
  signHello,
  toHex,
  type Capabilities,
  type Envelope,
  type Frame,
  type FrameOf,
  type FrameType,
  type HelloRole,
  type Identity,
  type Signed,
  type VersionRange,
} from '../../protocol/index.js'

/** How long a wait lasts when the caller gives no `timeoutMs`. */
export const DEFAULT_TIMEOUT_MS = 5000
/** How many received frames the log keeps (the oldest go first); each type's unconsumed queue too. */
export const LOG_LIMIT = 10_000

/** Options of every wait: an abort signal and a timeout (default 5 s); whichever comes first ends it. */
export interface WaitOptions {
  signal?: AbortSignal
  timeoutMs?: number
}

/** The frame of one of the types `T` (a union when `T` is). */
export type FrameIn<T extends FrameType> = Extract<Frame, { t: T }>
/** A frame type with a `reqId`, and the reply the protocol gives it (besides `error`). */
export type RequestType = keyof typeof REPLY_OF
/** The reply frame of a request type. */
export type ReplyTo<T extends RequestType> = FrameOf<(typeof REPLY_OF)[T]>
/** A request as `request` takes it: the client assigns the `reqId`. */
export type RequestBody<T extends RequestType> = { t: T } & Omit<FrameOf<T>, 't' | 'reqId'>
/** How a receiver acknowledges a push. */
export type AckStatus = (typeof ACK_STATUSES)[number]
/** A push as received, with its envelope decoded (or why it did not decode). */
export interface PushRecord {
  frame: FrameOf<'push'>
  envelope: Envelope | undefined
  envelopeError: unknown
}
/** A message that was not a frame: text, bad msgpack, an unknown type or a schema violation. */
export interface Undecodable {
  bytes: Uint8Array
  error: unknown
}
/** How a socket closed. */
export interface CloseInfo {
  code: number
  reason: string
}
/** The events a MeshClient emits. */
export type MeshClientEvents = { frame: [Frame]; undecodable: [Undecodable]; close: [CloseInfo] }

/**
 * Runs `start` until it settles, `o.signal` aborts or the timeout passes; `start` returns its cleanup.
 * A value `start` delivers synchronously wins over a signal that is already aborted.
 */
function waitUntil<T>(
  what: string,
  o: WaitOptions,
  start: (resolve: (v: T) => void, reject: (e: Error) => void) => () => void,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const ms = o.timeoutMs ?? DEFAULT_TIMEOUT_MS
    let finished = false
    let cancel: (() => void) | undefined = undefined
    const done = (): void => {
      finished = true
      clearTimeout(timer)
      o.signal?.removeEventListener('abort', onAbort)
      cancel?.()
    }
    const onAbort = (): void => {
      done()
      reject(new Error(`aborted waiting for ${what}`, { cause: o.signal?.reason }))
    }
    // A timer of our own, not AbortSignal.any with AbortSignal.timeout: Node can collect a timeout
    // signal that only a composite signal references, which then never fires (nodejs/node#57736).
    const timer = setTimeout(() => {
      done()
      reject(new Error(`timed out after ${ms} ms waiting for ${what}`))
    }, ms)
    o.signal?.addEventListener('abort', onAbort, { once: true })
    cancel = start(
      (v) => (done(), resolve(v)),
      (e) => (done(), reject(e)),
    )
    if (finished) cancel()
    else if (o.signal?.aborted === true) onAbort()
  })
}

interface Waiter {
  types: ReadonlySet<FrameType>
  test: (frame: Frame) => boolean
  resolve: (frame: Frame) => void
  reject: (err: Error) => void
}
type Queued = { seq: number; frame: Frame }

/**
 * Received frames not yet taken, queued per type, and the waiters for frames still to come. A frame goes
 * to the oldest waiter that wants it, else into its queue, where a later `take` finds it: a frame that
 * arrived before the wait started is never missed. Shared by the client and by in-test servers.
 */
export class FrameInbox {
  readonly #queues = new Map<FrameType, Queued[]>()
  readonly #waiters = new Set<Waiter>()
  #seq = 0
  #ended: Error | undefined

  /** Hands `frame` to the oldest matching waiter, or queues it (at most `LOG_LIMIT` per type). */
  deliver(frame: Frame): void {
    for (const w of this.#waiters) {
      if (!w.types.has(frame.t) || !w.test(frame)) continue
      this.#waiters.delete(w)
      w.resolve(frame)
      return
    }
    const queue = this.#queues.get(frame.t) ?? []
    this.#queues.set(frame.t, queue)
    if (queue.push({ seq: this.#seq++, frame }) > LOG_LIMIT) queue.shift()
  }

  /** Removes and returns the earliest queued frame of one of `types` that matches, or the next to arrive. */
  take<T extends FrameType>(
    types: readonly T[],
    predicate?: (frame: FrameIn<T>) => boolean,
    o: WaitOptions = {},
  ): Promise<FrameIn<T>> {
    const test = (predicate ?? (() => true)) as (frame: Frame) => boolean
    return waitUntil<FrameIn<T>>(types.join(' or '), o, (resolve, reject) => {
      let best: { queue: Queued[]; index: number; seq: number } | undefined
      for (const t of types) {
        const queue = this.#queues.get(t) ?? []
        const index = queue.findIndex((e) => test(e.frame))
        const seq = queue[index]?.seq ?? Infinity
        if (seq < (best?.seq ?? Infinity)) best = { queue, index, seq }
      }
      if (best !== undefined) resolve(best.queue.splice(best.index, 1)[0]!.frame as FrameIn<T>)
      else if (this.#ended !== undefined) reject(this.#ended)
      else {
        const waiter = {
          types: new Set<FrameType>(types),
          test,
          resolve: resolve as (f: Frame) => void,
          reject,
        }
        this.#waiters.add(waiter)
        return () => this.#waiters.delete(waiter)
      }
      return () => {}
    })
  }

  /** No more frames will come: current waiters, and later takes that find nothing queued, fail with `err`. */
  end(err: Error): void {
    this.#ended = err
    for (const w of this.#waiters) w.reject(err)
    this.#waiters.clear()
  }
}

/** Options of `MeshClient.open`. */
export interface OpenOptions extends WaitOptions {
  /** Answer `ping` with `pong` (default true). */
  autoPong?: boolean
  /** Answer each push with `client_ack`: `'ok'` (default), `false` (never), or a status per push (`undefined`: none). */
  autoAck?: false | 'ok' | ((push: PushRecord) => AckStatus | undefined)
}

/** Options of `MeshClient.hello`. */
export interface HelloOptions extends WaitOptions {
  identity: Identity
  mesh: string
  role: HelloRole
  /** The session or service attestation; absent for control-plane. */
  attestation?: Signed
  /** The session id (session) or service id (service); absent for control-plane. */
  sessionId?: string
  /** Defaults to a random id. */
  instanceId?: string
  /** Defaults to `{p2p: false, transports: ['ws']}`. */
  capabilities?: Capabilities
  /** Defaults to the versions this build speaks. */
  proto?: VersionRange
  features?: string[]
  /** Rewrites the signed hello before it is sent (sent without schema checks), to forge one. */
  tamper?: (hello: FrameOf<'hello'>, challenge: FrameOf<'challenge'>) => FrameOf<'hello'>
}

/** Options of `MeshClient.connect`: the socket's and the hello's. */
export type ConnectOptions = OpenOptions & HelloOptions

interface Pending {
  resolve: (frame: Frame) => void
  reject: (err: Error) => void
}

/** A test client on one WebSocket: binary msgpack frames only, `ws` maxPayload 1 MiB. */
export class MeshClient extends EventEmitter<MeshClientEvents> {
  /** Resolves once the socket has closed, with the close code and reason; never rejects. */
  readonly closed: Promise<CloseInfo>
  readonly #ws: WebSocket
  readonly #inbox = new FrameInbox()
  readonly #pending = new Map<number, Pending>()
  readonly #log: Frame[] = []
  readonly #pushes: PushRecord[] = []
  readonly #undecodable: Undecodable[] = []
  readonly #autoPong: boolean
  readonly #autoAck: OpenOptions['autoAck']
  #nextReqId = 1
  #challenge: FrameOf<'challenge'> | undefined
  #helloAck: FrameOf<'hello_ack'> | undefined
  #hello: HelloOptions | undefined
  #lastError: Error | undefined

  private constructor(ws: WebSocket, o: OpenOptions) {
    super()
    this.#ws = ws
    this.#autoPong = o.autoPong ?? true
    this.#autoAck = o.autoAck ?? 'ok'
    ws.on('message', (data, isBinary) => this.#onMessage(data, isBinary))
    ws.on('error', (err) => (this.#lastError = err))
    this.closed = new Promise((resolve) => {
      ws.once('close', (code, reason) => {
        const info = { code, reason: reason.toString() }
        const err = new Error(`connection closed (${code} ${info.reason})`, { cause: this.#lastError })
        this.#inbox.end(err)
        for (const p of this.#pending.values()) p.reject(err)
        this.#pending.clear()
        this.emit('close', info)
        resolve(info)
      })
    })
  }

  /** Opens a socket and waits for the coordinator's `challenge`, without saying hello. */
  static async open(url: string, o: OpenOptions = {}): Promise<MeshClient> {
    await initCrypto()
    const ws = new WebSocket(url, { maxPayload: MAX_WS_PAYLOAD_BYTES, perMessageDeflate: false })
    const client = new MeshClient(ws, o)
    try {
      client.#challenge = await client.waitFor('challenge', undefined, o)
    } catch (err) {
      void client.terminate()
      throw err
    }
    return client
  }

  /**
   * Opens, answers the challenge with a signed hello, and resolves on `hello_ack`. Rejects with the
   * MeshError of an `error` reply, or an Error on close, timeout (default 5 s in all) or abort.
   */
  static async connect(url: string, o: ConnectOptions): Promise<MeshClient> {
    const deadline = Date.now() + (o.timeoutMs ?? DEFAULT_TIMEOUT_MS)
    const client = await MeshClient.open(url, o)
    try {
      await client.hello({ ...o, timeoutMs: Math.max(1, deadline - Date.now()) })
    } catch (err) {
      void (client.#ws.readyState === WebSocket.OPEN ? client.close() : client.terminate())
      throw err
    }
    return client
  }

  /** Signs a hello over this connection's challenge, sends it and waits for `hello_ack` (or the error). */
  async hello(o: HelloOptions): Promise<FrameOf<'hello_ack'>> {
    const challenge = this.challenge
    const body = signHello({
      identity: o.identity,
      mesh: o.mesh,
      role: o.role,
      challengeNonce: challenge.nonce,
      capabilities: o.capabilities ?? { p2p: false, transports: ['ws'] },
      instanceId: o.instanceId ?? `i-${toHex(randomBytes(6))}`,
      ...(o.attestation !== undefined && { attestation: o.attestation }),
      ...(o.sessionId !== undefined && { sessionId: o.sessionId }),
    })
    const frame: FrameOf<'hello'> = {
      t: 'hello',
      proto: o.proto ?? { ...PROTOCOL_VERSION },
      features: o.features ?? [],
      ...body,
    }
    const sent = o.tamper?.(frame, challenge) ?? frame
    this.sendRaw(encode(sent))
    // Messages arrive on a later tick, so taking after sending misses nothing: the reply is queued.
    const ack = await this.#inbox.take(
      ['hello_ack', 'error'],
      (f) => f.reqId === undefined || f.reqId === sent.reqId,
      o,
    )
    if (ack.t === 'error') throw MeshError.fromWire(ack)
    this.#helloAck = ack
    this.#hello = o
    return ack
  }

  /** The challenge this connection opened with. */
  get challenge(): FrameOf<'challenge'> {
    if (this.#challenge === undefined) throw new Error('no challenge received yet')
    return this.#challenge
  }

  /** The coordinator's `hello_ack`; throws before a hello was accepted. */
  get helloAck(): FrameOf<'hello_ack'> {
    if (this.#helloAck === undefined) throw new Error('no hello_ack received yet')
    return this.#helloAck
  }

  /** The key the accepted hello authenticated. */
  get identity(): Identity {
    if (this.#hello === undefined) throw new Error('no hello accepted yet')
    return this.#hello.identity
  }

  /**
   * The first frame of type `t` matching `predicate` that is queued and not yet taken, else the next one
   * to arrive; taking it removes it from the queue. Replies claimed by `request` never reach the queue.
   */
  waitFor<T extends FrameType>(
    t: T,
    predicate?: (frame: FrameIn<T>) => boolean,
    o: WaitOptions = {},
  ): Promise<FrameIn<T>> {
    return this.#inbox.take([t], predicate, o)
  }

  /** Every received frame of type `t` (every frame, without `t`) still in the log, oldest first. */
  frames<T extends FrameType>(t?: T): FrameIn<T>[] {
    return this.#log.filter((f) => t === undefined || f.t === t) as FrameIn<T>[]
  }

  /** Pushes received so far, with their envelopes decoded. */
  pushes(): PushRecord[] {
    return [...this.#pushes]
  }

  /** Messages that did not decode as frames. */
  undecodable(): Undecodable[] {
    return [...this.#undecodable]
  }

  /** Sends a request with the next `reqId`; resolves with its reply, rejects with the MeshError of an `error`. */
  async request<T extends RequestType>(frame: RequestBody<T>, o: WaitOptions = {}): Promise<ReplyTo<T>> {
    const reply = await this.requestAny(frame, o)
    if (reply.t === 'error') throw MeshError.fromWire(reply)
    const expected = REPLY_OF[frame.t]
    if (reply.t !== expected) throw new Error(`${frame.t} got a ${reply.t} reply, not ${expected}`)
    return reply as ReplyTo<T>
  }

  /** Sends a request with the next `reqId`; resolves with whatever frame echoes it, `error` included. */
  requestAny<T extends RequestType>(frame: RequestBody<T>, o: WaitOptions = {}): Promise<Frame> {
    const reqId = this.#nextReqId
    this.#nextReqId = reqId >= 2 ** 32 - 1 ? 1 : reqId + 1
    return waitUntil<Frame>(`the reply to ${frame.t} #${reqId}`, o, (resolve, reject) => {
      this.#pending.set(reqId, { resolve, reject })
      try {
        this.send({ ...frame, reqId } as Frame)
      } catch (err) {
        reject(err instanceof Error ? err : new Error(String(err)))
      }
      return () => this.#pending.delete(reqId)
    })
  }

  /** Sends an encoded envelope and resolves with its `send_ack`. */
  sendEnvelope(env: Envelope, o: WaitOptions = {}): Promise<FrameOf<'send_ack'>> {
    return this.request({ t: 'send', envelope: encodeEnvelope(env) }, o)
  }

  /** Signs an admin request over this connection's challenge (default signer: the hello's key) and sends it. */
  async admin(
    method: string,
    args: unknown,
    o: WaitOptions & { identity?: Identity; mesh?: string } = {},
  ): Promise<FrameOf<'admin_result'>> {
    const identity = o.identity ?? this.identity
    const mesh = o.mesh ?? this.#hello?.mesh
    if (mesh === undefined) throw new Error('admin: no mesh given and no hello accepted')
    const req = signAdminRequest({ identity, mesh, method, args, challengeNonce: this.challenge.nonce })
    return this.request({ t: 'admin', ...req }, o)
  }

  /** Validates and sends one frame; throws when the frame breaks its schema or the socket is not open. */
  send(frame: Frame): void {
    this.sendRaw(encodeFrame(frame))
  }

  /** Sends bytes as one binary message, unchecked. */
  sendRaw(bytes: Uint8Array): void {
    if (this.#ws.readyState !== WebSocket.OPEN) throw new Error(`socket is not open (${this.#ws.readyState})`)
    this.#ws.send(bytes, { binary: true })
  }

  /** Starts the closing handshake (default code 1000) and resolves once closed. */
  close(code = 1000, reason?: string): Promise<CloseInfo> {
    this.#ws.close(code, reason)
    return this.closed
  }

  /** Stops reading from the socket (a stalled consumer): the sender's buffers fill up. */
  pauseReading(): void {
    this.#ws.pause()
  }

  /** Drops the TCP connection without a close frame, as a crash would; the other side sees 1006. */
  terminate(): Promise<CloseInfo> {
    this.#ws.terminate()
    return this.closed
  }

  #onMessage(data: RawData, isBinary: boolean): void {
    // A copy: decoded `bin` fields view these bytes, and the frames are kept.
    const bytes = new Uint8Array(Array.isArray(data) ? Buffer.concat(data) : data)
    let frame: Frame
    try {
      if (!isBinary) throw new Error('a text message: frames are binary')
      frame = decodeFrame(bytes)
    } catch (error) {
      const bad = { bytes, error }
      if (this.#undecodable.push(bad) > LOG_LIMIT) this.#undecodable.shift()
      this.emit('undecodable', bad)
      return
    }
    if (this.#log.push(frame) > LOG_LIMIT) this.#log.shift()
    this.emit('frame', frame)
    if (frame.t === 'ping' && this.#autoPong && this.#ws.readyState === WebSocket.OPEN)
      this.send({ t: 'pong' })
    if (frame.t === 'push') this.#onPush(frame)
    const reqId = 'reqId' in frame ? frame.reqId : undefined
    const pending = reqId === undefined ? undefined : this.#pending.get(reqId)
    if (reqId !== undefined && pending !== undefined) {
      this.#pending.delete(reqId)
      pending.resolve(frame)
      return
    }
    this.#inbox.deliver(frame)
  }

  #onPush(frame: FrameOf<'push'>): void {
    let envelope: Envelope | undefined
    let envelopeError: unknown
    try {
      envelope = decodeEnvelope(frame.envelope)
    } catch (err) {
      envelopeError = err
    }
    const record = { frame, envelope, envelopeError }
    if (this.#pushes.push(record) > LOG_LIMIT) this.#pushes.shift()
    const status = typeof this.#autoAck === 'function' ? this.#autoAck(record) : this.#autoAck || undefined
    if (status !== undefined && this.#ws.readyState === WebSocket.OPEN) {
      this.send({ t: 'client_ack', deliveryId: frame.deliveryId, status })
    }
  }
}
