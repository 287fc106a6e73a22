/**
 * Request and response over a `Peer` (DESIGN.md §5, **rpc**; docs/PROTOCOL.md §6.1). A request is an
 * `rpc` envelope with `meta.rpc: 'req'` and `meta.timeoutMs`; its answer is `meta.rpc: 'res'` or `'err'`
 * with `meta.correlationId` = the request's `clientMessageId`. Both travel through the durable outbox
 * like any message (P2P when warm, else the relay; at-least-once), so the callee must make the handler
 * run at most once per request:
 *
 * - the inbox already dedupes a request by `(from, clientMessageId)`: a retried one never reaches the
 *   handler again;
 * - the callee keeps each answer by `(from, correlationId)` for `cacheTtlMs` and, when the request comes
 *   again (the Peer's `duplicate` event), re-sends that answer under a fresh id: the caller lost the
 *   first one. With a durable store the record is in the store, so this holds across a restart of the
 *   callee: a row with no answer is written before the handler runs and the answer after it returns. A
 *   request found with a row but no answer, by a process that is not running it, was cut off by a crash:
 *   it is answered `err` `MESH_ERR_RPC_HANDLER` with `details.interrupted: true`, never run again. A
 *   volatile store (memory) keeps answers in memory only, as many as `cacheSize`;
 * - the caller keeps an answer that arrives with no call waiting (a relaunched caller) for
 *   `orphanTtlMs`, so calling again with the same `id` picks it up.
 *
 * One endpoint per peer (`rpcEndpoint(peer)` returns the same one), since it reads the peer's `rpc` inbox
 * rows and marks them consumed.
 */
import { decode, encode } from '../protocol/codec.js'
import { toHex } from '../protocol/encoding.js'
import type { Meta } from '../protocol/envelope.js'
import { isMeshError, isMeshErrorCode, MeshError, type ErrorDetails } from '../protocol/errors.js'
import { ulidFactory } from '../protocol/ulid.js'
import type { InboundMessage } from './inbox.js'
import type { Peer } from './peer.js'
import type { OutboxRow, RuntimeStore } from './store/types.js'

/** How long a call waits for its answer unless told otherwise. */
export const RPC_DEFAULT_TIMEOUT_MS = 30_000
/** How long the callee keeps an answer to re-send on a retried request (the caller's retry horizon). */
export const RPC_CACHE_TTL_MS = 7 * 24 * 60 * 60 * 1000

/** Where a handler is told who asked and by when an answer still matters. */
export interface RpcContext {
  from: Uint8Array
  /** The request's `clientMessageId`. */
  id: string
  method: string | undefined
  via: string
  /** Aborts when the caller's `timeoutMs` has passed (the caller no longer waits). */
  signal: AbortSignal
}

/** Answers a request: its return value (any msgpack value) is the response; a throw is an `err`. */
export type RpcHandler = (params: unknown, ctx: RpcContext) => unknown

export interface RpcCallOptions {
  /** The handler to reach (`handle(method, …)`); absent: the default handler. */
  method?: string
  /** Default 30 s; travels as `meta.timeoutMs`. */
  timeoutMs?: number
  signal?: AbortSignal
  /**
   * The request id (a ULID). Pass the id of an earlier call to retry it after a relaunch: the callee
   * does not run the handler again, and an answer that arrived meanwhile is used.
   */
  id?: string
}

export interface RpcEndpointOptions {
  /** How long answers are kept to re-send (default 7 days, the dedupe window). */
  cacheTtlMs?: number
  /** Most answers kept; the oldest go first. Default 10,000. */
  cacheSize?: number
  /** How long an answer nobody waits for is kept for a call retried with its id. Default 10 min. */
  orphanTtlMs?: number
  now?: () => number
}

/** The call's answer did not come within `timeoutMs`. */
export class RpcTimeoutError extends MeshError {
  override readonly name = 'RpcTimeoutError'
  constructor(id: string, timeoutMs: number) {
    super('MESH_ERR_RPC_TIMEOUT', `no answer to rpc ${id} within ${timeoutMs} ms`, {
      details: { id, timeoutMs },
    })
  }
}

