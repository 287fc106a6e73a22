/**
 * Envelope v2: the one message format on every transport (docs/PROTOCOL.md, "Envelope v2"). An envelope
 * is a msgpack map whose outer fields route it and whose `body` is sealed by `seal.ts`. This file holds
 * the schema, the per-channel rules, the codec with its size limits, and the sealed content (the
 * plaintext inside every sealed body and its check against the outer header); it never touches keys.
 *
 * Rule violations are `MESH_ERR_INVALID_ENVELOPE` with `details.path` naming the offending field. Unknown
 * fields, outer or in `meta`, are dropped (a newer peer's additions are never passed on unchecked).
 */
import { decode, encode, encodeDefined } from './codec.js'
import { bytesEqual } from './encoding.js'
import { MeshError } from './errors.js'
import { keySchema, meshIdSchema, NAME_RE, ulidSchema } from './ids.js'
import { MAX_ENVELOPE_BYTES, MAX_PAYLOAD_BYTES } from './limits.js'
import {
  any,
  arr,
  bin,
  either,
  isPlainObject,
  literal,
  obj,
  oneOf,
  opt,
  parse,
  record,
  SchemaViolation,
  str,
  tuple,
  uint,
  type Infer,
  type Schema,
} from './schema.js'

/** Every channel an envelope can travel on. */
export const CHANNELS = ['dm', 'group', 'topic', 'rpc', 'stream', 'system'] as const
/** How an envelope is addressed and sealed. */
export type Channel = (typeof CHANNELS)[number]
/** Channels sealed with `crypto_box` to one recipient key. */
export type DirectChannel = 'dm' | 'rpc' | 'stream'

/** True for the channels whose target is one recipient key. */
export function isDirectChannel(channel: Channel): channel is DirectChannel {
  return channel === 'dm' || channel === 'rpc' || channel === 'stream'
}

/** Bytes of a group key box: nonce ‖ crypto_box(32-byte content key). */
export const KEY_BOX_BYTES = 24 + 16 + 32
/** Most recipients one group envelope may carry a key box for. */
export const MAX_GROUP_RECIPIENTS = 1024

/** Routing and delivery hints. Sealed inside the body too, so a relay cannot alter them unnoticed. */
export const metaSchema = obj({
  priority: opt(oneOf(['now', 'next', 'low'] as const)),
  replyTo: opt(ulidSchema),
  mentions: opt(arr(str({ max: 128 }), { max: 64 })),
  /** Milliseconds since the epoch after which the message is not delivered. */
  expiresAt: opt(uint()),
  /** Only `false`, and only on a `dm` whose body is `{plain}`. */
  e2e: opt(literal(false)),
  /** Topic: the epoch of the topic key the body is sealed under (required). */
  keyEpoch: opt(uint()),
  /** rpc: the role of this envelope (required). */
  rpc: opt(oneOf(['req', 'res', 'err'] as const)),
  /** rpc `res`/`err`: the request's `clientMessageId` (required). */
  correlationId: opt(ulidSchema),
  timeoutMs: opt(uint()),
  /** stream: the stream this chunk belongs to and its position from 0 (both required). */
  streamId: opt(str({ min: 1, max: 64 })),
  seq: opt(uint()),
  fin: opt(literal(true)),
})
/** An envelope's `meta`: every field optional unless its channel requires it. */
export type Meta = Infer<typeof metaSchema>

/** A body that is not sealed: a plaintext `dm` (curl from cron), flagged `meta.e2e: false`. */
export interface PlainBody {
  plain: string
}

