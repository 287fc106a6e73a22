/**
 * Every error agentmesh reports carries a stable `MESH_ERR_*` code. The code travels on the wire (in
 * `error` frames and per-recipient failures), to CLI output and to SDK callers; `docs/errors.md` lists
 * each one and a test keeps the two in step.
 */

/** The catalog: each code, whether retrying the same request can ever succeed, and a one-line summary. */
export const ERROR_CODES = {
  MESH_ERR_MALFORMED_FRAME: { permanent: true, summary: 'bytes are not a valid frame or fail its schema' },
  MESH_ERR_UNKNOWN_FRAME_TYPE: {
    permanent: true,
    summary: 'the frame type `t` is not one this protocol knows',
  },
  MESH_ERR_FRAME_TOO_LARGE: { permanent: true, summary: 'a frame is larger than 72 KiB' },
  MESH_ERR_INVALID_ENVELOPE: {
    permanent: true,
    summary: 'an envelope breaks a channel rule or a field limit',
  },
  MESH_ERR_ENVELOPE_TOO_LARGE: { permanent: true, summary: 'an encoded envelope is larger than 64 KiB' },
  MESH_ERR_PAYLOAD_TOO_LARGE: { permanent: true, summary: 'a payload is larger than 60 KiB; use a stream' },
  MESH_ERR_INVALID_MESSAGE_ID: { permanent: true, summary: 'a clientMessageId is not a ULID' },
  MESH_ERR_MALFORMED_KEY: {
    permanent: true,
    summary: 'a key is not 32 bytes (64 hex characters) or not a valid point',
  },
  MESH_ERR_BAD_SIGNATURE: {
    permanent: true,
    summary: 'a signature does not verify over the carried bytes (tampered)',
  },
  MESH_ERR_WRONG_SIGNER: {
    permanent: true,
    summary: 'a valid signature by a key other than the one required',
  },
  MESH_ERR_EXPIRED: { permanent: true, summary: 'an attestation, invite or signed offer is past its expiry' },
  MESH_ERR_TTL_TOO_LONG: {
    permanent: true,
    summary: 'an attestation expires further ahead than the cap allows',
  },
  MESH_ERR_WRONG_CHALLENGE: {
    permanent: true,
    summary: 'a hello or admin request signs another challenge nonce',
  },
  MESH_ERR_WRONG_MESH: { permanent: true, summary: 'a signed record names another mesh' },
  MESH_ERR_FIELD_MISMATCH: {
    permanent: true,
    summary: "a frame's outer fields differ from the fields it signed",
  },
  MESH_ERR_HEADER_MISMATCH: {
    permanent: true,
    summary: "an envelope's outer header differs from its sealed header",
  },
  MESH_ERR_UNDECRYPTABLE: { permanent: true, summary: 'a body does not open with the keys at hand' },
  MESH_ERR_NOT_AUTHORIZED: {
    permanent: true,
    summary: 'the signer lacks the role this record or request needs',
  },
  MESH_ERR_ROSTER_CONFLICT: {
    permanent: true,
    summary: 'a roster change contradicts the roster (adds a member twice, changes a non-member)',
  },
  MESH_ERR_OUT_OF_ORDER: {
    permanent: false,
    summary: 'a record arrived out of sequence; details give `expected` and `got`',
  },
  MESH_ERR_INVITE_EXHAUSTED: {
    permanent: true,
    summary: 'an invite has been used as many times as it allows',
  },
  MESH_ERR_UNSUPPORTED_VERSION: {
    permanent: true,
    summary: 'no protocol version in common; details list the supported range',
  },
  MESH_ERR_FROM_MISMATCH: {
    permanent: true,
    summary: "an envelope's `from` is not the key the connection authenticated",
  },
  MESH_ERR_STALE_ROSTER: {
    permanent: false,
    summary: 'a group envelope is sealed to another member set; details say who changed',
  },
  MESH_ERR_IDEMPOTENCY_CONFLICT: {
    permanent: true,
    summary: 'a clientMessageId was reused with a different envelope',
  },
  MESH_ERR_RATE_LIMITED: { permanent: false, summary: 'over the rate limit; retry after `retryAfterMs`' },
  MESH_ERR_QUEUE_FULL: {
    permanent: false,
    summary: "the recipient's offline queue is full; retry after `retryAfterMs`",
  },
  MESH_ERR_OUTBOX_FULL: {
    permanent: false,
    summary: "the sender's own outbox holds too many undelivered messages; retry after `retryAfterMs`",
  },
  MESH_ERR_SESSION_REPLACED: {
    permanent: true,
    summary: 'a newer connection of the same key replaced this one (close 4003)',
  },
  MESH_ERR_KEY_FILE: {
    permanent: true,
    summary: 'a key file is unreadable, malformed or readable by others',
  },
  MESH_ERR_CRYPTO_NOT_READY: { permanent: false, summary: 'crypto was used before `initCrypto()` resolved' },
  MESH_ERR_UNKNOWN_MESH: { permanent: true, summary: 'no mesh with this id exists on the coordinator' },
  MESH_ERR_MESH_EXISTS: { permanent: true, summary: 'a mesh with this id already exists' },
  MESH_ERR_UNKNOWN_KEY: {
    permanent: true,
    summary: 'the key is not a member of the mesh, nor a session or service of one',
  },
  MESH_ERR_REVOKED: { permanent: true, summary: 'the key, or the member behind it, was revoked' },
  MESH_ERR_HELLO_REQUIRED: {
    permanent: true,
    summary: 'a frame other than `hello` arrived before the hello was accepted',
  },
  MESH_ERR_HELLO_TIMEOUT: {
    permanent: true,
    summary: 'no valid hello arrived within the hello deadline (10 s)',
  },
  MESH_ERR_UNAUTHENTICATED: { permanent: true, summary: 'an HTTP request lacks a valid bearer token' },
  MESH_ERR_UNKNOWN_GROUP: {
    permanent: true,
    summary: 'the group named by a send does not exist in the mesh',
  },
  MESH_ERR_UNKNOWN_TOPIC: { permanent: true, summary: 'the topic does not exist in the mesh' },
  MESH_ERR_PEER_UNREACHABLE: {
    permanent: false,
    summary: 'the signaling peer is not online or does not advertise p2p',
  },
  MESH_ERR_SIGNAL_LIMIT: {
    permanent: false,
    summary: 'over the signaling limits (offers per minute, candidates per signaling id)',
  },
  MESH_ERR_PLAINTEXT_FORBIDDEN: {
    permanent: true,
    summary: "the mesh's policy forbids messages that are not end-to-end encrypted",
  },
  MESH_ERR_SHUTTING_DOWN: { permanent: false, summary: 'the coordinator is shutting down' },
  MESH_ERR_STORE_UNAVAILABLE: { permanent: false, summary: "the coordinator's store did not answer" },
  MESH_ERR_STORE_CLOSED: { permanent: false, summary: 'the store was used after it was closed' },
  MESH_ERR_STORE_LOCKED: {
    permanent: true,
    summary: 'the store is locked by another running process (a coordinator, a daemon or a `listen`)',
  },
  MESH_ERR_STORE_FULL: {
    permanent: false,
    summary: 'the disk under the runtime store is full; nothing was stored, retry once there is room',
  },
  MESH_ERR_SCHEMA_TOO_NEW: {
    permanent: true,
    summary: 'the database schema is newer than this coordinator knows',
  },
  MESH_ERR_TRANSPORT_CLOSED: { permanent: true, summary: 'the transport session is closed' },
  MESH_ERR_SIGNAL_TIMEOUT: {
    permanent: false,
    summary: 'the P2P handshake did not complete within its budget (2 s)',
  },
  MESH_ERR_P2P_REJECTED: {
    permanent: false,
    summary: 'the peer refused the P2P session (busy, declined, invalid or expired)',
  },
  MESH_ERR_DISCONNECTED: {
    permanent: false,
    summary: 'the runtime has no live coordinator connection right now; it reconnects by itself',
  },
  MESH_ERR_REQUEST_TIMEOUT: {
    permanent: false,
    summary: 'a request to the coordinator got no reply in time',
  },
  MESH_ERR_COORDINATOR_MISMATCH: {
    permanent: true,
    summary: "the coordinator's key is not the one pinned from the invite",
  },
  MESH_ERR_OUTBOX_EXPIRED: {
    permanent: true,
    summary: 'an outbox row reached its maximum age (6 days) undelivered and went dead',
  },
  MESH_ERR_TOO_MANY_ATTEMPTS: {
    permanent: true,
    summary: 'an outbox row was refused retryably 25 times and went dead',
  },
  MESH_ERR_RPC_TIMEOUT: {
    permanent: false,
    summary: 'an rpc call got no answer within its timeoutMs',
  },
  MESH_ERR_RPC_HANDLER: {
    permanent: false,
    summary: 'the rpc handler threw an error that carries no code of its own',
  },
  MESH_ERR_RPC_NO_HANDLER: {
    permanent: true,
    summary: 'the callee serves no handler for the rpc method named',
  },
  MESH_ERR_STREAM_ABORTED: {
    permanent: false,
    summary: 'the other end of a stream aborted it (the sender) or cancelled it (the receiver)',
  },
  MESH_ERR_STREAM_PROTOCOL: {
    permanent: true,
    summary: 'a stream chunk broke the rules: outside the granted window, after fin, or malformed',
  },
  MESH_ERR_STREAM_TIMEOUT: {
    permanent: false,
    summary: 'a stream saw no chunk (receiver) or no credit (sender) within its idle timeout',
  },
  MESH_ERR_NOT_JOINED: {
    permanent: true,
    summary: 'this home has not joined (or created) the mesh named',
  },
  MESH_ERR_ALREADY_JOINED: {
    permanent: true,
    summary: 'this home already holds a member key for the mesh (one join per mesh per home)',
  },
  MESH_ERR_COORDINATOR_UNREACHABLE: {
    permanent: false,
    summary: 'the coordinator did not answer an HTTP request (refused, unresolvable, timed out)',
  },
  MESH_ERR_WAIT_TIMEOUT: {
    permanent: false,
    summary: 'the awaited outcome did not come within the timeout; the message stays in the outbox',
  },
  MESH_ERR_DAEMON_RUNNING: {
    permanent: true,
    summary: 'a daemon already holds this home (its pid is in daemon.lock)',
  },
  MESH_ERR_DAEMON_NOT_RUNNING: {
    permanent: false,
    summary: 'no daemon runs on this home (or it does not answer on its socket)',
  },
  MESH_ERR_UNKNOWN_SESSION: {
    permanent: true,
    summary: 'the daemon has no registered session of that id (or the token belongs to none)',
  },
  MESH_ERR_SESSION_UNAVAILABLE: {
    permanent: false,
    summary:
      'a registered session (or its mesh) did not open in the daemon yet; it is retried in the background',
  },
  MESH_ERR_UNKNOWN_MESSAGE: {
    permanent: true,
    summary: "the session's outbox holds no message of that id",
  },
  MESH_ERR_INTERNAL: { permanent: false, summary: 'an unexpected coordinator failure' },
} as const satisfies Record<string, { permanent: boolean; summary: string }>

