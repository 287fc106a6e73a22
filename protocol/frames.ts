/**
 * Control frames: every frame the coordinator and peers speak, one schema each. A frame is one msgpack map
 * `{t: <type>, …}`. Requests carry `reqId` and each request type has exactly one reply type (or `error`),
 * which echoes the `reqId`: replies are matched by id, never by arrival order.
 *
 * `decodeFrame` never throws anything but a `MeshError`: `MESH_ERR_FRAME_TOO_LARGE` above 72 KiB (checked
 * before decoding), `MESH_ERR_MALFORMED_FRAME` for bad msgpack or a schema violation, and
 * `MESH_ERR_UNKNOWN_FRAME_TYPE` for a `t` we do not know. When the bad frame carried a readable `reqId`,
 * the error's `details.reqId` holds it so the reply can be correlated.
 */
import { adminRequestSchema } from './admin.js'
import { decode, encode } from './codec.js'
import { MeshError } from './errors.js'
import { helloBodySchema } from './hello.js'
import { signerSignedSchema } from './invite.js'
import { keySchema, localIdSchema, nameSchema, ulidSchema } from './ids.js'
import { MAX_FRAME_BYTES } from './limits.js'
import {
  any,
  arr,
  bin,
  bool,
  isPlainObject,
  obj,
  oneOf,
  opt,
  parse,
  record,
  str,
  uint,
  type Infer,
  type Schema,
} from './schema.js'
import { signedSchema } from './signing.js'

const reqId = uint({ max: 2 ** 32 - 1 })
const envelopeBytes = bin({ min: 1, max: MAX_FRAME_BYTES })
const statusSchema = oneOf(['idle', 'working', 'dnd'] as const)
const roleSchema = oneOf(['control-plane', 'session', 'service'] as const)
const versionRange = obj({ min: uint({ max: 65535 }), max: uint({ max: 65535 }) })
const features = arr(str({ max: 64 }), { max: 64 })

/**
 * One token bucket as `hello_ack.limits.rate` announces it: at most `messageBurst` messages and
 * `byteBurst` bytes at once, refilled at `messagesPerSecond` and `bytesPerSecond` (whole numbers; a
 * coordinator rounds its rates down, so a sender pacing by them stays inside the real bucket).
 */
export const rateBucketSchema = obj({
  messageBurst: uint(),
  messagesPerSecond: uint(),
  byteBurst: uint(),
  bytesPerSecond: uint(),
})
export type RateBucket = Infer<typeof rateBucketSchema>

/** Per-recipient outcome of a send, as the sender sees it. */
export const RECIPIENT_STATES = [
  'delivered',
  'queued',
  'undecryptable',
  'rejected',
  'dropped_revoked',
  'expired',
] as const
/** How a receiver acknowledges a delivery. */
export const ACK_STATUSES = ['ok', 'duplicate', 'undecryptable', 'rejected'] as const

/** A presence as discovery reports it, with the signed proofs a runtime verifies before sealing to it. */
export const peerRecordSchema = obj({
  pk: keySchema,
  memberPk: keySchema,
  role: roleSchema,
  sessionId: opt(localIdSchema),
  displayName: opt(str({ max: 128 })),
  status: statusSchema,
  summary: opt(str({ max: 256 })),
  online: bool(),
  nodeId: opt(str({ max: 64 })),
  leaseUntil: opt(uint()),
  capabilities: opt(bin({ max: 4096 })),
  attestation: opt(signedSchema),
  /** The member's roster proofs: roster records, or the invite and join signatures of its join. */
  proofs: opt(
    arr(obj({ kind: oneOf(['roster', 'invite', 'join'] as const), ...signerSignedSchema.shape }), {
      max: 16,
    }),
  ),
})
export type PeerRecord = Infer<typeof peerRecordSchema>

const sdp = str({ max: 16 * 1024 })
const sigId = str({ min: 1, max: 64 })
/** A delivery id: a coordinator ULID, or `topic:<name>:<offset>` / `system-<version>` (names ≤ 64). */
const deliveryId = str({ min: 1, max: 128 })

