/**
 * A small client of the daemon's IPC, over `daemon.sock` (default) or the loopback port: JSON requests
 * with the bearer token, and the SSE stream parsed into events. The CLI (`daemon status`, `down`), the
 * tests and the bench use it; agents may use it or plain HTTP.
 *
 * It rides out a daemon restart: an idempotent request (GET, and `POST /v1/send`, which always carries an
 * id) that finds no daemon (ECONNREFUSED, ENOENT, ECONNRESET) is dialled again within a bound, and
 * `follow()` re-dials the event stream from its last message id, so nothing is missed or repeated.
 *
 * A send the daemon refuses because the session's outbox is full (429 `MESH_ERR_OUTBOX_FULL`, nothing
 * stored) is answered as it is, unless the caller asks to wait (`whenFull: 'wait'`): the client then
 * sends it again after the answer's `retryAfterMs` until it is taken, the signal aborts, or `fullWaitMs`.
 */
import { Agent, request, type IncomingMessage } from 'node:http'
import { MeshError, isMeshError, isMeshErrorCode } from '../../../protocol/errors.js'
import { ulidFactory } from '../../../protocol/ulid.js'

/** Where the daemon listens: its socket file, or `127.0.0.1:<port>`. */
export type DaemonAddress = { socketPath: string } | { port: number }

/** One HTTP answer. */
export interface IpcResponse<T = unknown> {
  status: number
  headers: IncomingMessage['headers']
  body: T
}

/** One server-sent event. */
export interface IpcEvent {
  event: string
  id?: string
  data: unknown
}

/** How the client re-dials a daemon that is restarting. */
export interface RedialOptions {
  /** How long an idempotent request keeps re-dialling before it fails. Default 15 s. */
  timeoutMs: number
  /** The first pause between dials, doubling up to `capMs`. Defaults 50 ms and 1 s. */
  baseMs: number
  capMs: number
}

const DEFAULT_REDIAL: RedialOptions = { timeoutMs: 15_000, baseMs: 50, capMs: 1_000 }

/** What a request does with a 429 `MESH_ERR_OUTBOX_FULL`: answer it (`fail`) or wait and send again. */
export type WhenFull = 'fail' | 'wait'

/** Options of a `DaemonClient`. */
export interface DaemonClientOptions {
  redial?: Partial<RedialOptions>
  /** The default for every request (default `fail`: the 429 is the caller's to handle). */
  whenFull?: WhenFull
  /** How long `whenFull: 'wait'` keeps sending again before it answers the 429. Default 5 minutes. */
  fullWaitMs?: number
}

/** The longest single wait on a full outbox, whatever `retryAfterMs` says (the depth may fall sooner). */
const FULL_PAUSE_CAP_MS = 30_000

/** What `follow()` reports while it re-dials: the daemon went away (each failed try), or it is back. */
export type FollowNotice =
  | { kind: 'unreachable'; error: Error; attempt: number; retryInMs: number }
  | { kind: 'reconnected'; after: number }

/** Options of `follow()`. */
export interface FollowOptions {
  /** Ends the iteration (it then returns without an error). */
  signal: AbortSignal
  /** Start after this inbox position (a message's `seq`); default: from now on. */
  after?: number
  /** Told each time a dial fails (`daemon unreachable, retrying in …`) and when the stream is back. */
  onNotice?: (notice: FollowNotice) => void
  /** Give up (`MESH_ERR_DAEMON_NOT_RUNNING`) after the daemon was unreachable this long. Default never. */
  giveUpAfterMs?: number
}

/** Socket errors that mean "no daemon answers right now" (it is stopped or restarting). */
const GONE = new Set(['ECONNREFUSED', 'ENOENT', 'ECONNRESET', 'EPIPE', 'ECONNABORTED'])

const nextId = ulidFactory()

export class DaemonClient {
  readonly #address: DaemonAddress
  readonly #token: string | undefined
  readonly #redial: RedialOptions
  readonly #whenFull: WhenFull
  readonly #fullWaitMs: number
  readonly #agent: Agent

  constructor(address: DaemonAddress, token?: string, o: DaemonClientOptions = {}) {
    this.#address = address
    this.#token = token
    this.#redial = { ...DEFAULT_REDIAL, ...o.redial }
    this.#whenFull = o.whenFull ?? 'fail'
    this.#fullWaitMs = o.fullWaitMs ?? 300_000
    this.#agent = new Agent({ keepAlive: true, maxSockets: 64 })
  }

