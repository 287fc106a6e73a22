/**
 * The JSON shapes of the IPC API (a stable contract, like the CLI's `--json`): messages, outbox rows,
 * peers and errors. Bytes inside payloads become lowercase hex strings (JSON has no binary).
 */
import { toHex } from '../../../protocol/encoding.js'
import { ERROR_CODES, isMeshError, type MeshErrorCode } from '../../../protocol/errors.js'
import type { KnownPeer } from '../../directory.js'
import { toMessage, type InboundMessage } from '../../inbox.js'
import type { InboxRow, OutboxRow, OutboxVia } from '../../store/types.js'

/** A message as `GET /v1/inbox` and the SSE `message` event give it. */
export interface MessageJson {
  /** The position in the mesh's inbox: the cursor (`after`, SSE `id`). */
  seq: number
  from: string
  /** The key it was addressed to: the session's own key, or its member's key. */
  to: string
  /** True when addressed to the member key (every session of the member sees it). */
  toMember: boolean
  clientMessageId: string
  channel: string
  /** The opened payload; null when it did not open (`status` says why). */
  payload: unknown
  meta?: Record<string, unknown>
  status: string
  e2e: boolean
  via: string
  receivedAt: number
}

export function messageJson(m: InboundMessage, to: Uint8Array, memberPk: string): MessageJson {
  const toHexKey = toHex(to)
  return {
    seq: m.seq,
    from: toHex(m.from),
    to: toHexKey,
    toMember: toHexKey === memberPk,
    clientMessageId: m.clientMessageId,
    channel: m.channel,
    payload: jsonSafe(m.payload),
    ...(m.meta !== undefined && { meta: jsonSafe(m.meta) as Record<string, unknown> }),
    status: m.status,
    e2e: m.e2e,
    via: m.via,
    receivedAt: m.receivedAt,
  }
}

export function rowMessageJson(row: InboxRow, memberPk: string): MessageJson {
  return messageJson(toMessage(row), row.recipient, memberPk)
}

/** An outbox row as `GET /v1/messages/:id` and the SSE `delivery` event give it. */
export interface DeliveryJson {
  id: string
  mesh: string
  to: string
  channel: string
  state: OutboxRow['state']
  /** Per recipient (hex key): queued, delivered, undecryptable, rejected, … */
  recipients: Record<string, string>
  attempts: number
  lastError?: { code: string; message: string }
  /**
   * The transport that took it to `accepted` or `done` (`OutboxRow.via`): `p2p` (the data channel, acked
   * by the recipient) or `relay` (the coordinator: pushed live, or stored and pushed later). Absent while
   * nothing carried it yet, and on a row an older build finished.
   */
  via?: OutboxVia
  createdAt: number
  updatedAt: number
}

export function deliveryJson(row: OutboxRow): DeliveryJson {
  return {
    id: row.id,
    mesh: row.mesh,
    to: row.target,
    channel: row.channel,
    state: row.state,
    recipients: row.recipients ?? {},
    attempts: row.attempts,
    ...(row.lastError !== undefined && { lastError: row.lastError }),
    ...(row.via !== undefined && { via: row.via }),
    createdAt: row.createdAt,
    updatedAt: row.updatedAt,
  }
}

/** A verified peer as `GET /v1/peers` gives it. */
export function peerJson(p: KnownPeer): Record<string, unknown> {
  return {
    pk: toHex(p.pk),
    memberPk: toHex(p.memberPk),
    role: p.role,
    ...(p.sessionId !== undefined && { sessionId: p.sessionId }),
    ...(p.displayName !== undefined && { displayName: p.displayName }),
    online: p.online,
    ...(p.status !== undefined && { status: p.status }),
    ...(p.summary !== undefined && { summary: p.summary }),
  }
}

/** `{error: {code, message, details?}}` and the HTTP status for `err`. */
export function errorReply(err: unknown): { status: number; body: { error: Record<string, unknown> } } {
  if (isMeshError(err)) {
    const error: Record<string, unknown> = { code: err.code, message: err.message }
    if (err.details !== undefined) error['details'] = jsonSafe(err.details)
    return { status: statusOf(err.code), body: { error } }
  }
  const fst = err as { statusCode?: unknown; code?: unknown; message?: unknown }
  if (typeof fst.statusCode === 'number' && fst.statusCode >= 400 && fst.statusCode < 500) {
    const code: MeshErrorCode =
      fst.statusCode === 413 ? 'MESH_ERR_PAYLOAD_TOO_LARGE' : 'MESH_ERR_MALFORMED_FRAME'
    return {
      status: fst.statusCode,
      body: { error: { code, message: String(fst.message), details: { reason: String(fst.code) } } },
    }
  }
  const message = err instanceof Error ? err.message : String(err)
  return { status: 500, body: { error: { code: 'MESH_ERR_INTERNAL', message } } }
}

const STATUS: Partial<Record<MeshErrorCode, number>> = {
  MESH_ERR_UNAUTHENTICATED: 401,
  MESH_ERR_NOT_AUTHORIZED: 403,
  MESH_ERR_REVOKED: 403,
  MESH_ERR_UNKNOWN_SESSION: 404,
  MESH_ERR_UNKNOWN_MESSAGE: 404,
  MESH_ERR_UNKNOWN_KEY: 404,
  MESH_ERR_NOT_JOINED: 404,
  MESH_ERR_IDEMPOTENCY_CONFLICT: 409,
  MESH_ERR_SESSION_REPLACED: 409,
  MESH_ERR_PAYLOAD_TOO_LARGE: 413,
  // The session's outbox is at its limit: nothing was stored; `details.retryAfterMs` says when to retry.
  MESH_ERR_OUTBOX_FULL: 429,
  MESH_ERR_ENVELOPE_TOO_LARGE: 413,
  // Another process holds a store this request needed (WebDAV's "Locked").
  MESH_ERR_STORE_LOCKED: 423,
  MESH_ERR_INTERNAL: 500,
  MESH_ERR_SHUTTING_DOWN: 503,
  MESH_ERR_DISCONNECTED: 503,
  MESH_ERR_SESSION_UNAVAILABLE: 503,
  // The daemon's disk is full: nothing was stored, so never a 202 (WebDAV's "Insufficient Storage").
  MESH_ERR_STORE_FULL: 507,
}

function statusOf(code: MeshErrorCode): number {
  return STATUS[code] ?? (ERROR_CODES[code].permanent ? 400 : 503)
}

/** `value` with every byte array replaced by its hex (for JSON). */
export function jsonSafe(value: unknown): unknown {
  if (value instanceof Uint8Array) return toHex(value)
  if (Array.isArray(value)) return value.map(jsonSafe)
  if (typeof value === 'object' && value !== null) {
    const out: Record<string, unknown> = {}
    for (const [k, v] of Object.entries(value)) out[k] = jsonSafe(v)
    return out
  }
  return value
}

/** Whether inbox rows of `channel` reach IPC clients: messages, not the runtime's own rpc and stream rows. */
export function isIpcChannel(channel: string): boolean {
  return channel !== 'rpc' && channel !== 'stream'
}