/** One envelope, as validated. */
export interface Envelope {
  v: 2
  mesh: string
  channel: Channel
  /** The sender's sealing key (Ed25519; its X25519 form opens and seals `crypto_box`). */
  from: Uint8Array
  /** dm/rpc/stream: the recipient key; group: `*` or `@name`; topic: `#name`; system: `*`. */
  target: Uint8Array | string
  /** A ULID made by the sender; with `mesh` and `from` it names the message. */
  clientMessageId: string
  meta: Meta
  /** nonce ‖ ciphertext; system: the signed event bytes; plaintext dm: `{plain}`. */
  body: Uint8Array | PlainBody
  /** group: hex(member key) → nonce ‖ crypto_box(content key). */
  keys?: Record<string, Uint8Array>
  /** group: the roster version the key set was taken from. */
  rosterVersion?: number
  /** topic: the signed `envelope` fields. */
  signed?: Uint8Array
  /** topic: the sender's signature over `signed`; system: the coordinator's over `body`. */
  sig?: Uint8Array
}

/** A target as it travels: a 32-byte key, or a `*`, `@name` or `#name` string. */
export const targetSchema: Schema<Uint8Array | string> = either(keySchema, str({ min: 1, max: 65 }))

const structureSchema = obj({
  v: literal(2),
  mesh: meshIdSchema,
  channel: oneOf(CHANNELS),
  from: keySchema,
  target: targetSchema,
  clientMessageId: ulidSchema,
  meta: metaSchema,
  body: either(bin({ max: MAX_ENVELOPE_BYTES }), obj({ plain: str({ max: MAX_PAYLOAD_BYTES }) })),
  keys: opt(record(bin({ len: KEY_BOX_BYTES }), { maxKeys: MAX_GROUP_RECIPIENTS, key: /^[0-9a-f]{64}$/ })),
  rosterVersion: opt(uint()),
  signed: opt(bin({ min: 1, max: MAX_ENVELOPE_BYTES })),
  sig: opt(bin({ len: 64 })),
})

/** The envelope schema: field types and limits, then the channel rules. */
export const envelopeSchema: Schema<Envelope> = {
  spec: structureSchema.spec,
  check(value, path) {
    // Typed as Envelope: this assignment fails to compile if the schema and the interface drift apart.
    const env: Envelope = structureSchema.check(value, path)
    checkChannelRules(env, path)
    return env
  },
}

type OuterField = 'keys' | 'rosterVersion' | 'signed' | 'sig'
const REQUIRED: Record<Channel, readonly OuterField[]> = {
  dm: [],
  rpc: [],
  stream: [],
  group: ['keys', 'rosterVersion'],
  topic: ['signed', 'sig'],
  system: ['sig'],
}
const ALL_OUTER: readonly OuterField[] = ['keys', 'rosterVersion', 'signed', 'sig']

// A module-level function, not a closure per call: the rules run on every envelope encoded or decoded.
function fail(path: string, field: string, reason: string): never {
  throw new SchemaViolation(path ? `${path}.${field}` : field, reason)
}

function checkChannelRules(env: Envelope, path: string): void {
  const { channel, target, meta, body } = env
  const required = REQUIRED[channel]
  for (const field of ALL_OUTER) {
    const present = env[field] !== undefined
    if (present && !required.includes(field)) fail(path, field, `not allowed on a ${channel} envelope`)
    if (!present && required.includes(field)) fail(path, field, `required on a ${channel} envelope`)
  }

  const plain = !(body instanceof Uint8Array)
  if (plain && !(channel === 'dm' && meta.e2e === false)) {
    fail(path, 'body', 'a plaintext body is allowed only on dm with meta.e2e false')
  }
  if (!plain && meta.e2e === false) fail(path, 'meta.e2e', 'e2e false is allowed only with a plaintext body')

  if (isDirectChannel(channel)) {
    if (!(target instanceof Uint8Array)) fail(path, 'target', `a ${channel} target is a 32-byte key`)
  } else if (typeof target !== 'string') {
    fail(path, 'target', `a ${channel} target is a string`)
  } else if (channel === 'group') {
    if (target !== '*' && !isName(target, '@')) fail(path, 'target', 'a group target is * or @name')
  } else if (channel === 'topic') {
    if (!isName(target, '#')) fail(path, 'target', 'a topic target is #name')
  } else if (target !== '*') {
    fail(path, 'target', 'a system target is *')
  }

  if (channel === 'group' && Object.keys(env.keys ?? {}).length === 0)
    fail(path, 'keys', 'needs at least one key box')
  if (channel === 'topic' && meta.keyEpoch === undefined)
    fail(path, 'meta.keyEpoch', 'required on a topic envelope')
  if (channel === 'rpc') {
    if (meta.rpc === undefined) fail(path, 'meta.rpc', 'required on an rpc envelope')
    if (meta.rpc !== 'req' && meta.correlationId === undefined) {
      fail(path, 'meta.correlationId', `required on an rpc ${meta.rpc}`)
    }
  }
  if (channel === 'stream') {
    if (meta.streamId === undefined) fail(path, 'meta.streamId', 'required on a stream envelope')
    if (meta.seq === undefined) fail(path, 'meta.seq', 'required on a stream envelope')
  }
}