  /** A client for the same daemon with another token. */
  as(token: string | undefined): DaemonClient {
    return new DaemonClient(this.#address, token, {
      redial: this.#redial,
      whenFull: this.#whenFull,
      fullWaitMs: this.#fullWaitMs,
    })
  }

  /**
   * Sends a request; resolves with any status (tests look at 4xx answers too). An idempotent one (GET,
   * HEAD, `POST /v1/send` with an id) that finds no daemon is dialled again until `redial.timeoutMs`;
   * `redial: false` sends it once. With `whenFull: 'wait'` (here or the client's default), a 429
   * `MESH_ERR_OUTBOX_FULL` is sent again after its `retryAfterMs` (nothing was stored, so this is no
   * second message) until it is taken, `signal` aborts or `fullWaitMs` passed; then the 429 is answered.
   */
  async request<T = unknown>(
    method: string,
    path: string,
    o: {
      body?: unknown
      headers?: Record<string, string>
      signal?: AbortSignal
      redial?: boolean
      whenFull?: WhenFull
    } = {},
  ): Promise<IpcResponse<T>> {
    const retry = o.redial !== false && idempotent(method, path, o.body)
    const deadline = Date.now() + this.#redial.timeoutMs
    const fullDeadline = Date.now() + this.#fullWaitMs
    const waitWhenFull = (o.whenFull ?? this.#whenFull) === 'wait'
    for (let attempt = 0; ; attempt++) {
      try {
        const res = await this.#once<T>(method, path, o)
        const fullFor = waitWhenFull ? outboxFullPause(res) : undefined
        if (fullFor !== undefined && o.signal?.aborted !== true && Date.now() + fullFor < fullDeadline) {
          await pause(fullFor, o.signal)
          if (isAborted(o.signal)) return res
          attempt = -1 // the daemon answered: no re-dial backoff to carry over
          continue
        }
        // A daemon closing its listeners answers 503 without our error body; its successor will answer.
        if (retry && res.status === 503 && closingAnswer(res.body) && Date.now() < deadline) {
          await pause(this.#delay(attempt), o.signal)
          continue
        }
        return res
      } catch (err) {
        if (!retry || !isGone(err) || o.signal?.aborted === true) throw err
        if (Date.now() >= deadline) {
          throw new MeshError(
            'MESH_ERR_DAEMON_NOT_RUNNING',
            `no daemon answered on ${this.#where()} for ${this.#redial.timeoutMs} ms`,
            { details: { address: this.#where() }, cause: err },
          )
        }
        await pause(this.#delay(attempt), o.signal)
      }
    }
  }

  /**
   * Like `request`, but a non-2xx answer throws its `MeshError`. `POST /v1/send` without an `id` gets
   * one here (every send of an array body too), so that re-sending it after a lost answer is a replay,
   * not a second message. An array's answer is `{results}`, one status per send: a 429 among them is
   * the caller's to send again (`whenFull` waits only for a single send).
   */
  async call<T = unknown>(
    method: string,
    path: string,
    body?: unknown,
    signal?: AbortSignal,
    o: { whenFull?: WhenFull } = {},
  ): Promise<T> {
    const sent = method === 'POST' && path === '/v1/send' ? withIds(body) : body
    const res = await this.request<T>(method, path, {
      ...(sent !== undefined && { body: sent }),
      ...(signal !== undefined && { signal }),
      ...(o.whenFull !== undefined && { whenFull: o.whenFull }),
    })
    if (res.status >= 200 && res.status < 300) return res.body
    throw answerError(res.status, res.body)
  }

  /**
   * The session's event stream (`GET /v1/events`) as an async iterator, one connection: ends when
   * `signal` aborts or the daemon ends the stream. Rejects with the answer's `MeshError` when the stream
   * is refused (401, 403, 503). `follow()` is the one that re-dials.
   */
  async *events(o: { signal: AbortSignal; after?: number }): AsyncGenerator<IpcEvent> {
    const path = o.after === undefined ? '/v1/events' : `/v1/events?after=${o.after}`
    const res = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = request({
        ...this.#target(),
        method: 'GET',
        path,
        headers: {
          host: 'localhost',
          accept: 'text/event-stream',
          ...(this.#token !== undefined && { authorization: `Bearer ${this.#token}` }),
        },
        signal: o.signal,
      })
      req.on('response', resolve)
      req.on('error', reject)
      req.end()
    })
    if (res.statusCode !== 200) throw answerError(res.statusCode ?? 0, await readBody(res))
    res.setEncoding('utf8')
    let buffer = ''
    try {
      for await (const chunk of res as AsyncIterable<string>) {
        buffer += chunk
        for (let at = buffer.indexOf('\n\n'); at >= 0; at = buffer.indexOf('\n\n')) {
          const frame = buffer.slice(0, at)
          buffer = buffer.slice(at + 2)
          const event = parseFrame(frame)
          if (event !== undefined) yield event
        }
      }
    } catch (err) {
      if (!o.signal.aborted) throw err
    } finally {
      res.destroy()
    }
  }

  /**
   * The session's events for as long as `signal` allows, across daemon restarts: when the stream breaks
   * or no daemon answers, it re-dials (backoff up to `redial.capMs`) with `?after=<last message seq>`,
   * so every message comes exactly once. Each connection starts with a `ready` event. Throws, ending the
   * iteration, on what re-dialling cannot fix: a token the daemon does not know (401), a session that
   * stopped for good (`event: stopped`, or a 403 such as `MESH_ERR_REVOKED`). A session the daemon has
   * not opened yet (503 `MESH_ERR_SESSION_UNAVAILABLE`) is waited for like a restart.
   */
  async *follow(o: FollowOptions): AsyncGenerator<IpcEvent> {
    let cursor = o.after
    let attempt = 0
    let downSince: number | undefined
    for (;;) {
      if (o.signal.aborted) return
      let error: Error
      try {
        for await (const e of this.events({
          signal: o.signal,
          ...(cursor !== undefined && { after: cursor }),
        })) {
          if (e.event === 'ready') {
            const after = (e.data as { after?: unknown } | null)?.after
            if (cursor === undefined && typeof after === 'number') cursor = after
            if (attempt > 0) o.onNotice?.({ kind: 'reconnected', after: cursor ?? 0 })
            attempt = 0
            downSince = undefined
          } else if (e.event === 'message' && e.id !== undefined && /^\d+$/.test(e.id)) {
            cursor = Number(e.id)
          } else if (e.event === 'stopped') {
            throw stoppedEventError(e.data)
          }
          yield e
        }
        if (o.signal.aborted) return
        error = new MeshError('MESH_ERR_DISCONNECTED', 'the daemon ended the event stream')
      } catch (err) {
        if (o.signal.aborted) return
        if (!followRetries(err)) throw err
        error = err instanceof Error ? err : new Error(String(err))
      }
      downSince ??= Date.now()
      if (o.giveUpAfterMs !== undefined && Date.now() - downSince >= o.giveUpAfterMs) {
        throw new MeshError(
          'MESH_ERR_DAEMON_NOT_RUNNING',
          `no daemon answered on ${this.#where()} for ${o.giveUpAfterMs} ms`,
          { details: { address: this.#where() }, cause: error },
        )
      }
      const retryInMs = this.#delay(attempt)
      attempt++
      o.onNotice?.({ kind: 'unreachable', error, attempt, retryInMs })
      await pause(retryInMs, o.signal)
    }
  }

  /** Closes idle keep-alive sockets. */
  close(): void {
    this.#agent.destroy()
  }

  #once<T>(
    method: string,
    path: string,
    o: { body?: unknown; headers?: Record<string, string>; signal?: AbortSignal },
  ): Promise<IpcResponse<T>> {
    const payload = o.body === undefined ? undefined : Buffer.from(JSON.stringify(o.body))
    return new Promise((resolve, reject) => {
      const req = request(
        {
          ...this.#target(),
          agent: this.#agent,
          method,
          path,
          headers: {
            host: 'localhost',
            accept: 'application/json',
            ...(this.#token !== undefined && { authorization: `Bearer ${this.#token}` }),
            ...(payload !== undefined && {
              'content-type': 'application/json',
              'content-length': String(payload.length),
            }),
            ...o.headers,
          },
          ...(o.signal !== undefined && { signal: o.signal }),
        },
        (res) => {
          readBody(res).then(
            (body) => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: body as T }),
            reject,
          )
        },
      )
      req.on('error', reject)
      req.end(payload)
    })
  }

  #target(): { socketPath: string } | { host: string; port: number } {
    return 'socketPath' in this.#address
      ? { socketPath: this.#address.socketPath }
      : { host: '127.0.0.1', port: this.#address.port }
  }

  #where(): string {
    return 'socketPath' in this.#address ? this.#address.socketPath : `127.0.0.1:${this.#address.port}`
  }

  #delay(attempt: number): number {
    return Math.min(this.#redial.capMs, this.#redial.baseMs * 2 ** Math.min(attempt, 20))
  }
}

/** GET and HEAD, and `POST /v1/send` whose every send has an id (a repeat is answered from the outbox). */
function idempotent(method: string, path: string, body: unknown): boolean {
  if (method === 'GET' || method === 'HEAD') return true
  if (method !== 'POST' || path !== '/v1/send') return false
  const hasId = (b: unknown): boolean => isObject(b) && typeof b['id'] === 'string'
  return Array.isArray(body) ? body.length > 0 && body.every(hasId) : hasId(body)
}

/** A send body (or an array of them) with an id on every send that had none. */
function withIds(body: unknown): unknown {
  const one = (b: unknown): unknown => (isObject(b) && b['id'] === undefined ? { ...b, id: nextId() } : b)
  return Array.isArray(body) ? body.map(one) : one(body)
}

/** For a 429 `MESH_ERR_OUTBOX_FULL`: how long to wait before sending again (its `retryAfterMs`). */
function outboxFullPause(res: IpcResponse<unknown>): number | undefined {
  if (res.status !== 429) return undefined
  const error = (res.body as { error?: { code?: unknown; details?: { retryAfterMs?: unknown } } } | null)
    ?.error
  if (error?.code !== 'MESH_ERR_OUTBOX_FULL') return undefined
  const ms = error.details?.retryAfterMs
  const header = Number(res.headers['retry-after']) * 1000
  const wait = typeof ms === 'number' && Number.isFinite(ms) ? ms : Number.isFinite(header) ? header : 1_000
  return Math.min(FULL_PAUSE_CAP_MS, Math.max(1, wait))
}

function isAborted(signal: AbortSignal | undefined): boolean {
  return signal?.aborted === true
}

function isGone(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code
  return typeof code === 'string' && GONE.has(code)
}

/** Whether `follow()` re-dials after `err`: no daemon, a broken stream, or a 503 (restarting, not open yet). */
function followRetries(err: unknown): boolean {
  if (isMeshError(err)) {
    return err.code === 'MESH_ERR_DISCONNECTED' || (err.details as { status?: unknown })?.status === 503
  }
  return true // a socket-level failure: the daemon went away mid-stream or is not there yet
}

function closingAnswer(body: unknown): boolean {
  const code = (body as { error?: { code?: unknown } } | null)?.error?.code
  return code === undefined || code === 'MESH_ERR_SHUTTING_DOWN'
}

function answerError(status: number, body: unknown): MeshError {
  const err = (body as { error?: { code?: string; message?: string; details?: Record<string, unknown> } })
    ?.error
  const code = err?.code !== undefined && isMeshErrorCode(err.code) ? err.code : 'MESH_ERR_INTERNAL'
  return new MeshError(code, err?.message ?? `HTTP ${status}`, { details: { status, ...err?.details } })
}

function stoppedEventError(data: unknown): MeshError {
  const d = (data ?? {}) as { code?: string; message?: string }
  const code = d.code !== undefined && isMeshErrorCode(d.code) ? d.code : 'MESH_ERR_DISCONNECTED'
  return new MeshError(code, d.message ?? 'the session stopped', { details: { stopped: true } })
}

function readBody(res: IncomingMessage): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    res.on('data', (c: Buffer) => chunks.push(c))
    res.on('error', reject)
    res.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8')
      if (text === '') return resolve(undefined)
      try {
        resolve(JSON.parse(text))
      } catch {
        resolve(text)
      }
    })
  })
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/** Waits `ms` (a real timer: it keeps a waiting CLI process alive), or less when `signal` aborts. */
function pause(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted === true) return resolve()
    const done = (): void => {
      clearTimeout(timer)
      signal?.removeEventListener('abort', done)
      resolve()
    }
    const timer = setTimeout(done, ms)
    signal?.addEventListener('abort', done, { once: true })
  })
}

function parseFrame(frame: string): IpcEvent | undefined {
  let event = 'message'
  let id: string | undefined
  const data: string[] = []
  for (const line of frame.split('\n')) {
    if (line.startsWith(':') || line === '') continue
    const colon = line.indexOf(':')
    const field = colon < 0 ? line : line.slice(0, colon)
    const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '')
    if (field === 'event') event = value
    else if (field === 'id') id = value
    else if (field === 'data') data.push(value)
  }
  if (data.length === 0) return undefined
  const text = data.join('\n')
  let parsed: unknown = text
  try {
    parsed = JSON.parse(text)
  } catch {
    // not JSON: keep the text
  }
  return { event, ...(id !== undefined && { id }), data: parsed }
}