/** The callee answered `err`: its code (when this build knows it), message and details. */
export class RpcRemoteError extends MeshError {
  override readonly name = 'RpcRemoteError'
  /** The code as the callee sent it (a newer peer's code is kept here). */
  readonly remoteCode: string
  constructor(wire: RpcErrPayload) {
    const code = isMeshErrorCode(wire.code) ? wire.code : 'MESH_ERR_RPC_HANDLER'
    super(code, wire.message, wire.details === undefined ? {} : { details: wire.details })
    this.remoteCode = wire.code
  }
}

/** The payload of a request (`meta.rpc: 'req'`). */
export interface RpcReqPayload {
  m?: string
  p: unknown
}
/** The payload of a response (`meta.rpc: 'res'`). */
export interface RpcResPayload {
  p: unknown
}
/** The payload of an error answer (`meta.rpc: 'err'`). */
export interface RpcErrPayload {
  code: string
  message: string
  details?: ErrorDetails
}

interface Answer {
  payload: RpcResPayload | RpcErrPayload
  meta: Meta
  at: number
}

/** The message of the answer to a request whose handler a crash cut off. */
export const RPC_INTERRUPTED_MESSAGE = 'the callee restarted while the handler ran; it is not run again'

interface Pending {
  to: string
  resolve: (value: unknown) => void
  reject: (err: unknown) => void
}

const endpoints = new WeakMap<Peer, RpcEndpoint>()

/**
 * The peer's rpc endpoint (made on first use; one per peer; `o` counts only the first time). Register
 * handlers in the same tick you first call it: requests already in the inbox are served right after.
 */
export function rpcEndpoint(peer: Peer, o: RpcEndpointOptions = {}): RpcEndpoint {
  let endpoint = endpoints.get(peer)
  if (endpoint === undefined || endpoint.closed) {
    endpoint = new RpcEndpoint(peer, o)
    endpoints.set(peer, endpoint)
  }
  return endpoint
}