function isName(target: string, sigil: '@' | '#'): boolean {
  return target.startsWith(sigil) && NAME_RE.test(target.slice(1))
}

/** Validates a decoded value as an envelope, or throws `MESH_ERR_INVALID_ENVELOPE` with `details.path`. */
export function validateEnvelope(value: unknown): Envelope {
  return parse(envelopeSchema, value, 'MESH_ERR_INVALID_ENVELOPE', 'envelope')
}

/**
 * Validates and encodes an envelope. Fields go out in schema order, so equal envelopes encode to equal
 * bytes. Over 64 KiB is `MESH_ERR_ENVELOPE_TOO_LARGE`.
 */
export function encodeEnvelope(env: Envelope): Uint8Array {
  const bytes = encodeDefined(validateEnvelope(env))
  if (bytes.length > MAX_ENVELOPE_BYTES) throw tooLarge(bytes.length)
  return bytes
}

/**
 * Decodes and validates envelope bytes: `MESH_ERR_ENVELOPE_TOO_LARGE` above 64 KiB (checked first),
 * `MESH_ERR_MALFORMED_FRAME` for bytes that are not msgpack, `MESH_ERR_INVALID_ENVELOPE` for a rule
 * violation. The result's byte fields view a private copy of `bytes`, so they stay valid after `bytes` is
 * reused; like pooled Node Buffers, a small envelope's copy shares its `ArrayBuffer` with others' copies.
 */
export function decodeEnvelope(bytes: Uint8Array): Envelope {
  if (bytes.length > MAX_ENVELOPE_BYTES) throw tooLarge(bytes.length)
  return validateEnvelope(decode(detach(bytes)))
}

function tooLarge(size: number): MeshError {
  return new MeshError(
    'MESH_ERR_ENVELOPE_TOO_LARGE',
    `envelope is ${size} bytes, more than ${MAX_ENVELOPE_BYTES}`,
    { details: { size, max: MAX_ENVELOPE_BYTES } },
  )
}

// The codec hands out views into its input; envelopes are queued and stored, so they own their bytes: one
// copy of the input, which every byte field views (a copy per field cost more). Inputs up to 4 KiB go into
// a shared 8 KiB slab, as Node pools small Buffers: at 1 KiB, allocating an ArrayBuffer took a third of
// the decode. Slab space is never reused; a kept envelope pins at most one slab.
const SLAB_BYTES = 8192
let slab = new Uint8Array(0)
let slabUsed = 0

function detach(bytes: Uint8Array): Uint8Array {
  if (!(bytes instanceof Uint8Array)) return bytes // for `decode` to refuse
  const length = bytes.length
  if (length > SLAB_BYTES >>> 1) return new Uint8Array(bytes) // not `slice()`: on a Buffer that is a view
  if (slabUsed + length > slab.length) {
    slab = new Uint8Array(SLAB_BYTES)
    slabUsed = 0
  }
  const copy = slab.subarray(slabUsed, slabUsed + length)
  copy.set(bytes)
  slabUsed += (length + 7) & ~7 // 8-byte aligned, as msgpackr aligns what it encodes
  return copy
}

// ── the sealed content ───────────────────────────────────────────────────────

const sealedSchema = tuple([oneOf(CHANNELS), targetSchema, ulidSchema, metaSchema, any()])
const SEALED_HEADER_FIELDS = ['channel', 'target', 'clientMessageId', 'meta'] as const
const metaField = obj({ meta: metaSchema })

