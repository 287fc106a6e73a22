/**
 * The daemon's IPC: one Fastify app served on two listeners, `daemon.sock` (a Unix socket, 0600) and
 * `127.0.0.1:<port>`. Every request carries `Authorization: Bearer <token>`, on both: the admin token
 * (`daemon.token`) manages sessions, a session token scopes everything else to that session.
 *
 *     POST   /v1/sessions         admin    {mesh?, sessionId, displayName?} → {token, sessionPk, …}
 *     GET    /v1/sessions         admin    the registered sessions
 *     DELETE /v1/sessions/:id     admin    ?mesh= when the id is in several meshes → 204
 *     GET    /v1/status           admin    pid, port, meshes and sessions with their state (types.ts)
 *     POST   /v1/shutdown         admin    → 202, then the daemon closes
 *     POST   /v1/send             session  {to, payload | text, id?, channel?, meta?} → 202 SendAnswer
 *                                           (429 MESH_ERR_OUTBOX_FULL {retryAfterMs} at the outbox's limit)
 *                                  [send, …] (≤ 1,000) → 200 {results: [{status, …answer | error}]}
 *     GET    /v1/inbox            session  ?after=<seq>&limit= → {messages, next}
 *     GET    /v1/peers            session  ?offline=true → {peers}
 *     GET    /v1/messages/:id     session  the outbox row's state and recipients
 *     GET    /v1/outbox           session  ?state=pending,dead&limit= → {rows} (ipc-outbox.ts)
 *     POST   /v1/rpc              session  {to, method?, params?, timeoutMs?, id?} → {id, result} (ipc-rpc.ts)
 *     GET    /v1/events           session  server-sent events (ipc-events.ts)
 *
 * The TCP listener also refuses a `Host` other than loopback (DNS rebinding) and any request with an
 * `Origin` (a web page): a browser tab must not reach the daemon.
 */
import { chmod, unlink } from 'node:fs/promises'
import { createServer, type IncomingMessage, type Server } from 'node:http'
import Fastify, { type FastifyReply, type FastifyRequest } from 'fastify'
import { MeshError } from '../../../protocol/errors.js'
import { serveEvents, type EventStream } from './ipc-events.js'
import { deliveryJson, errorReply, isIpcChannel, peerJson, rowMessageJson } from './ipc-json.js'
import { errorFields } from './log.js'
import { listOutboxRows, parseOutboxStates } from './ipc-outbox.js'
import { rpcCall } from './ipc-rpc.js'
import type { Caller, DaemonSession, IpcHost } from './types.js'

/** The running listeners. */
export interface IpcServer {
  port: number
  close(): Promise<void>
}

declare module 'fastify' {
  interface FastifyRequest {
    caller: Caller | undefined
  }
}

const LOOPBACK_HOSTS = new Set(['127.0.0.1', 'localhost', '[::1]'])

