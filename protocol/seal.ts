/**
 * Sealing and opening envelope bodies (docs/PROTOCOL.md, "Envelope v2"). Every sealed body holds
 * msgpack([channel, target, clientMessageId, meta, payload]): the "sealed header" repeats the outer
 * routing fields, so a relay that edits them is caught by the receiver at no extra cost.
 *
 * Opening never throws for a crypto failure and never yields garbage: it returns `undecryptable` (the
 * keys at hand do not open the body) or `rejected` (it opened, but the header or signature is wrong).
 * The `random` option of every seal function supplies nonces and content keys, in a documented order,
 * so golden vectors reproduce byte for byte.
 */
import { openBox, sealBox, type BoxIdentity, type BoxKeyCache } from './box-key-cache.js'
import { encode } from './codec.js'
import {
  hash,
  MAC_BYTES,
  NONCE_BYTES,
  randomBytes,
  secretbox,
  secretboxOpen,
  SYMMETRIC_KEY_BYTES,
} from './crypto.js'
import { bytesEqual, concatBytes, toHex } from './encoding.js'
import {
  CHANNELS,
  checkPayloadSize,
  encodeSealedContent,
  metaSchema,
  normalizeMeta,
  readSealedContent,
  sameValue,
  targetSchema,
  validateEnvelope,
  type DirectChannel,
  type Envelope,
  type Meta,
} from './envelope.js'
import { MeshError, type MeshErrorCode } from './errors.js'
import { keySchema, meshIdSchema, nonceSchema, ulidSchema } from './ids.js'
import type { Identity } from './keys.js'
import { any, bin, oneOf, str, tuple, uint } from './schema.js'
import { decodeFields, signFields, verifySigned, type Signed } from './signing.js'
import { assertAdvances, signSystemEvent } from './system-event.js'

/** Options of every seal function. */
export interface SealOptions {
  /** The source of nonces and content keys (default: the crypto module's `randomBytes`). */
  random?: (n: number) => Uint8Array
}

/** Options of the `crypto_box` paths (dm, rpc, stream, group key boxes). */
export interface BoxOptions extends SealOptions {
  /** Shared keys of the local identity; gives the same bytes as the one-shot path. */
  cache?: BoxKeyCache
}

/** Keys an identity signs with (topic posts, system events). */
export type SigningIdentity = Pick<Identity, 'publicKey' | 'secretKey'>

/** What a sender states about a message, whichever channel carries it. */
interface MessageInput {
  mesh: string
  clientMessageId: string
  meta?: Meta
  /** Any msgpack value; encoded it must fit in 60 KiB. */
  payload: unknown
}

/** A dm, rpc or stream message to one recipient. */
export interface DirectInput extends MessageInput {
  channel: DirectChannel
  from: BoxIdentity
  /** The recipient's Ed25519 public key. */
  to: Uint8Array
}

/** A group (`@name`) or broadcast (`*`) message, sealed once for every recipient. */
export interface GroupInput extends MessageInput {
  from: BoxIdentity
  target: string
  /** The member keys to seal the content key to (the sender may list itself). */
  recipients: readonly Uint8Array[]
  rosterVersion: number
}

/** A topic post, sealed under the topic key of `meta.keyEpoch` and signed by the sender. */
export interface TopicInput extends MessageInput {
  from: SigningIdentity
  target: string
  meta: Meta & { keyEpoch: number }
  topicKey: Uint8Array
}

/** The sealed header and payload as opened. */
export type OpenResult =
  | { ok: true; payload: unknown; e2e: boolean; envelope: Envelope }
  | { ok: false; payload: null; status: 'undecryptable' | 'rejected'; error: MeshError }

/** What a receiver opens with. */
export interface OpenOptions {
  cache?: BoxKeyCache
  /** The topic key of an epoch, when this receiver holds it. */
  topicKey?: (topic: string, epoch: number) => Uint8Array | undefined
  /** The pinned coordinator key, needed to open `system` envelopes. */
  coordinatorPk?: Uint8Array
}

const topicSignedSchema = tuple([
  meshIdSchema,
  oneOf(CHANNELS),
  targetSchema,
  keySchema,
  ulidSchema,
  metaSchema,
  nonceSchema,
  bin({ len: 32 }),
])
const TOPIC_SIGNED_FIELDS = ['mesh', 'channel', 'target', 'from', 'clientMessageId', 'meta', 'nonce', 'hash']

/**
 * Seals a dm, rpc or stream message with `crypto_box` from `from` to `to`:
 * `body = nonce(24) ‖ crypto_box(sealed header ‖ payload)`. Draws one nonce from `random`.
 */