/** A stable error code. */
export type MeshErrorCode = keyof typeof ERROR_CODES

/**
 * What a sender does when the same bytes were refused with a code: the one table both senders follow,
 * the runtime's outbox (`peer-runtime/dispatch-result.ts`) and the relay transport's sessions
 * (`transports/ws-relay/session.ts`).
 *
 * - `wait`: not now, and nothing is wrong with the message (no link, no reply yet, over the rate
 *   limit): send the same bytes again later without using an attempt.
 * - `retry`: send the same bytes again later, using one of the sender's attempts (a full queue, a store
 *   that did not answer, a coordinator shutting down or failing).
 * - `final`: the same bytes can never succeed; the message fails with the code.
 */
export type RetryClass = 'wait' | 'retry' | 'final'

/** Codes of the `wait` class; every other code is `retry` when not permanent, else `final`. */
const WAIT_CODES: ReadonlySet<MeshErrorCode> = new Set<MeshErrorCode>([
  'MESH_ERR_DISCONNECTED',
  'MESH_ERR_REQUEST_TIMEOUT',
  'MESH_ERR_RATE_LIMITED',
  // Refused before anything was stored: nothing is wrong with the message, the outbox must drain first.
  'MESH_ERR_OUTBOX_FULL',
  // The coordinator connection closed under the request: the runtime dials a new one.
  'MESH_ERR_TRANSPORT_CLOSED',
])