export class RpcEndpoint {
  readonly #peer: Peer
  readonly #now: () => number
  readonly #cacheTtlMs: number
  readonly #cacheSize: number
  readonly #orphanTtlMs: number
  readonly #nextId = ulidFactory()
  readonly #handlers = new Map<string | undefined, RpcHandler>()
  /** Answers given, by `hex(from):requestId`; `running` while the handler has not returned. */
  readonly #answers = new Map<string, Answer | 'running'>()
  /** Where answers outlive the process (a durable store), else undefined. */
  readonly #store: RuntimeStore | undefined
  /** Calls waiting, by request id. */
  readonly #pending = new Map<string, Pending>()
  /** Answers nobody waited for, by `hex(from):requestId`. */
  readonly #orphans = new Map<string, { message: InboundMessage; at: number }>()
  readonly #stop = new AbortController()
  readonly #onDuplicate = (m: InboundMessage): void => this.#duplicate(m)
  readonly #onStopped = (): void => this.close()
  readonly #onOutbox = (row: OutboxRow): void => {
    const pending = this.#pending.get(row.id)
    const failure = pending === undefined ? undefined : deliveryFailure(row, pending.to)
    if (failure !== undefined) this.#settle(row.id, failure)
  }
  #closed = false

  constructor(peer: Peer, o: RpcEndpointOptions = {}) {
    this.#peer = peer
    this.#now = o.now ?? Date.now
    this.#cacheTtlMs = o.cacheTtlMs ?? RPC_CACHE_TTL_MS
    this.#cacheSize = o.cacheSize ?? 10_000
    this.#orphanTtlMs = o.orphanTtlMs ?? 10 * 60 * 1000
    this.#store = peer.store.durability === 'durable' ? peer.store : undefined
    peer.on('duplicate', this.#onDuplicate)
    peer.on('stopped', this.#onStopped)
    peer.on('outbox', this.#onOutbox)
    void this.#read()
  }

  get closed(): boolean {
    return this.#closed
  }

  /** How many answers are kept to re-send. */
  get cachedAnswers(): number {
    return this.#answers.size
  }

  /**
   * Serves `method` (or, without one, requests that name no method or one nobody handles). Returns a
   * function that removes the handler.
   */
  handle(handler: RpcHandler): () => void
  handle(method: string, handler: RpcHandler): () => void
  handle(a: string | RpcHandler, b?: RpcHandler): () => void {
    const method = typeof a === 'string' ? a : undefined
    const handler = typeof a === 'string' ? b : a
    if (handler === undefined) throw new TypeError('handle(method, handler): the handler is missing')
    this.#handlers.set(method, handler)
    return () => {
      if (this.#handlers.get(method) === handler) this.#handlers.delete(method)
    }
  }

  /**
   * Sends a request to `to` and resolves with the handler's return value. Rejects with `RpcTimeoutError`
   * (`MESH_ERR_RPC_TIMEOUT`) after `timeoutMs`, with `RpcRemoteError` when the handler threw, with
   * the signal's reason when it aborts, and with what `Peer.send` throws (an unknown key).
   */
  async call(to: Uint8Array, params: unknown, o: RpcCallOptions = {}): Promise<unknown> {
    if (this.#closed) throw new MeshError('MESH_ERR_TRANSPORT_CLOSED', 'the rpc endpoint is closed')
    const id = o.id ?? this.#nextId()
    const timeoutMs = o.timeoutMs ?? RPC_DEFAULT_TIMEOUT_MS
    const toHexKey = toHex(to)
    if (this.#pending.has(id))
      throw new MeshError('MESH_ERR_IDEMPOTENCY_CONFLICT', `rpc ${id} is already waiting`)
    const answer = new Promise<unknown>((resolve, reject) => {
      this.#pending.set(id, { to: toHexKey, resolve, reject })
    })
    const timer = setTimeout(() => this.#settle(id, new RpcTimeoutError(id, timeoutMs)), timeoutMs)
    const onAbort = (): void => this.#settle(id, o.signal?.reason ?? new Error('aborted'))
    o.signal?.addEventListener('abort', onAbort, { once: true })
    try {
      if (o.signal?.aborted === true) onAbort()
      const early = this.#orphans.get(`${toHexKey}:${id}`)
      if (early !== undefined) this.#answered(early.message)
      else {
        const req: RpcReqPayload = { p: params ?? null, ...(o.method !== undefined && { m: o.method }) }
        await this.#peer.send(to, req, {
          channel: 'rpc',
          clientMessageId: id,
          meta: { rpc: 'req', timeoutMs },
          ...(o.signal !== undefined && { signal: o.signal }),
        })
      }
      return await answer
    } catch (err) {
      this.#settle(id, err)
      throw err
    } finally {
      clearTimeout(timer)
      o.signal?.removeEventListener('abort', onAbort)
      this.#pending.delete(id)
    }
  }

  /** Stops reading; calls still waiting reject with `MESH_ERR_TRANSPORT_CLOSED`. */
  close(): void {
    if (this.#closed) return
    this.#closed = true
    this.#stop.abort()
    this.#peer.off('duplicate', this.#onDuplicate)
    this.#peer.off('stopped', this.#onStopped)
    this.#peer.off('outbox', this.#onOutbox)
    for (const id of [...this.#pending.keys()]) {
      this.#settle(id, new MeshError('MESH_ERR_TRANSPORT_CLOSED', 'the rpc endpoint closed'))
    }
    if (endpoints.get(this.#peer) === this) endpoints.delete(this.#peer)
  }

  // ── inbound ────────────────────────────────────────────────────────────────

  async #read(): Promise<void> {
    try {
      for await (const m of this.#peer.messages({ channels: ['rpc'], signal: this.#stop.signal })) {
        // Dispatch without waiting: the iterator marks the row consumed when the next one is asked for.
        if (m.status !== 'ok') continue
        if (m.meta?.rpc === 'req') void this.#serve(m)
        else this.#answered(m)
      }
    } catch {
      // The store closed under the reader (the peer is shutting down): nothing more to read.
    }
  }

  async #serve(m: InboundMessage): Promise<void> {
    const key = `${toHex(m.from)}:${m.clientMessageId}`
    if (this.#answers.has(key) || (await this.#recall(m.from, m.clientMessageId, key))) {
      await this.#resend(m.from, key)
      return
    }
    if (this.#answers.has(key)) {
      await this.#resend(m.from, key) // a copy that came while the store was read
      return
    }
    this.#answers.set(key, 'running')
    try {
      // Recorded before the handler runs: a crash from here on makes a retry `interrupted`, not a rerun.
      await this.#record(m.from, m.clientMessageId, undefined)
    } catch (err) {
      this.#answers.delete(key)
      await this.#sendAnswer(m.from, errPayload(err), { rpc: 'err', correlationId: m.clientMessageId })
      return
    }
    const req = isReq(m.payload) ? m.payload : undefined
    const method = req?.m
    const timeoutMs = m.meta?.timeoutMs ?? RPC_DEFAULT_TIMEOUT_MS
    const handler = this.#handlers.get(method) ?? this.#handlers.get(undefined)
    let payload: RpcResPayload | RpcErrPayload
    let kind: 'res' | 'err'
    try {
      if (req === undefined) {
        throw new MeshError('MESH_ERR_INVALID_ENVELOPE', 'an rpc request payload is {m?, p}')
      }
      if (handler === undefined) {
        throw new MeshError('MESH_ERR_RPC_NO_HANDLER', `no handler for ${method ?? 'the default method'}`, {
          details: method === undefined ? {} : { method },
        })
      }
      const ctx: RpcContext = {
        from: m.from,
        id: m.clientMessageId,
        method,
        via: m.via,
        signal: AbortSignal.timeout(timeoutMs),
      }
      payload = { p: (await handler(req.p, ctx)) ?? null }
      kind = 'res'
    } catch (err) {
      payload = errPayload(err)
      kind = 'err'
    }
    const meta: Meta = { rpc: kind, correlationId: m.clientMessageId }
    const answer = { payload, meta, at: this.#now() }
    this.#remember(key, answer)
    try {
      await this.#record(m.from, m.clientMessageId, answer)
    } catch {
      // Not kept: the caller still gets this answer; a retry after a restart would be `interrupted`.
    }
    await this.#sendAnswer(m.from, payload, meta)
  }

  /** A request came again (a retry the inbox deduped): re-send the answer the caller lost. */
  #duplicate(m: InboundMessage): void {
    if (m.channel !== 'rpc' || m.meta?.rpc !== 'req') return
    const key = `${toHex(m.from)}:${m.clientMessageId}`
    void (async () => {
      if (!this.#answers.has(key)) await this.#recall(m.from, m.clientMessageId, key)
      await this.#resend(m.from, key)
    })().catch(() => undefined)
  }

  /**
   * Looks a request up in the store (durable stores only) and puts what it finds in the memory map:
   * its answer, or, for a row without one that this process is not running, the `interrupted` error
   * (kept in the store too, so every later copy gets the same answer). True when something was found.
   */
  async #recall(from: Uint8Array, id: string, key: string): Promise<boolean> {
    if (this.#store === undefined) return false
    let row
    try {
      row = await this.#store.getRpcAnswer(this.#peer.mesh, from, id)
    } catch {
      return false
    }
    const now = this.#now()
    if (row === undefined || row.expiresAt <= now) return false
    // Set while we read: this process runs it, or recalled it already.
    if (this.#answers.has(key)) return true
    if (row.answer !== undefined) {
      const saved = decode(row.answer) as { payload: RpcResPayload | RpcErrPayload; meta: Meta; at: number }
      this.#remember(key, saved)
      return true
    }
    const answer: Answer = {
      payload: {
        code: 'MESH_ERR_RPC_HANDLER',
        message: RPC_INTERRUPTED_MESSAGE,
        details: { interrupted: true, id },
      },
      meta: { rpc: 'err', correlationId: id },
      at: now,
    }
    this.#remember(key, answer)
    await this.#record(from, id, answer).catch(() => undefined)
    return true
  }

  /** Writes the request's record (no answer yet, or its answer) when the store is durable. */
  async #record(from: Uint8Array, correlationId: string, answer: Answer | undefined): Promise<void> {
    if (this.#store === undefined) return
    await this.#store.putRpcAnswer({
      mesh: this.#peer.mesh,
      from: Uint8Array.from(from),
      correlationId,
      expiresAt: (answer?.at ?? this.#now()) + this.#cacheTtlMs,
      ...(answer !== undefined && { answer: encode(answer) }),
    })
  }

  async #resend(from: Uint8Array, key: string): Promise<void> {
    const answer = this.#answers.get(key)
    // Still running: its answer goes out when it returns. Unknown: forgotten (past the TTL, or after a
    // restart with a volatile store); the caller times out rather than running the handler twice.
    if (answer === undefined || answer === 'running') return
    if (this.#now() - answer.at > this.#cacheTtlMs) {
      this.#answers.delete(key)
      return
    }
    await this.#sendAnswer(from, answer.payload, answer.meta)
  }

  async #sendAnswer(to: Uint8Array, payload: RpcResPayload | RpcErrPayload, meta: Meta): Promise<void> {
    if (this.#closed) return
    try {
      // A fresh id each time: a re-sent answer must not be deduped away by the caller's inbox.
      await this.#peer.send(to, payload, { channel: 'rpc', meta })
    } catch {
      // The caller's key is no longer vouched for, or the peer closed: nobody to answer.
    }
  }

  #answered(m: InboundMessage): void {
    const id = m.meta?.correlationId
    if (id === undefined) return
    const pending = this.#pending.get(id)
    const from = toHex(m.from)
    // Only the key the request went to can answer it.
    if (pending === undefined || pending.to !== from) {
      this.#keepOrphan(`${from}:${id}`, m)
      return
    }
    this.#orphans.delete(`${from}:${id}`)
    if (m.meta?.rpc === 'res') this.#settle(id, undefined, isRes(m.payload) ? m.payload.p : m.payload)
    else {
      const wire = isErr(m.payload)
        ? m.payload
        : { code: 'MESH_ERR_RPC_HANDLER', message: 'the callee answered err without an error' }
      this.#settle(id, new RpcRemoteError(wire))
    }
  }

  #settle(id: string, err: unknown, value?: unknown): void {
    const pending = this.#pending.get(id)
    if (pending === undefined) return
    this.#pending.delete(id)
    if (err !== undefined) pending.reject(err)
    else pending.resolve(value)
  }

  #remember(key: string, answer: Answer): void {
    this.#answers.set(key, answer)
    // Maps iterate in insertion order: the first keys are the oldest answers.
    for (const [k, v] of this.#answers) {
      if (this.#answers.size <= this.#cacheSize && v !== 'running' && this.#now() - v.at <= this.#cacheTtlMs)
        break
      if (v === 'running') continue
      this.#answers.delete(k)
    }
  }

  #keepOrphan(key: string, message: InboundMessage): void {
    const now = this.#now()
    this.#orphans.set(key, { message, at: now })
    for (const [k, v] of this.#orphans) {
      if (this.#orphans.size <= 1_000 && now - v.at <= this.#orphanTtlMs) break
      this.#orphans.delete(k)
    }
  }
}

const RECIPIENT_FAILURES = {
  undecryptable: 'MESH_ERR_UNDECRYPTABLE',
  rejected: 'MESH_ERR_HEADER_MISMATCH',
  dropped_revoked: 'MESH_ERR_REVOKED',
  expired: 'MESH_ERR_EXPIRED',
} as const

/**
 * Why a sent row will never reach `to` (hex): it went `dead` (its last error's code), or the recipient
 * refused it or lost it; undefined while it may still arrive. Streams use it too.
 */
export function deliveryFailure(row: OutboxRow, to: string): MeshError | undefined {
  if (row.state === 'dead') {
    const code =
      row.lastError !== undefined && isMeshErrorCode(row.lastError.code)
        ? row.lastError.code
        : 'MESH_ERR_INTERNAL'
    return new MeshError(code, `message ${row.id} went dead: ${row.lastError?.message ?? 'undeliverable'}`, {
      details: { id: row.id, state: row.state },
    })
  }
  const state = row.recipients?.[to]
  if (state === undefined || !(state in RECIPIENT_FAILURES)) return undefined
  const code = RECIPIENT_FAILURES[state as keyof typeof RECIPIENT_FAILURES]
  return new MeshError(code, `the recipient reported message ${row.id} ${state}`, {
    details: { id: row.id, recipientState: state },
  })
}

function errPayload(err: unknown): RpcErrPayload {
  if (isMeshError(err)) {
    return {
      code: err.code,
      message: err.message,
      ...(err.details !== undefined && { details: err.details }),
    }
  }
  const message = err instanceof Error ? err.message : String(err)
  return { code: 'MESH_ERR_RPC_HANDLER', message }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !(v instanceof Uint8Array) && !Array.isArray(v)
}

function isReq(v: unknown): v is RpcReqPayload {
  return isObject(v) && (v['m'] === undefined || typeof v['m'] === 'string')
}

function isRes(v: unknown): v is RpcResPayload {
  return isObject(v)
}

function isErr(v: unknown): v is RpcErrPayload {
  return isObject(v) && typeof v['code'] === 'string' && typeof v['message'] === 'string'
}
