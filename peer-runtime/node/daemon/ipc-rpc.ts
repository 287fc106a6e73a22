/**
 * `POST /v1/rpc`: a request from the session to a peer through the runtime's rpc endpoint
 * (peer-runtime/rpc.ts), answered once the callee answered:
 *
 *     POST /v1/rpc   session   {to, method?, params?, timeoutMs?, id?} → 200 {id, result}
 *
 * The callee's `err` answer is the error reply with the callee's code (`MESH_ERR_RPC_NO_HANDLER`, …) and
 * `details.remote: true`; no answer within `timeoutMs` (default 30 s, at most 10 min) is
 * `MESH_ERR_RPC_TIMEOUT` (503). A request is sent once: the HTTP request is not re-sent on a lost answer
 * unless it carries its `id` (a ULID), which the endpoint takes as the same call.
 *
 * The session's `Peer` gets the runtime's rpc endpoint on the first call, and an endpoint also answers
 * requests to its key: with no handler registered, `MESH_ERR_RPC_NO_HANDLER`. A session that serves rpc
 * itself over the IPC (reading `rpc` requests from its events, answering with `POST /v1/send`) must not
 * call this route, or its callers may get that answer first.
 */
import { fromHex } from '../../../protocol/encoding.js'
import { MeshError } from '../../../protocol/errors.js'
import { isPlainObject } from '../../../protocol/schema.js'
import { isUlid, ulidFactory } from '../../../protocol/ulid.js'
import type { Peer } from '../../peer.js'
import { rpcEndpoint, RpcRemoteError, RPC_DEFAULT_TIMEOUT_MS } from '../../rpc.js'
import { jsonSafe } from './ipc-json.js'

/** The longest `timeoutMs` a request through the daemon may ask for. */
export const MAX_RPC_TIMEOUT_MS = 10 * 60 * 1000

/** What `POST /v1/rpc` answers. */
export interface RpcAnswerJson {
  /** The request's id (its clientMessageId). */
  id: string
  /** The handler's return value (byte arrays as hex). */
  result: unknown
}

const nextId = ulidFactory()

/** Calls `body.method` on `body.to` from `peer`; throws the callee's error or a timeout. */
export async function rpcCall(peer: Peer, body: unknown, signal: AbortSignal): Promise<RpcAnswerJson> {
  if (!isPlainObject(body)) throw malformed('the body is {to, method?, params?, timeoutMs?}', '')
  const to = typeof body['to'] === 'string' ? fromHex(body['to']) : null
  if (to === null || to.length !== 32) throw malformed('`to` is a key, 64 hex characters', 'to')
  const method = body['method']
  if (method !== undefined && typeof method !== 'string') throw malformed('`method` is a string', 'method')
  const timeoutMs = body['timeoutMs'] ?? RPC_DEFAULT_TIMEOUT_MS
  if (typeof timeoutMs !== 'number' || !Number.isSafeInteger(timeoutMs) || timeoutMs < 1) {
    throw malformed('`timeoutMs` is a positive integer', 'timeoutMs')
  }
  if (timeoutMs > MAX_RPC_TIMEOUT_MS) {
    throw malformed(`\`timeoutMs\` is at most ${MAX_RPC_TIMEOUT_MS}`, 'timeoutMs')
  }
  const given = body['id']
  if (given !== undefined && (typeof given !== 'string' || !isUlid(given))) {
    throw malformed('`id` is a ULID', 'id')
  }
  const id = given ?? nextId()
  try {
    const result = await rpcEndpoint(peer).call(to, body['params'] ?? null, {
      id,
      timeoutMs,
      signal,
      ...(method !== undefined && { method }),
    })
    // Bytes in the answer become hex, as everywhere in the IPC's JSON.
    return { id, result: jsonSafe(result ?? null) }
  } catch (err) {
    if (!(err instanceof RpcRemoteError)) throw err
    // The callee's verdict, kept apart from the daemon's own refusals by `remote`.
    throw new MeshError(err.code, err.message, {
      details: { ...err.details, remote: true, remoteCode: err.remoteCode, id },
    })
  }
}

function malformed(message: string, path: string): MeshError {
  return new MeshError('MESH_ERR_MALFORMED_FRAME', message, { details: { path } })
}