/** The retry class of every code (see `RetryClass`). */
export const RETRY_CLASS: Readonly<Record<MeshErrorCode, RetryClass>> = Object.fromEntries(
  (Object.keys(ERROR_CODES) as MeshErrorCode[]).map((code) => [
    code,
    WAIT_CODES.has(code) ? 'wait' : ERROR_CODES[code].permanent ? 'final' : 'retry',
  ]),
) as Record<MeshErrorCode, RetryClass>

/** Extra facts an error carries on the wire (for example `retryAfterMs`, `supported`, `added`). */
export type ErrorDetails = Record<string, unknown>

/** The shape of an error as it travels inside an `error` frame. */
export interface WireError {
  code: string
  message: string
  permanent: boolean
  details?: ErrorDetails
}

/** The base of every agentmesh error: a message for people and a stable code for programs. */
export class MeshError extends Error {
  override readonly name: string = 'MeshError'
  readonly code: MeshErrorCode
  readonly details: ErrorDetails | undefined

  constructor(
    code: MeshErrorCode,
    message: string,
    options: { details?: ErrorDetails; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause })
    this.code = code
    this.details = options.details
  }

  /** True when repeating the same request can never succeed. */
  get permanent(): boolean {
    return ERROR_CODES[this.code].permanent
  }

  /** The error as an `error` frame carries it. */
  toWire(): WireError {
    const wire: WireError = { code: this.code, message: this.message, permanent: this.permanent }
    if (this.details !== undefined) wire.details = this.details
    return wire
  }

  /** Rebuilds an error received on the wire; an unknown code (from a newer peer) keeps its text. */
  static fromWire(wire: WireError): MeshError {
    const code = isMeshErrorCode(wire.code) ? wire.code : 'MESH_ERR_MALFORMED_FRAME'
    const message = code === wire.code ? wire.message : `${wire.code}: ${wire.message}`
    return new MeshError(code, message, wire.details === undefined ? {} : { details: wire.details })
  }
}

/** Narrows a string to a known code. */
export function isMeshErrorCode(code: string): code is MeshErrorCode {
  return Object.prototype.hasOwnProperty.call(ERROR_CODES, code)
}

/** True when `err` is a MeshError, optionally with the given code. */
export function isMeshError(err: unknown, code?: MeshErrorCode): err is MeshError {
  return err instanceof MeshError && (code === undefined || err.code === code)
}