export function sealDirect(input: DirectInput, options: BoxOptions = {}): Envelope {
  const random = options.random ?? randomBytes
  const meta = normalizeMeta(input.meta)
  const sealed = encodeSealedContent(input.channel, input.to, input.clientMessageId, meta, input.payload)
  const nonce = random(NONCE_BYTES)
  const ciphertext = sealBox(sealed, nonce, input.to, input.from, options.cache)
  return validateEnvelope({
    ...outer(input, input.channel, input.from.publicKey, input.to, meta),
    body: concatBytes(nonce, ciphertext),
  })
}

/**
 * Seals a group or broadcast message once under a fresh content key, then boxes that key to each
 * recipient: `keys[hex(pk)] = nonce ‖ crypto_box(contentKey)`. Draws the content key, the body nonce,
 * then one nonce per distinct recipient in the given order.
 */
export function sealGroup(input: GroupInput, options: BoxOptions = {}): Envelope {
  const random = options.random ?? randomBytes
  const meta = normalizeMeta(input.meta)
  const sealed = encodeSealedContent('group', input.target, input.clientMessageId, meta, input.payload)
  const contentKey = random(SYMMETRIC_KEY_BYTES)
  const nonce = random(NONCE_BYTES)
  const body = concatBytes(nonce, secretbox(sealed, nonce, contentKey))
  const keys: Record<string, Uint8Array> = {}
  for (const pk of input.recipients) {
    const id = toHex(pk)
    if (Object.hasOwn(keys, id)) continue
    const keyNonce = random(NONCE_BYTES)
    keys[id] = concatBytes(keyNonce, sealBox(contentKey, keyNonce, pk, input.from, options.cache))
  }
  return validateEnvelope({
    ...outer(input, 'group', input.from.publicKey, input.target, meta),
    body,
    keys,
    rosterVersion: input.rosterVersion,
  })
}

/**
 * Seals a topic post under `topicKey` (the key of `meta.keyEpoch`) and signs, for purpose `envelope`,
 * `[mesh, channel, target, from, clientMessageId, meta, nonce, hash(ciphertext)]`, where the hash is
 * BLAKE2b-256 of the secretbox output without the nonce. Draws one nonce.
 */
export function sealTopic(input: TopicInput, options: SealOptions = {}): Envelope {
  const random = options.random ?? randomBytes
  if (input.topicKey.length !== SYMMETRIC_KEY_BYTES) {
    throw new MeshError('MESH_ERR_MALFORMED_KEY', `a topic key is ${SYMMETRIC_KEY_BYTES} bytes`)
  }
  const meta = normalizeMeta(input.meta)
  const sealed = encodeSealedContent('topic', input.target, input.clientMessageId, meta, input.payload)
  const nonce = random(NONCE_BYTES)
  const ciphertext = secretbox(sealed, nonce, input.topicKey)
  const from = input.from.publicKey
  const fields = [
    input.mesh,
    'topic',
    input.target,
    from,
    input.clientMessageId,
    meta,
    nonce,
    hash(ciphertext),
  ]
  return validateEnvelope({
    ...outer(input, 'topic', from, input.target, meta),
    body: concatBytes(nonce, ciphertext),
    ...ownSigned(signFields('envelope', fields, input.from.secretKey)),
  })
}

/**
 * A plaintext dm (a cron job's `{to, text}` through curl): `body: {plain: text}` and `meta.e2e: false`.
 * Nothing authenticates it beyond the connection that sent it; receivers see `e2e: false`.
 */
export function sealPlaintext(input: {
  mesh: string
  from: Uint8Array
  to: Uint8Array
  clientMessageId: string
  text: string
  meta?: Meta
}): Envelope {
  checkPayloadSize(encode(input.text).length)
  const meta = normalizeMeta({ ...input.meta, e2e: false })
  return validateEnvelope({ ...outer(input, 'dm', input.from, input.to, meta), body: { plain: input.text } })
}

/** The decoded fields of a system event: `[mesh, version, prevVersion, kind, body]`. */
export type SystemEvent = readonly [
  mesh: string,
  version: number,
  prevVersion: number,
  kind: string,
  body: unknown,
]
const systemEventSchema = tuple([meshIdSchema, uint(), uint(), str({ min: 1, max: 64 }), any()])

/**
 * Builds a system envelope (coordinator side): `body` holds the `system-event` signed bytes of
 * `[mesh, version, prevVersion, kind, body]` and `sig` the coordinator's signature over them.
 */
