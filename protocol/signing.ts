/**
 * Domain-separated signatures. Every signature covers `"agentmesh/v1/<purpose>\0"` followed by the msgpack
 * encoding of a fixed-order array of fields (listed per purpose in docs/PROTOCOL.md). A signed record
 * carries those exact array bytes (`signed`) beside the signature (`sig`): the verifier checks the
 * signature over the received bytes and only then decodes them. Nobody re-encodes to verify.
 */
import { decode, encode } from './codec.js'
import { signDetached, verifyDetached } from './crypto.js'
import { bytesEqual, concatBytes, utf8 } from './encoding.js'
import { MeshError } from './errors.js'
import { bin, obj, parse, type Schema } from './schema.js'

/** Every purpose a signature can have. A signature made for one never verifies for another. */
export const PURPOSES = [
  'hello',
  'session-attestation',
  'service-attestation',
  'roster',
  'invite',
  'join',
  'admin-request',
  'system-event',
  'p2p-offer',
  'p2p-answer',
  'envelope',
] as const
export type Purpose = (typeof PURPOSES)[number]

const PREFIXES = new Map<Purpose, Uint8Array>(PURPOSES.map((p) => [p, utf8(`agentmesh/v1/${p}\0`)]))

/** A signed record as it travels: the signed array's msgpack bytes and an Ed25519 signature over them. */
export interface Signed {
  signed: Uint8Array
  sig: Uint8Array
}

/** The schema of a `Signed` pair inside a frame (at most 8 KiB of signed bytes). */
export const signedSchema = obj({ signed: bin({ min: 1, max: 8192 }), sig: bin({ len: 64 }) })

/** The exact bytes a signature covers: the purpose prefix, then the signed array's bytes. */
export function signingInput(purpose: Purpose, signed: Uint8Array): Uint8Array {
  return concatBytes(PREFIXES.get(purpose)!, signed)
}

/** Encodes `fields` once and signs them for `purpose`. */
export function signFields(purpose: Purpose, fields: readonly unknown[], secretKey: Uint8Array): Signed {
  const signed = encode(fields)
  return { signed, sig: signDetached(signingInput(purpose, signed), secretKey) }
}

/** True when `sig` is `publicKey`'s signature over `signed` for `purpose`. */
export function verifySigned(purpose: Purpose, record: Signed, publicKey: Uint8Array): boolean {
  return verifyDetached(record.sig, signingInput(purpose, record.signed), publicKey)
}

/**
 * Verifies `record` against `expectedSigner`, then decodes and validates its fields.
 *
 * When the signature fails and `claimedSigner` names which field holds the signer, the bytes are decoded
 * only to tell two failures apart: a valid signature by the key the record itself names, when that key is
 * not the expected one, is `MESH_ERR_WRONG_SIGNER`; anything else is `MESH_ERR_BAD_SIGNATURE` (tampered).
 * Nothing decoded from unverified bytes is ever returned.
 */
export function openSigned<T>(
  purpose: Purpose,
  record: Signed,
  expectedSigner: Uint8Array,
  schema: Schema<T>,
  claimedSigner?: (fields: T) => Uint8Array,
): T {
  if (verifySigned(purpose, record, expectedSigner)) return decodeFields(purpose, record.signed, schema)
  if (claimedSigner !== undefined) {
    let claimed: Uint8Array | undefined
    try {
      claimed = claimedSigner(decodeFields(purpose, record.signed, schema))
    } catch {
      claimed = undefined
    }
    if (
      claimed !== undefined &&
      !bytesEqual(claimed, expectedSigner) &&
      verifySigned(purpose, record, claimed)
    ) {
      throw new MeshError(
        'MESH_ERR_WRONG_SIGNER',
        `${purpose} is signed by another key than the one required`,
      )
    }
  }
  throw new MeshError('MESH_ERR_BAD_SIGNATURE', `${purpose} signature does not verify`)
}

/** Decodes a signed array (already verified by the caller) and validates it. */
export function decodeFields<T>(purpose: Purpose, signed: Uint8Array, schema: Schema<T>): T {
  return parse(schema, decode(signed), 'MESH_ERR_MALFORMED_FRAME', `${purpose} fields`)
}
