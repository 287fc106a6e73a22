/**
 * Precomputed `crypto_box` shared keys for hot pairs. `crypto_box_beforenm` does the X25519 scalar
 * multiplication once per peer; sealing and opening with the cached key (`*_afternm`) then give exactly
 * the bytes the one-shot `crypto_box` would, minus the key agreement on every message. `sealBox` and
 * `openBox` take either path, so callers never branch on whether a cache is at hand.
 */
import { box, boxOpen, boxOpenWithSharedKey, boxPublicKey, boxSharedKey, boxWithSharedKey } from './crypto.js'
import { bytesEqual, toHex } from './encoding.js'
import { isMeshError } from './errors.js'
import type { Identity } from './keys.js'

/** How many peers a cache remembers by default. */
export const DEFAULT_BOX_KEY_CACHE_SIZE = 1024

/** The parts of an identity a cache needs: its key (to check callers) and its X25519 secret. */
export type BoxIdentity = Pick<Identity, 'publicKey' | 'boxSecretKey'>

/**
 * A least-recently-used cache of shared keys between one local identity and its peers, keyed by the
 * peer's Ed25519 public key. Pass it as `cache` to the dm/rpc/stream (and group key box) seal and open
 * functions of the same identity.
 */
export class BoxKeyCache {
  readonly publicKey: Uint8Array
  readonly capacity: number
  readonly #boxSecretKey: Uint8Array
  // A Map iterates in insertion order: re-inserting on use keeps the least recently used first.
  readonly #keys = new Map<string, Uint8Array>()

  constructor(identity: BoxIdentity, options: { capacity?: number } = {}) {
    const capacity = options.capacity ?? DEFAULT_BOX_KEY_CACHE_SIZE
    if (!Number.isSafeInteger(capacity) || capacity < 1)
      throw new RangeError(`capacity must be ≥ 1, got ${capacity}`)
    this.publicKey = identity.publicKey
    this.#boxSecretKey = identity.boxSecretKey
    this.capacity = capacity
  }

  /** How many shared keys are held. */
  get size(): number {
    return this.#keys.size
  }

  /** True when `identity` is the one this cache computes keys for. */
  belongsTo(identity: Pick<Identity, 'publicKey'>): boolean {
    return bytesEqual(identity.publicKey, this.publicKey)
  }

  /** True when the shared key with `peerPk` is cached (does not count as a use). */
  has(peerPk: Uint8Array): boolean {
    return this.#keys.has(toHex(peerPk))
  }

  /**
   * The shared key with `peerPk` (an Ed25519 public key), computed on first use. Throws
   * `MESH_ERR_MALFORMED_KEY` when `peerPk` is not a valid key; failures are not cached.
   */
  sharedKey(peerPk: Uint8Array): Uint8Array {
    const id = toHex(peerPk)
    let key = this.#keys.get(id)
    if (key !== undefined) {
      this.#keys.delete(id)
    } else {
      key = boxSharedKey(boxPublicKey(peerPk), this.#boxSecretKey)
      if (this.#keys.size >= this.capacity) this.#evictOldest()
    }
    this.#keys.set(id, key)
    return key
  }

  /** Forgets one peer (a revoked key, a closed session). */
  delete(peerPk: Uint8Array): boolean {
    return this.#keys.delete(toHex(peerPk))
  }

  /** Forgets every peer. */
  clear(): void {
    this.#keys.clear()
  }

  #evictOldest(): void {
    const oldest = this.#keys.keys().next()
    if (oldest.done !== true) this.#keys.delete(oldest.value)
  }
}

/** `crypto_box` from `me` to the Ed25519 key `peerPk`, through `cache` when given (same bytes either way). */
export function sealBox(
  message: Uint8Array,
  nonce: Uint8Array,
  peerPk: Uint8Array,
  me: BoxIdentity,
  cache?: BoxKeyCache,
): Uint8Array {
  if (cache === undefined) return box(message, nonce, boxPublicKey(peerPk), me.boxSecretKey)
  assertCacheOf(cache, me)
  return boxWithSharedKey(message, nonce, cache.sharedKey(peerPk))
}

/** Opens a `crypto_box` from `peerPk` to `me`; `null` on any failure, an unusable `peerPk` included. */
export function openBox(
  ciphertext: Uint8Array,
  nonce: Uint8Array,
  peerPk: Uint8Array,
  me: BoxIdentity,
  cache?: BoxKeyCache,
): Uint8Array | null {
  if (cache !== undefined) assertCacheOf(cache, me)
  try {
    if (cache !== undefined) return boxOpenWithSharedKey(ciphertext, nonce, cache.sharedKey(peerPk))
    return boxOpen(ciphertext, nonce, boxPublicKey(peerPk), me.boxSecretKey)
  } catch (err) {
    // A peer key that is not a valid point cannot have sealed anything to us; only a missing init escapes.
    if (isMeshError(err, 'MESH_ERR_CRYPTO_NOT_READY')) throw err
    return null
  }
}

// Mixing identities would silently produce boxes nobody can open: that is a programming error.
function assertCacheOf(cache: BoxKeyCache, me: BoxIdentity): void {
  if (!cache.belongsTo(me)) throw new TypeError('this BoxKeyCache belongs to another identity')
}