export function sealSystemEnvelope(input: {
  mesh: string
  coordinator: SigningIdentity
  clientMessageId: string
  version: number
  prevVersion: number
  kind: string
  body: unknown
  meta?: Meta
}): Envelope {
  // One signer for the event, so the envelope's bytes equal a `signSystemEvent` record (an undefined
  // body is carried as nil, and a version that does not advance is refused before signing).
  const { signed, sig } = ownSigned(signSystemEvent(input))
  const meta = normalizeMeta(input.meta)
  return validateEnvelope({
    ...outer(input, 'system', input.coordinator.publicKey, '*', meta),
    body: signed,
    sig,
  })
}

/**
 * Verifies a system envelope and returns its event. Throws `MESH_ERR_BAD_SIGNATURE` when `sig` does not
 * verify over `body` by `from`, `MESH_ERR_WRONG_SIGNER` when `from` is not the pinned coordinator key,
 * `MESH_ERR_FIELD_MISMATCH` when the event names another mesh than the envelope.
 */
export function openSystemEnvelope(env: Envelope, coordinatorPk: Uint8Array): SystemEvent {
  if (env.channel !== 'system' || !(env.body instanceof Uint8Array) || env.sig === undefined) {
    throw new MeshError('MESH_ERR_INVALID_ENVELOPE', 'not a signed system envelope')
  }
  const record = { signed: env.body, sig: env.sig }
  if (!verifySigned('system-event', record, env.from)) {
    throw new MeshError('MESH_ERR_BAD_SIGNATURE', 'system event signature does not verify')
  }
  if (!bytesEqual(env.from, coordinatorPk)) {
    throw new MeshError(
      'MESH_ERR_WRONG_SIGNER',
      'system event is signed by a key other than the pinned coordinator',
    )
  }
  const event = decodeFields('system-event', env.body, systemEventSchema)
  assertAdvances(event[1], event[2])
  if (event[0] !== env.mesh) {
    throw new MeshError('MESH_ERR_FIELD_MISMATCH', 'system event names another mesh than its envelope', {
      details: { field: 'mesh' },
    })
  }
  return event
}

type CacheOption = Pick<OpenOptions, 'cache'>

/** Opens any envelope addressed to `me`, by its channel (`system` needs `options.coordinatorPk`). */
export function openEnvelope(env: Envelope, me: BoxIdentity, options: OpenOptions = {}): OpenResult {
  switch (env.channel) {
    case 'dm':
    case 'rpc':
    case 'stream':
      return openDirect(env, me, options)
    case 'group':
      return openGroup(env, me, options)
    case 'topic': {
      const key =
        typeof env.target === 'string' ? options.topicKey?.(env.target, env.meta.keyEpoch ?? 0) : undefined
      return openTopic(env, key)
    }
    case 'system':
      if (options.coordinatorPk === undefined) {
        return rejected('MESH_ERR_WRONG_SIGNER', 'no pinned coordinator key')
      }
      try {
        const event = openSystemEnvelope(env, options.coordinatorPk)
        return { ok: true, payload: event, e2e: false, envelope: env }
      } catch (err) {
        if (err instanceof MeshError) return failed('rejected', err)
        throw err
      }
  }
}

/** Opens a dm, rpc or stream envelope addressed to `me` (a plaintext dm opens with `e2e: false`). */
export function openDirect(env: Envelope, me: BoxIdentity, options: CacheOption = {}): OpenResult {
  if (!(env.body instanceof Uint8Array)) {
    if (env.channel === 'dm' && env.meta.e2e === false) {
      return { ok: true, payload: env.body.plain, e2e: false, envelope: env }
    }
    return rejected('MESH_ERR_INVALID_ENVELOPE', 'a plaintext body needs dm and meta.e2e false')
  }
  const parts = splitNonce(env.body)
  if (parts === null) return undecryptable('body is shorter than a nonce and a MAC')
  const plaintext = openBox(parts.ciphertext, parts.nonce, env.from, me, options.cache)
  if (plaintext === null) return undecryptable('body does not open with this key')
  const result = readSealed(plaintext, env)
  if (result.ok && !(env.target instanceof Uint8Array && bytesEqual(env.target, me.publicKey))) {
    return rejected('MESH_ERR_HEADER_MISMATCH', 'envelope opened but is addressed to another key', {
      field: 'target',
    })
  }
  return result
}