/** Starts both listeners for `daemon`. */
export async function startIpcServer(
  daemon: IpcHost,
  o: { socketPath: string; port: number },
): Promise<IpcServer> {
  const viaSocket = new WeakSet<IncomingMessage>()
  const streams = new Set<EventStream>()
  const app = Fastify({ logger: false, bodyLimit: 1024 * 1024, return503OnClosing: true })
  app.decorateRequest('caller', undefined)

  app.setErrorHandler((err, req, reply) => {
    const { status, body } = errorReply(err)
    // A failure of ours (not the caller's, not a session waiting to open): a log line, without the body.
    if (status >= 500 && status !== 503) {
      daemon.log.error(
        { method: req.method, route: req.routeOptions.url, status, ...errorFields(err) },
        'ipc error',
      )
    }
    const retryAfterMs = (body.error['details'] as { retryAfterMs?: unknown } | undefined)?.retryAfterMs
    if (status === 429 && typeof retryAfterMs === 'number') {
      void reply.header('retry-after', String(Math.max(1, Math.ceil(retryAfterMs / 1000))))
    }
    void reply.code(status).type('application/json').send(JSON.stringify(body))
  })
  app.setNotFoundHandler((req, reply) => {
    const { status, body } = errorReply(
      new MeshError('MESH_ERR_MALFORMED_FRAME', `no route ${req.method} ${req.url}`, {
        details: { reason: 'not_found' },
      }),
    )
    void reply.code(status === 400 ? 404 : status).send(body)
  })

  app.addHook('onRequest', async (req, reply) => {
    if (!viaSocket.has(req.raw)) {
      const host = (req.headers.host ?? '').replace(/:\d+$/, '')
      if (!LOOPBACK_HOSTS.has(host))
        return refuse(reply, 403, 'MESH_ERR_NOT_AUTHORIZED', 'a loopback Host only')
    }
    if (req.headers.origin !== undefined) {
      return refuse(reply, 403, 'MESH_ERR_NOT_AUTHORIZED', 'requests from web pages are refused')
    }
    const m = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '')
    req.caller = daemon.authenticate(m?.[1])
    if (req.caller === undefined) {
      void reply.header('www-authenticate', 'Bearer')
      return refuse(reply, 401, 'MESH_ERR_UNAUTHENTICATED', 'Authorization: Bearer <token> is required')
    }
    return undefined
  })

  // ── admin ──
  app.post('/v1/sessions', async (req, reply) => {
    admin(req)
    const b = (req.body ?? {}) as Record<string, unknown>
    const sessionId = b['sessionId']
    if (typeof sessionId !== 'string') throw malformed('`sessionId` is a string', 'sessionId')
    for (const k of ['mesh', 'displayName']) {
      if (b[k] !== undefined && typeof b[k] !== 'string') throw malformed(`\`${k}\` is a string`, k)
    }
    const registered = await daemon.register({
      sessionId,
      ...(typeof b['mesh'] === 'string' && { mesh: b['mesh'] }),
      ...(typeof b['displayName'] === 'string' && { displayName: b['displayName'] }),
    })
    return reply.code(201).send(registered)
  })
  app.get('/v1/sessions', async (req) => {
    admin(req)
    return { sessions: daemon.status().sessions }
  })
  app.delete<{ Params: { id: string }; Querystring: { mesh?: string } }>(
    '/v1/sessions/:id',
    async (req, reply) => {
      admin(req)
      await daemon.unregister({
        sessionId: req.params.id,
        ...(req.query.mesh !== undefined && { mesh: req.query.mesh }),
      })
      return reply.code(204).send()
    },
  )
  app.get('/v1/status', async (req) => {
    admin(req)
    return daemon.status()
  })
  app.post('/v1/shutdown', async (req, reply) => {
    admin(req)
    reply.raw.once('finish', () => void daemon.close())
    return reply.code(202).send({ stopping: true })
  })

  // ── session ──
  app.post('/v1/send', async (req, reply) => {
    const s = sessionOf(req)
    if (Array.isArray(req.body)) {
      // Many sends in one request, each answered as its own request would have been.
      const results = await s.sender.sendMany(req.body, errorReply, AbortSignal.timeout(60_000))
      return reply.code(200).send({ results })
    }
    const { answer, replay } = await s.sender.send(req.body, AbortSignal.timeout(60_000))
    if (replay) void reply.header('idempotent-replay', 'true')
    return reply.code(202).send(answer)
  })
  app.get<{ Querystring: { after?: string; limit?: string; session?: string } }>('/v1/inbox', async (req) => {
    const s = sessionOf(req)
    const after = cursor(req.query.after, 'after') ?? 0
    const limit = Math.min(cursor(req.query.limit, 'limit') ?? 100, 1000)
    const rows = await daemon.inboxOf(s).readInbox({
      mesh: s.mesh.config.mesh,
      recipients: [s.presence.identity.publicKey, s.mesh.control.identity.publicKey],
      afterSeq: after,
      limit,
    })
    // rpc and stream rows are left out (see ipc-events.ts); `next` still moves past them.
    const messages = rows
      .filter((r) => isIpcChannel(r.channel))
      .map((r) => rowMessageJson(r, s.mesh.config.memberPk))
    return { messages, next: rows.at(-1)?.seq ?? after }
  })
  app.get<{ Querystring: { offline?: string; session?: string } }>('/v1/peers', async (req) => {
    const s = sessionOf(req)
    const peers = await s.presence.peer.listPeers({
      includeDaemons: true,
      includeOffline: req.query.offline === 'true' || req.query.offline === '1',
      signal: AbortSignal.timeout(15_000),
    })
    return { peers: peers.map(peerJson) }
  })
  app.get<{ Params: { id: string }; Querystring: { session?: string } }>('/v1/messages/:id', async (req) => {
    const s = sessionOf(req)
    const row = await s.presence.peer.status(req.params.id)
    if (row === undefined) {
      throw new MeshError('MESH_ERR_UNKNOWN_MESSAGE', `this session sent no message ${req.params.id}`, {
        details: { id: req.params.id },
      })
    }
    return deliveryJson(row)
  })
  app.get<{ Querystring: { state?: string; limit?: string; session?: string } }>(
    '/v1/outbox',
    async (req) => {
      const s = sessionOf(req)
      const states = parseOutboxStates(req.query.state)
      const limit = Math.min(cursor(req.query.limit, 'limit') ?? 100, 10_000)
      return { rows: await listOutboxRows(s.presence.store, states, limit) }
    },
  )
  app.post('/v1/rpc', async (req, reply) => {
    const s = sessionOf(req)
    // The caller hanging up ends the wait (the request stays sent; an answer that comes later is kept
    // by the endpoint for a call repeated with the same id).
    const gone = new AbortController()
    reply.raw.once('close', () => {
      if (!reply.raw.writableFinished) {
        gone.abort(new MeshError('MESH_ERR_TRANSPORT_CLOSED', 'the caller hung up'))
      }
    })
    return await rpcCall(s.presence.peer, req.body, gone.signal)
  })
  app.get<{ Querystring: { after?: string; session?: string } }>('/v1/events', async (req, reply) => {
    const s = sessionOf(req)
    const lastId = req.headers['last-event-id']
    const after = cursor(req.query.after ?? (typeof lastId === 'string' ? lastId : undefined), 'after')
    reply.hijack()
    const holder: { stream?: EventStream; ended?: boolean } = {}
    const stream = await serveEvents(daemon, s, reply.raw, after, () => {
      holder.ended = true
      if (holder.stream !== undefined) streams.delete(holder.stream)
    })
    holder.stream = stream
    if (holder.ended !== true) streams.add(stream)
  })

  await app.ready()

  // The Unix socket: a stale file from a killed daemon is ours to remove (we hold the home's lock).
  await unlink(o.socketPath).catch(() => undefined)
  const unix: Server = createServer((req, res) => {
    viaSocket.add(req)
    app.routing(req, res)
  })
  const mask = process.umask(0o177) // created 0600 from the start, not chmod-ed after a window
  try {
    await new Promise<void>((resolve, reject) => {
      unix.once('error', reject)
      unix.listen(o.socketPath, () => {
        unix.off('error', reject)
        resolve()
      })
    })
  } finally {
    process.umask(mask)
  }
  await chmod(o.socketPath, 0o600)
  try {
    await app.listen({ host: '127.0.0.1', port: o.port })
  } catch (err) {
    await new Promise((resolve) => unix.close(resolve))
    throw err
  }
  const address = app.server.address()
  const port = typeof address === 'object' && address !== null ? address.port : o.port

  let closing: Promise<void> | undefined
  return {
    port,
    close: () =>
      (closing ??= (async () => {
        for (const s of [...streams]) s.end()
        const unixClosed = new Promise((resolve) => unix.close(resolve))
        unix.closeAllConnections()
        await Promise.all([unixClosed, app.close()])
        await unlink(o.socketPath).catch(() => undefined)
      })()),
  }

  function sessionOf(req: FastifyRequest): DaemonSession {
    const c = req.caller
    // A registered session that is not open (retried) or stopped (revoked): its own error, with its code.
    if (c?.kind === 'unusable') throw c.error
    if (c?.kind !== 'session') {
      throw new MeshError('MESH_ERR_NOT_AUTHORIZED', 'this route needs a session token (POST /v1/sessions)')
    }
    const q = req.query as { session?: string } | undefined
    if (q?.session !== undefined && q.session !== c.session.registration.sessionId) {
      throw new MeshError('MESH_ERR_NOT_AUTHORIZED', "a session token reads only its own session's data", {
        details: { session: q.session },
      })
    }
    return c.session
  }
}

function admin(req: FastifyRequest): void {
  if (req.caller?.kind !== 'admin') {
    throw new MeshError('MESH_ERR_NOT_AUTHORIZED', 'this route needs the admin token (daemon.token)')
  }
}

function refuse(reply: FastifyReply, status: number, code: string, message: string): FastifyReply {
  return reply
    .code(status)
    .type('application/json')
    .send(JSON.stringify({ error: { code, message } }))
}

function malformed(message: string, path: string): MeshError {
  return new MeshError('MESH_ERR_MALFORMED_FRAME', message, { details: { path } })
}

/** A non-negative integer query parameter, or undefined. */
function cursor(text: string | undefined, name: string): number | undefined {
  if (text === undefined || text === '') return undefined
  if (!/^\d{1,15}$/.test(text)) throw malformed(`\`${name}\` is a non-negative integer`, name)
  return Number(text)
}
