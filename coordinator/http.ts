/**
 * HTTP plumbing shared by the coordinator's routes: msgpack bodies (keys and signatures travel as
 * bytes, never base64), typed errors `{error: {code, message, details?}}` with a status per code, and
 * bearer tokens compared in constant time.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import {
  bytesEqualConstantTime,
  decode,
  encode,
  ERROR_CODES,
  hash,
  MeshError,
  utf8,
  type MeshErrorCode,
} from '../protocol/index.js'
import { toMeshError } from './connection.js'

export const MSGPACK = 'application/msgpack'

const STATUS: Partial<Record<MeshErrorCode, number>> = {
  MESH_ERR_UNAUTHENTICATED: 401,
  MESH_ERR_NOT_AUTHORIZED: 403,
  MESH_ERR_REVOKED: 403,
  MESH_ERR_PLAINTEXT_FORBIDDEN: 403,
  MESH_ERR_UNKNOWN_MESH: 404,
  MESH_ERR_MESH_EXISTS: 409,
  MESH_ERR_ROSTER_CONFLICT: 409,
  MESH_ERR_IDEMPOTENCY_CONFLICT: 409,
  MESH_ERR_INVITE_EXHAUSTED: 409,
  // Retryable conflicts and limits are the client's to resolve, never "service unavailable".
  MESH_ERR_STALE_ROSTER: 409,
  MESH_ERR_OUT_OF_ORDER: 409,
  MESH_ERR_FRAME_TOO_LARGE: 413,
  MESH_ERR_ENVELOPE_TOO_LARGE: 413,
  MESH_ERR_RATE_LIMITED: 429,
  MESH_ERR_QUEUE_FULL: 429,
  MESH_ERR_SIGNAL_LIMIT: 429,
  MESH_ERR_INTERNAL: 500,
  MESH_ERR_STORE_UNAVAILABLE: 503,
  MESH_ERR_STORE_CLOSED: 503,
  MESH_ERR_SHUTTING_DOWN: 503,
}

/** The HTTP status of an error code: its own, else 400 for permanent errors and 503 otherwise. */
export function statusOf(code: MeshErrorCode): number {
  return STATUS[code] ?? (ERROR_CODES[code].permanent ? 400 : 503)
}

/** Registers the msgpack body parser and the typed error handler. */
export function installHttp(app: FastifyInstance): void {
  app.addContentTypeParser(MSGPACK, { parseAs: 'buffer', bodyLimit: 1024 * 1024 }, (_req, body, done) => {
    try {
      done(null, decode(body as Buffer))
    } catch (err) {
      done(err as Error, undefined)
    }
  })
  app.setErrorHandler((err, req, reply) => {
    const meshErr = fromFastify(err)
    if (meshErr.code === 'MESH_ERR_INTERNAL') req.log.error({ err }, 'request failed')
    // HTTP refusals count beside the socket ones (connection.ts counts those in sendError).
    app.mesh.metrics.rejects.inc({ code: meshErr.code })
    void send(req, reply, statusOf(meshErr.code), { error: meshErr.toWire() })
  })
}

/** Fastify's own client errors (bad JSON, an oversize or unsupported body) as typed MeshErrors. */
function fromFastify(err: unknown): MeshError {
  if (err instanceof MeshError) return err
  const statusCode = (err as { statusCode?: number }).statusCode
  if (statusCode === undefined || statusCode >= 500) return toMeshError(err)
  const message = (err as Error).message
  if (statusCode === 413) return new MeshError('MESH_ERR_FRAME_TOO_LARGE', message, { cause: err })
  return new MeshError('MESH_ERR_MALFORMED_FRAME', message, { cause: err })
}

/** Replies in msgpack when the client speaks it (its body or Accept header), else JSON. */
export function send(req: FastifyRequest, reply: FastifyReply, status: number, body: unknown): FastifyReply {
  const wantsMsgpack =
    (req.headers['content-type'] ?? '').startsWith(MSGPACK) || (req.headers.accept ?? '').includes(MSGPACK)
  reply.code(status)
  if (wantsMsgpack) return reply.type(MSGPACK).send(Buffer.from(encode(body)))
  return reply.type('application/json').send(JSON.stringify(body, jsonBytes))
}

/** Bytes as hex. `this[key]` is the value before `toJSON` ran: a Buffer would arrive as `{type, data}`. */
function jsonBytes(this: Record<string, unknown>, key: string, value: unknown): unknown {
  const raw = this[key]
  return raw instanceof Uint8Array ? Buffer.from(raw).toString('hex') : value
}

/** The bearer token of a request, if any. */
export function bearer(req: FastifyRequest): string | undefined {
  const h = req.headers.authorization
  // The auth scheme is case-insensitive (RFC 9110 §11.1): `bearer x` is as good as `Bearer x`.
  if (h === undefined || !/^bearer /i.test(h)) return undefined
  const token = h.slice('Bearer '.length).trim()
  return token.length > 0 ? token : undefined
}

/** Hash of a token as stored: tokens themselves are never kept. */
export function tokenHash(token: string): Uint8Array {
  return hash(utf8(token))
}

/** True when `token` matches `expected`, in constant time. */
export function tokenMatches(token: string | undefined, expected: string | undefined): boolean {
  if (token === undefined || expected === undefined) return false
  return bytesEqualConstantTime(tokenHash(token), tokenHash(expected))
}