/** The schema of every frame body, keyed by its `t`. */
export const FRAME_SCHEMAS = {
  // ── both directions ────────────────────────────────────────────────────────
  ping: obj({}),
  pong: obj({}),
  error: obj({
    reqId: opt(reqId),
    code: str({ max: 64 }),
    message: str({ max: 2048 }),
    permanent: bool(),
    details: opt(record(any(), { maxKeys: 32 })),
  }),

  // ── connection: coordinator → client, then client → coordinator ───────────
  challenge: obj({ nonce: bin({ len: 32 }), coordinatorPk: keySchema, nodeId: str({ max: 64 }) }),
  hello: obj({ reqId: opt(reqId), proto: versionRange, features, ...helloBodySchema.shape }),
  hello_ack: obj({
    reqId: opt(reqId),
    proto: uint({ max: 65535 }),
    features,
    stateVersion: uint(),
    presenceId: str({ max: 64 }),
    nodeId: str({ max: 64 }),
    leaseMs: uint(),
    limits: obj({
      maxFrameBytes: uint(),
      maxEnvelopeBytes: uint(),
      maxPayloadBytes: uint(),
      ackWaitMs: opt(uint()),
      pushWindow: opt(uint()),
      /**
       * The `send` rate limits in force for this connection: `member` is the bucket the presence's member
       * has on this coordinator node (`nodeId`), shared by the member's own presence, its sessions and its
       * services. Absent from coordinators that predate it (and from one with no limit to announce).
       */
      rate: opt(obj({ member: rateBucketSchema })),
    }),
  }),
  attest_refresh: obj({ reqId, attestation: signedSchema }),
  ok: obj({ reqId }),

  // ── messaging ──────────────────────────────────────────────────────────────
  /**
   * `first`: the sender has never given this envelope's id to a coordinator before (an id it drew
   * itself, on its first relay send), so the coordinator may skip looking the id up among committed
   * messages. A retry never says it; a sender that says it falsely only loses its own deduplication.
   */
  send: obj({ reqId, envelope: envelopeBytes, first: opt(bool()) }),
  send_ack: obj({
    reqId,
    clientMessageId: ulidSchema,
    state: oneOf(['delivered', 'queued', 'partial'] as const),
    /** True when this id was already accepted: `state` is then the original outcome. */
    duplicate: opt(bool()),
    recipientOnline: opt(bool()),
    /** Fan-out: each recipient key (hex) and its state. */
    recipients: opt(record(oneOf(RECIPIENT_STATES), { maxKeys: 4096, key: /^[0-9a-f]{64}$/ })),
  }),
  push: obj({
    deliveryId,
    envelope: envelopeBytes,
    claimUntil: opt(uint()),
    queuedAt: opt(uint()),
    topicOffset: opt(uint()),
  }),
  client_ack: obj({ deliveryId, status: oneOf(ACK_STATUSES) }),
  delivery_receipt: obj({
    clientMessageId: ulidSchema,
    recipient: keySchema,
    status: oneOf(RECIPIENT_STATES),
  }),

  // ── discovery and presence ─────────────────────────────────────────────────
  list_peers: obj({ reqId, includeDaemons: opt(bool()), includeOffline: opt(bool()) }),
  peers: obj({ reqId, peers: arr(peerRecordSchema, { max: 4096 }) }),
  set_status: obj({ status: opt(statusSchema), summary: opt(str({ max: 256 })) }),
  presence: obj({ event: oneOf(['joined', 'left', 'updated'] as const), peer: peerRecordSchema }),

  // ── mesh state ─────────────────────────────────────────────────────────────
  mesh_events: obj({ reqId, since: uint() }),
  mesh_events_result: obj({
    reqId,
    events: arr(signedSchema, { max: 1000 }),
    /** Present when `since` is older than the kept log: a signed snapshot to start from. */
    snapshot: opt(signedSchema),
  }),
  admin: obj({ reqId, ...adminRequestSchema.shape }),
  admin_result: obj({ reqId, result: any() }),

  // ── topics ─────────────────────────────────────────────────────────────────
  subscribe: obj({ reqId, topic: nameSchema, fromOffset: opt(uint()) }),
  subscribed: obj({ reqId, topic: nameSchema, fromOffset: uint(), headOffset: uint() }),
  unsubscribe: obj({ reqId, topic: nameSchema }),
  topic_ack: obj({ topic: nameSchema, offset: uint() }),
  topic_key_request: obj({ topic: nameSchema, epoch: uint(), from: opt(keySchema) }),
  topic_key_grant: obj({
    topic: nameSchema,
    epoch: uint(),
    to: keySchema,
    sealed: bin({ max: 512 }),
    from: opt(keySchema),
  }),

  // ── signaling (relayed by the coordinator, which stamps `from`) ────────────
  p2p_offer: obj({ sigId, to: keySchema, from: opt(keySchema), sdp, ...signedSchema.shape }),
  p2p_answer: obj({ sigId, to: keySchema, from: opt(keySchema), sdp, ...signedSchema.shape }),
  p2p_candidate: obj({
    sigId,
    to: keySchema,
    from: opt(keySchema),
    candidate: str({ max: 1024 }),
    mid: opt(str({ max: 64 })),
  }),
  p2p_reject: obj({
    sigId,
    to: keySchema,
    from: opt(keySchema),
    reason: oneOf(['busy', 'declined', 'invalid', 'expired', 'unreachable'] as const),
  }),

  // ── peer to peer, over a data channel ──────────────────────────────────────
  p2p_env: obj({ envelope: envelopeBytes }),
  p2p_ack: obj({ clientMessageId: ulidSchema, status: oneOf(ACK_STATUSES) }),
  stream_window: obj({ streamId: str({ min: 1, max: 64 }), upToSeq: uint() }),
} as const satisfies Record<string, Schema<unknown>>

