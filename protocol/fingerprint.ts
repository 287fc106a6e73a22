/**
 * Fingerprints for idempotency.
 * - `envelopeHash`: the coordinator's check that a repeated `(mesh, from, clientMessageId)` carries the
 *   same envelope (another hash is `MESH_ERR_IDEMPOTENCY_CONFLICT`).
 * - `requestFingerprint`: the runtime's check that a repeated IPC send with the same idempotency key asks
 *   for the same thing, before anything is sealed (sealing draws fresh nonces, so envelopes differ).
 *
 * Every digest here is BLAKE2b-256, and digests are fed to other digests as their raw 32 bytes, never
 * as hex text (claudemesh's spec said one and its code did the other).
 */
import { encode } from './codec.js'
import { hash } from './crypto.js'
import { toHex, utf8 } from './encoding.js'
import type { Channel } from './envelope.js'
import { isPlainObject } from './schema.js'

/** BLAKE2b-256 of envelope bytes exactly as received (never re-encoded). */
export function envelopeHash(envelopeBytes: Uint8Array): Uint8Array {
  return hash(envelopeBytes)
}

/** What an IPC send asks for, before sealing. */
export interface RequestFingerprintInput {
  channel: Channel
  /** A recipient key (bytes, or 64 lowercase hex characters), `*`, `@group` or `#topic`. */
  target: string | Uint8Array
  payload: unknown
  meta?: Record<string, unknown>
}

const DOMAIN = utf8('agentmesh/v1/request-fingerprint\0')

/**
 * The request fingerprint, 32 raw bytes:
 *
 *     BLAKE2b-256( "agentmesh/v1/request-fingerprint" 0x00 ‖
 *                  msgpack([channel, target, canonicalValue(meta), BLAKE2b-256(msgpack(canonicalValue(payload)))]) )
 *
 * `target` is a string (a key given as bytes becomes its lowercase hex); a missing `meta` is `{}`; the
 * payload digest enters the array as a 32-byte bin. See `canonicalValue` for the normal form.
 */
export function requestFingerprint(input: RequestFingerprintInput): Uint8Array {
  const target = typeof input.target === 'string' ? input.target : toHex(input.target)
  const payloadDigest = hash(encode(canonicalValue(input.payload)))
  return hash(DOMAIN, encode([input.channel, target, canonicalValue(input.meta ?? {}), payloadDigest]))
}

/** The request fingerprint as 64 lowercase hex characters (for logs, IPC replies and stores). */
export function fingerprintHex(input: RequestFingerprintInput): string {
  return toHex(requestFingerprint(input))
}

/**
 * The normal form a value is fingerprinted in, so equal requests hash alike however the caller wrote
 * them: map keys sorted by code point (UTF-8 byte order), recursively; `undefined` map entries dropped
 * and `undefined` array items made nil; -0 made 0. The codec then writes an integral number in
 * [-2^31, 2^32) as the shortest msgpack integer (so `5` and `5.0` are one value) and every other number
 * as a float64, timestamps in milliseconds included: another implementation must do the same.
 * Values the codec cannot carry (dates, maps, class instances) are refused with a `TypeError`.
 */
export function canonicalValue(value: unknown): unknown {
  if (value === undefined || value === null) return null
  if (typeof value === 'number') return Object.is(value, -0) ? 0 : value
  if (typeof value === 'string' || typeof value === 'boolean') return value
  if (value instanceof Uint8Array) return value
  if (Array.isArray(value)) return value.map(canonicalValue)
  if (isPlainObject(value)) {
    const out: Record<string, unknown> = {}
    for (const key of Object.keys(value).sort(byCodePoint)) {
      const item = value[key]
      if (item === undefined) continue
      Object.defineProperty(out, key, { value: canonicalValue(item), enumerable: true, writable: true })
    }
    return out
  }
  throw new TypeError(`cannot fingerprint a ${Object.prototype.toString.call(value)}`)
}

// Code point order equals UTF-8 byte order; plain `sort()` compares UTF-16 units and differs above U+FFFF.
function byCodePoint(a: string, b: string): number {
  const x = [...a]
  const y = [...b]
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const d = x[i]!.codePointAt(0)! - y[i]!.codePointAt(0)!
    if (d !== 0) return d
  }
  return x.length - y.length
}