/** Validates `meta` for sealing (unknown fields dropped), so the sealed and outer meta are one value. */
export function normalizeMeta(meta: Meta | undefined): Meta {
  return parse(metaField, { meta: meta ?? {} }, 'MESH_ERR_INVALID_ENVELOPE', 'envelope').meta
}

/**
 * The plaintext of every sealed body: msgpack([channel, target, clientMessageId, meta, payload]).
 * `MESH_ERR_PAYLOAD_TOO_LARGE` when the payload encodes to more than 60 KiB; `MESH_ERR_INVALID_ENVELOPE`
 * (path `payload`) when it holds a value the codec refuses on decode, which no receiver could open.
 */
export function encodeSealedContent(
  channel: Channel,
  target: Uint8Array | string,
  clientMessageId: string,
  meta: Meta,
  payload: unknown,
): Uint8Array {
  const sealed = encode([channel, target, clientMessageId, meta, payload])
  // Array items encode independently, so the payload's size is the difference with a nil (1 byte).
  checkPayloadSize(sealed.length - encode([channel, target, clientMessageId, meta, null]).length + 1)
  try {
    decode(sealed)
  } catch (cause) {
    // Dates, `undefined` in arrays and the like become extension types, which every receiver refuses.
    throw new MeshError('MESH_ERR_INVALID_ENVELOPE', 'payload holds a value the codec cannot carry', {
      cause,
      details: { path: 'payload' },
    })
  }
  return sealed
}

/** Throws `MESH_ERR_PAYLOAD_TOO_LARGE` when an encoded payload is over 60 KiB. */
export function checkPayloadSize(size: number): void {
  if (size > MAX_PAYLOAD_BYTES) {
    throw new MeshError(
      'MESH_ERR_PAYLOAD_TOO_LARGE',
      `payload is ${size} bytes encoded, more than ${MAX_PAYLOAD_BYTES}; send it as a stream`,
      { details: { size, max: MAX_PAYLOAD_BYTES } },
    )
  }
}

/**
 * Decodes opened content and returns its payload, once its header equals `env`'s outer one (meta compared
 * as decoded values, never re-encoded). Otherwise `MESH_ERR_HEADER_MISMATCH`, with `details.field` when
 * one field differs; content that is not a valid 5-item array is the same error.
 */
export function readSealedContent(plaintext: Uint8Array, env: Envelope): unknown {
  let value: unknown
  try {
    value = decode(plaintext)
  } catch (cause) {
    throw new MeshError('MESH_ERR_HEADER_MISMATCH', 'sealed content is not msgpack', { cause })
  }
  const sealed = parse(sealedSchema, value, 'MESH_ERR_HEADER_MISMATCH', 'sealed content')
  const outer = [env.channel, env.target, env.clientMessageId, env.meta]
  const differs = outer.findIndex((value, i) => !sameValue(value, sealed[i]))
  if (differs !== -1) {
    const field = SEALED_HEADER_FIELDS[differs]
    throw new MeshError('MESH_ERR_HEADER_MISMATCH', `outer ${field} differs from the sealed one`, {
      details: { field },
    })
  }
  return sealed[4]
}

/** Structural equality of decoded values: bins by bytes, maps regardless of key order. */
export function sameValue(a: unknown, b: unknown): boolean {
  if (a instanceof Uint8Array || b instanceof Uint8Array) {
    return a instanceof Uint8Array && b instanceof Uint8Array && bytesEqual(a, b)
  }
  if (Array.isArray(a) || Array.isArray(b)) {
    return (
      Array.isArray(a) && Array.isArray(b) && a.length === b.length && a.every((x, i) => sameValue(x, b[i]))
    )
  }
  if (isPlainObject(a) && isPlainObject(b)) {
    const keys = Object.keys(a)
    return (
      keys.length === Object.keys(b).length && keys.every((k) => Object.hasOwn(b, k) && sameValue(a[k], b[k]))
    )
  }
  return a === b
}