/** Every frame type. */
export type FrameType = keyof typeof FRAME_SCHEMAS
/** The frame of type `T`, including its `t`. */
export type FrameOf<T extends FrameType> = { t: T } & Infer<(typeof FRAME_SCHEMAS)[T]>
/** Any frame: a union discriminated by `t`. */
export type Frame = { [T in FrameType]: FrameOf<T> }[FrameType]

/** The one reply type of each request type (besides `error`). */
export const REPLY_OF = {
  hello: 'hello_ack',
  send: 'send_ack',
  list_peers: 'peers',
  mesh_events: 'mesh_events_result',
  admin: 'admin_result',
  subscribe: 'subscribed',
  unsubscribe: 'ok',
  attest_refresh: 'ok',
} as const satisfies Partial<Record<FrameType, FrameType>>

export const FRAME_TYPES = Object.keys(FRAME_SCHEMAS) as FrameType[]

function isFrameType(t: unknown): t is FrameType {
  return typeof t === 'string' && Object.prototype.hasOwnProperty.call(FRAME_SCHEMAS, t)
}

/** Checks a decoded value as a frame; see the module comment for the errors. */
export function parseFrame(value: unknown): Frame {
  if (!isPlainObject(value)) {
    throw new MeshError('MESH_ERR_MALFORMED_FRAME', 'a frame is a msgpack map with a `t` field')
  }
  const t = value.t
  const id = typeof value.reqId === 'number' && Number.isSafeInteger(value.reqId) ? value.reqId : undefined
  if (!isFrameType(t)) {
    const shown = typeof t === 'string' ? JSON.stringify(t.slice(0, 64)) : typeName(t)
    throw new MeshError('MESH_ERR_UNKNOWN_FRAME_TYPE', `unknown frame type ${shown}`, {
      details: id === undefined ? {} : { reqId: id },
    })
  }
  try {
    const body = parse(FRAME_SCHEMAS[t] as Schema<object>, value, 'MESH_ERR_MALFORMED_FRAME', `${t} frame`)
    return { t, ...body } as Frame
  } catch (err) {
    if (err instanceof MeshError && id !== undefined) {
      throw new MeshError(err.code, err.message, { details: { ...err.details, reqId: id, t } })
    }
    throw err
  }
}

function typeName(v: unknown): string {
  return v === undefined ? 'missing' : v === null ? 'nil' : typeof v
}

/** Decodes and validates one frame from bytes. */
export function decodeFrame(bytes: Uint8Array, maxBytes: number = MAX_FRAME_BYTES): Frame {
  if (bytes.length > maxBytes) {
    throw new MeshError('MESH_ERR_FRAME_TOO_LARGE', `frame of ${bytes.length} bytes exceeds ${maxBytes}`, {
      details: { size: bytes.length, max: maxBytes },
    })
  }
  return parseFrame(decode(bytes))
}

/** Validates and encodes a frame; a frame that breaks its own schema is a bug, reported as such. */
export function encodeFrame(frame: Frame, maxBytes: number = MAX_FRAME_BYTES): Uint8Array {
  const checked = parseFrame(frame)
  const bytes = encode(checked)
  if (bytes.length > maxBytes) {
    throw new MeshError('MESH_ERR_FRAME_TOO_LARGE', `frame of ${bytes.length} bytes exceeds ${maxBytes}`, {
      details: { size: bytes.length, max: maxBytes },
    })
  }
  return bytes
}

/** An `error` frame for a MeshError, echoing `reqId` when known. */
export function errorFrame(err: MeshError, reqId?: number): FrameOf<'error'> {
  const frame: FrameOf<'error'> = { t: 'error', ...err.toWire() }
  if (reqId !== undefined) frame.reqId = reqId
  return frame
}
