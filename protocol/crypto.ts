/**
 * The one crypto module. Only this file touches libsodium: it awaits `ready` once (`initCrypto()`), then
 * every helper is synchronous. Helpers that open or verify never throw on bad input: they return `null`
 * or `false`, so a wrong key can never turn into garbage text or an unexpected exception upstream.
 */
import sodium from 'libsodium-wrappers'
import { MeshError } from './errors.js'

export const PUBLIC_KEY_BYTES = 32
export const SIGN_SECRET_KEY_BYTES = 64
export const SIGNATURE_BYTES = 64
export const NONCE_BYTES = 24
export const MAC_BYTES = 16
export const SYMMETRIC_KEY_BYTES = 32
export const HASH_BYTES = 32

let ready = false
let readyPromise: Promise<void> | undefined

/** Loads libsodium. Await it once before any other call here; later calls return the same promise. */
export function initCrypto(): Promise<void> {
  readyPromise ??= sodium.ready.then(() => {
    ready = true
  })
  return readyPromise
}

function lib(): typeof sodium {
  if (!ready)
    throw new MeshError('MESH_ERR_CRYPTO_NOT_READY', 'await initCrypto() before using agentmesh crypto')
  return sodium
}

/** An Ed25519 key pair (`secretKey` is libsodium's 64-byte form: seed then public key). */
export interface SigningKeyPair {
  publicKey: Uint8Array
  secretKey: Uint8Array
}

// The most bytes one `getRandomValues` call may fill (Web Crypto throws QuotaExceededError above it).
const MAX_RANDOM_CHUNK = 65536

/**
 * Cryptographically random bytes, from Web Crypto's `getRandomValues` (browsers and Node alike). In Node,
 * libsodium's `randombytes_buf` goes through `require('crypto').randomBytes` on every call, which made a
 * 24-byte nonce about 25 times slower to draw.
 */
export function randomBytes(length: number): Uint8Array {
  lib() // not ready: throws, as every helper here does
  // The same refusal as libsodium's: `new Uint8Array` would round 1.5 down and read NaN as 0.
  if (!Number.isInteger(length) || length < 0) throw new TypeError('length must be an unsigned integer')
  const out = new Uint8Array(length)
  for (let offset = 0; offset < length; offset += MAX_RANDOM_CHUNK) {
    globalThis.crypto.getRandomValues(out.subarray(offset, offset + MAX_RANDOM_CHUNK))
  }
  return out
}

/** A new Ed25519 key pair, or the one a 32-byte seed determines (for key files and golden vectors). */
export function signingKeyPair(seed?: Uint8Array): SigningKeyPair {
  const kp = seed === undefined ? lib().crypto_sign_keypair() : lib().crypto_sign_seed_keypair(seed)
  return { publicKey: kp.publicKey, secretKey: kp.privateKey }
}

/** The 32-byte seed of a 64-byte Ed25519 secret key. */
export function seedOf(secretKey: Uint8Array): Uint8Array {
  return secretKey.slice(0, 32)
}

/** A detached Ed25519 signature. */
export function signDetached(message: Uint8Array, secretKey: Uint8Array): Uint8Array {
  return lib().crypto_sign_detached(message, secretKey)
}

/** Verifies a detached signature; any malformed input is simply `false`. */
export function verifyDetached(signature: Uint8Array, message: Uint8Array, publicKey: Uint8Array): boolean {
  const s = lib()
  if (signature.length !== SIGNATURE_BYTES || publicKey.length !== PUBLIC_KEY_BYTES) return false
  try {
    return s.crypto_sign_verify_detached(signature, message, publicKey)
  } catch {
    return false
  }
}

/** True when 32 bytes are a usable Ed25519 public key (a valid point that converts to X25519). */
export function isValidSigningPublicKey(publicKey: Uint8Array): boolean {
  if (publicKey.length !== PUBLIC_KEY_BYTES) return false
  try {
    lib().crypto_sign_ed25519_pk_to_curve25519(publicKey)
    return true
  } catch {
    return false
  }
}