/** Opens a group envelope with `me`'s key box (the coordinator may have trimmed the others). */
export function openGroup(env: Envelope, me: BoxIdentity, options: CacheOption = {}): OpenResult {
  if (!(env.body instanceof Uint8Array)) {
    return rejected('MESH_ERR_INVALID_ENVELOPE', 'a group body is sealed')
  }
  const id = toHex(me.publicKey)
  const keyBox = env.keys !== undefined && Object.hasOwn(env.keys, id) ? env.keys[id] : undefined
  if (keyBox === undefined) return undecryptable('no key box for this key')
  const boxParts = splitNonce(keyBox)
  const contentKey = boxParts && openBox(boxParts.ciphertext, boxParts.nonce, env.from, me, options.cache)
  if (!contentKey || contentKey.length !== SYMMETRIC_KEY_BYTES) return undecryptable('key box does not open')
  const parts = splitNonce(env.body)
  const plaintext = parts && secretboxOpen(parts.ciphertext, parts.nonce, contentKey)
  if (!plaintext) return undecryptable('body does not open with the content key')
  return readSealed(plaintext, env)
}

/**
 * Opens a topic post with the topic key of its epoch (`undefined` when not held), then requires a valid
 * signature by `from` whose fields equal the outer ones. Decryption comes first so that a damaged body is
 * `undecryptable` on every channel alike; nothing is returned before the signature checks.
 */
export function openTopic(env: Envelope, topicKey: Uint8Array | undefined): OpenResult {
  if (!(env.body instanceof Uint8Array)) {
    return rejected('MESH_ERR_INVALID_ENVELOPE', 'a topic body is sealed')
  }
  if (topicKey === undefined) return undecryptable(`no topic key for epoch ${env.meta.keyEpoch ?? '?'}`)
  const parts = splitNonce(env.body)
  const plaintext = parts && secretboxOpen(parts.ciphertext, parts.nonce, topicKey)
  if (!parts || !plaintext) return undecryptable('body does not open with the topic key')
  if (env.signed === undefined || env.sig === undefined) {
    return rejected('MESH_ERR_BAD_SIGNATURE', 'topic post is unsigned')
  }
  if (!verifySigned('envelope', { signed: env.signed, sig: env.sig }, env.from)) {
    return rejected('MESH_ERR_BAD_SIGNATURE', 'topic post signature does not verify')
  }
  let signedFields: readonly unknown[]
  try {
    signedFields = decodeFields('envelope', env.signed, topicSignedSchema)
  } catch (err) {
    return rejected('MESH_ERR_HEADER_MISMATCH', `signed fields are malformed: ${(err as Error).message}`)
  }
  const outerFields = [env.mesh, env.channel, env.target, env.from, env.clientMessageId, env.meta]
  const expected = [...outerFields, parts.nonce, hash(parts.ciphertext)]
  const differs = expected.findIndex((value, i) => !sameValue(value, signedFields[i]))
  if (differs !== -1) {
    const field = TOPIC_SIGNED_FIELDS[differs]
    return rejected('MESH_ERR_HEADER_MISMATCH', `signed ${field} differs from the envelope's`, { field })
  }
  return readSealed(plaintext, env)
}

// ── shared steps ─────────────────────────────────────────────────────────────

function outer(
  input: { mesh: string; clientMessageId: string },
  channel: Envelope['channel'],
  from: Uint8Array,
  target: Uint8Array | string,
  meta: Meta,
): Omit<Envelope, 'body'> {
  return { v: 2, mesh: input.mesh, channel, from, target, clientMessageId: input.clientMessageId, meta }
}

// The codec's output is a Buffer view into a shared pool; an envelope owns plain bytes, as decoded ones do.
function ownSigned(record: Signed): Signed {
  return { signed: new Uint8Array(record.signed), sig: record.sig }
}

function splitNonce(bytes: Uint8Array): { nonce: Uint8Array; ciphertext: Uint8Array } | null {
  if (bytes.length < NONCE_BYTES + MAC_BYTES) return null
  return { nonce: bytes.subarray(0, NONCE_BYTES), ciphertext: bytes.subarray(NONCE_BYTES) }
}

function readSealed(plaintext: Uint8Array, env: Envelope): OpenResult {
  try {
    return { ok: true, payload: readSealedContent(plaintext, env), e2e: true, envelope: env }
  } catch (err) {
    if (err instanceof MeshError) return failed('rejected', err)
    throw err
  }
}

function undecryptable(reason: string): OpenResult {
  return failed('undecryptable', new MeshError('MESH_ERR_UNDECRYPTABLE', reason))
}

function rejected(code: MeshErrorCode, reason: string, details?: Record<string, unknown>): OpenResult {
  return failed('rejected', new MeshError(code, reason, details === undefined ? {} : { details }))
}

function failed(status: 'undecryptable' | 'rejected', error: MeshError): OpenResult {
  return { ok: false, payload: null, status, error }
}
