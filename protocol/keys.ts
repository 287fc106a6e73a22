/**
 * Identities. Every key is Ed25519; the X25519 key that `crypto_box` needs is derived from it
 * (`crypto_sign_ed25519_{pk,sk}_to_curve25519`), so one key file holds one identity.
 * - member: one per (mesh, join), never reused across meshes; the auth boundary.
 * - session: one per (mesh, session id), persisted so a resumed session keeps it.
 * - service: an integration (webhook receiver, side-car, cron job) owned by a member.
 * - coordinator: the coordinator's own key; invites carry its public key and peers pin it.
 */
import { boxPublicKey, boxSecretKey, isValidSigningPublicKey, seedOf, signingKeyPair } from './crypto.js'
import { fromHex, toHex } from './encoding.js'
import { MeshError } from './errors.js'
import { isPlainObject } from './schema.js'

export const KEY_KINDS = ['member', 'session', 'service', 'coordinator'] as const
export type KeyKind = (typeof KEY_KINDS)[number]

/** An identity: its Ed25519 pair and the X25519 pair derived from it for `crypto_box`. */
export interface Identity {
  readonly kind: KeyKind
  readonly publicKey: Uint8Array
  readonly secretKey: Uint8Array
  readonly boxPublicKey: Uint8Array
  readonly boxSecretKey: Uint8Array
}

/** A new identity, or the one a 32-byte seed determines. */
export function createIdentity(kind: KeyKind, seed?: Uint8Array): Identity {
  const pair = signingKeyPair(seed)
  return {
    kind,
    publicKey: pair.publicKey,
    secretKey: pair.secretKey,
    boxPublicKey: boxPublicKey(pair.publicKey),
    boxSecretKey: boxSecretKey(pair.secretKey),
  }
}

/** Checks that 32 bytes are a usable public key, or throws `MESH_ERR_MALFORMED_KEY`. */
export function assertPublicKey(key: unknown, what = 'key'): asserts key is Uint8Array {
  if (!(key instanceof Uint8Array) || !isValidSigningPublicKey(key)) {
    throw new MeshError('MESH_ERR_MALFORMED_KEY', `${what} is not a valid Ed25519 public key`)
  }
}

/** What a key file holds (JSON): the kind, the public key for a quick look, and the seed. */
export interface KeyFileContents {
  v: 1
  kind: KeyKind
  publicKey: string
  seed: string
  /** Free-form labels: the mesh and session id a session key belongs to, and so on. */
  labels?: Record<string, string>
}

/** Serializes an identity for a key file. */
export function keyFileText(identity: Identity, labels?: Record<string, string>): string {
  const contents: KeyFileContents = {
    v: 1,
    kind: identity.kind,
    publicKey: toHex(identity.publicKey),
    seed: toHex(seedOf(identity.secretKey)),
  }
  if (labels !== undefined) contents.labels = labels
  return JSON.stringify(contents, null, 2) + '\n'
}

/** Parses a key file; the seed must reproduce the public key it states. */
export function parseKeyFile(
  text: string,
  expectedKind?: KeyKind,
): { identity: Identity; labels: Record<string, string> } {
  let data: unknown
  try {
    data = JSON.parse(text)
  } catch (cause) {
    throw new MeshError('MESH_ERR_KEY_FILE', 'key file is not JSON', { cause })
  }
  if (!isPlainObject(data) || data.v !== 1)
    throw new MeshError('MESH_ERR_KEY_FILE', 'key file has no version 1 header')
  const { kind, seed, publicKey } = data
  if (typeof kind !== 'string' || !(KEY_KINDS as readonly string[]).includes(kind)) {
    throw new MeshError('MESH_ERR_KEY_FILE', `key file kind ${JSON.stringify(kind)} is unknown`)
  }
  if (expectedKind !== undefined && kind !== expectedKind) {
    throw new MeshError('MESH_ERR_KEY_FILE', `expected a ${expectedKind} key file, found a ${kind} key`)
  }
  const seedBytes = typeof seed === 'string' ? fromHex(seed) : null
  if (seedBytes?.length !== 32)
    throw new MeshError('MESH_ERR_KEY_FILE', 'key file seed is not 32 bytes of hex')
  const identity = createIdentity(kind as KeyKind, seedBytes)
  if (publicKey !== toHex(identity.publicKey)) {
    throw new MeshError('MESH_ERR_KEY_FILE', 'key file public key does not match its seed')
  }
  const labels: Record<string, string> = {}
  if (isPlainObject(data.labels)) {
    for (const [k, v] of Object.entries(data.labels)) if (typeof v === 'string') labels[k] = v
  }
  return { identity, labels }
}