/** The X25519 public key for `crypto_box`, derived from an Ed25519 public key. */
export function boxPublicKey(signingPublicKey: Uint8Array): Uint8Array {
  try {
    return lib().crypto_sign_ed25519_pk_to_curve25519(signingPublicKey)
  } catch (cause) {
    if (cause instanceof MeshError) throw cause
    throw new MeshError('MESH_ERR_MALFORMED_KEY', 'not a valid Ed25519 public key', { cause })
  }
}

/** The X25519 secret key for `crypto_box`, derived from an Ed25519 secret key. */
export function boxSecretKey(signingSecretKey: Uint8Array): Uint8Array {
  try {
    return lib().crypto_sign_ed25519_sk_to_curve25519(signingSecretKey)
  } catch (cause) {
    if (cause instanceof MeshError) throw cause
    throw new MeshError('MESH_ERR_MALFORMED_KEY', 'not a valid Ed25519 secret key', { cause })
  }
}

/** `crypto_box_easy`: authenticated encryption from one X25519 key to another. */
export function box(
  message: Uint8Array,
  nonce: Uint8Array,
  theirBoxPk: Uint8Array,
  myBoxSk: Uint8Array,
): Uint8Array {
  return lib().crypto_box_easy(message, nonce, theirBoxPk, myBoxSk)
}

/** Opens a `crypto_box`; `null` when the key, nonce or ciphertext is wrong. */
export function boxOpen(
  ciphertext: Uint8Array,
  nonce: Uint8Array,
  theirBoxPk: Uint8Array,
  myBoxSk: Uint8Array,
): Uint8Array | null {
  const s = lib()
  if (nonce.length !== NONCE_BYTES || ciphertext.length < MAC_BYTES) return null
  try {
    return s.crypto_box_open_easy(ciphertext, nonce, theirBoxPk, myBoxSk)
  } catch {
    return null
  }
}

/** The precomputed shared key of a pair (`crypto_box_beforenm`), for hot pairs. */
export function boxSharedKey(theirBoxPk: Uint8Array, myBoxSk: Uint8Array): Uint8Array {
  return lib().crypto_box_beforenm(theirBoxPk, myBoxSk)
}

/** `crypto_box_easy_afternm`: the same ciphertext as `box`, with a precomputed shared key. */
export function boxWithSharedKey(message: Uint8Array, nonce: Uint8Array, sharedKey: Uint8Array): Uint8Array {
  return lib().crypto_box_easy_afternm(message, nonce, sharedKey)
}

/** Opens with a precomputed shared key; `null` on any failure. */
export function boxOpenWithSharedKey(
  ciphertext: Uint8Array,
  nonce: Uint8Array,
  sharedKey: Uint8Array,
): Uint8Array | null {
  const s = lib()
  if (nonce.length !== NONCE_BYTES || ciphertext.length < MAC_BYTES) return null
  try {
    return s.crypto_box_open_easy_afternm(ciphertext, nonce, sharedKey)
  } catch {
    return null
  }
}

/** `crypto_secretbox_easy` under a 32-byte symmetric key. */
export function secretbox(message: Uint8Array, nonce: Uint8Array, key: Uint8Array): Uint8Array {
  return lib().crypto_secretbox_easy(message, nonce, key)
}

/** Opens a `crypto_secretbox`; `null` on any failure. */
export function secretboxOpen(ciphertext: Uint8Array, nonce: Uint8Array, key: Uint8Array): Uint8Array | null {
  const s = lib()
  if (nonce.length !== NONCE_BYTES || key.length !== SYMMETRIC_KEY_BYTES || ciphertext.length < MAC_BYTES)
    return null
  try {
    return s.crypto_secretbox_open_easy(ciphertext, nonce, key)
  } catch {
    return null
  }
}

/** BLAKE2b-256 (`crypto_generichash`, 32 bytes) of the concatenation of `parts`. */
export function hash(...parts: Uint8Array[]): Uint8Array {
  const s = lib()
  if (parts.length === 1) return s.crypto_generichash(HASH_BYTES, parts[0]!, null)
  const state = s.crypto_generichash_init(null, HASH_BYTES)
  for (const part of parts) s.crypto_generichash_update(state, part)
  return s.crypto_generichash_final(state, HASH_BYTES)
}

/** Constant-time equality of two byte strings of the same length. */
export function bytesEqualConstantTime(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false
  return lib().memcmp(a, b)
}
