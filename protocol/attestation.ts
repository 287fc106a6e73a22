/**
 * Attestations: a member key vouching for a session key or a service key it owns (DESIGN.md §2).
 *
 * - `session-attestation` signs `[mesh, memberPk, sessionPk, sessionId, expiresAt]`: TTL 12 h, refused
 *   when it expires more than 24 h ahead; the runtime re-mints at half its TTL and sends `attest_refresh`.
 * - `service-attestation` signs `[mesh, memberPk, servicePk, serviceId, type, scopes, expiresAt]`: a service
 *   (webhook receiver, side-car, cron job) often runs where nobody can re-mint twice a day, so its default
 *   TTL is 30 days and the cap 90 days; revocation, not expiry, is what cuts a service off.
 *
 * Both are signed by the member they name, so verifying one against the member's key proves the whole
 * chain member → key; whether that member belongs to the mesh is the roster's question, not this file's.
 */
import { isValidSigningPublicKey } from './crypto.js'
import { bytesEqual } from './encoding.js'
import { MeshError } from './errors.js'
import { keySchema, localIdSchema, meshIdSchema } from './ids.js'
import type { Identity } from './keys.js'
import { SESSION_ATTESTATION_MAX_TTL_MS, SESSION_ATTESTATION_TTL_MS } from './limits.js'
import { arr, oneOf, parse, str, tuple, uint } from './schema.js'
import { decodeFields, openSigned, signFields, type Signed } from './signing.js'

/** Default lifetime of a service attestation. */
export const SERVICE_ATTESTATION_TTL_MS = 30 * 24 * 60 * 60 * 1000
/** Verifiers refuse a service attestation expiring further ahead than this. */
export const SERVICE_ATTESTATION_MAX_TTL_MS = 90 * 24 * 60 * 60 * 1000

/** What kind of integration a service key belongs to. */
export const SERVICE_TYPES = ['webhook', 'sidecar', 'bridge', 'cron', 'browser', 'other'] as const
export type ServiceType = (typeof SERVICE_TYPES)[number]

/** A service holds at most 32 scopes of at most 64 characters each. */
export const MAX_SCOPES = 32

const scopeSchema = str({ min: 1, max: 64 })

const sessionArray = tuple([meshIdSchema, keySchema, keySchema, localIdSchema, uint()])
const serviceArray = tuple([
  meshIdSchema,
  keySchema,
  keySchema,
  localIdSchema,
  oneOf(SERVICE_TYPES),
  arr(scopeSchema, { max: MAX_SCOPES }),
  uint(),
])

/** The verified fields of a session attestation. */
export interface SessionAttestationFields {
  mesh: string
  memberPk: Uint8Array
  sessionPk: Uint8Array
  sessionId: string
  expiresAt: number
}

/** The verified fields of a service attestation. */
export interface ServiceAttestationFields {
  mesh: string
  memberPk: Uint8Array
  servicePk: Uint8Array
  serviceId: string
  type: ServiceType
  scopes: string[]
  expiresAt: number
}

/**
 * Checks the validity window of a signed record that expires: `MESH_ERR_EXPIRED` when `expiresAt <= now`,
 * `MESH_ERR_TTL_TOO_LONG` when it expires more than `maxTtlMs` after `now`.
 */
export function assertWithinWindow(expiresAt: number, now: number, maxTtlMs: number, what: string): void {
  if (expiresAt <= now) {
    throw new MeshError('MESH_ERR_EXPIRED', `${what} expired at ${expiresAt} (now ${now})`, {
      details: { expiresAt, now },
    })
  }
  if (expiresAt > now + maxTtlMs) {
    throw new MeshError('MESH_ERR_TTL_TOO_LONG', `${what} expires more than ${maxTtlMs} ms ahead`, {
      details: { expiresAt, now, maxTtlMs },
    })
  }
}

/** Checks a lifetime before minting: a positive integer, not above the cap verifiers will apply. */
export function assertMintTtl(ttlMs: number, maxTtlMs: number, what: string): void {
  if (!Number.isSafeInteger(ttlMs) || ttlMs <= 0) {
    throw new RangeError(`${what} TTL must be a positive integer`)
  }
  if (ttlMs > maxTtlMs) {
    const details = { ttlMs, maxTtlMs }
    throw new MeshError('MESH_ERR_TTL_TOO_LONG', `${what} TTL of ${ttlMs} ms is above ${maxTtlMs} ms`, {
      details,
    })
  }
}

function assertAttestedKey(key: Uint8Array, what: string): void {
  if (!isValidSigningPublicKey(key)) {
    throw new MeshError('MESH_ERR_MALFORMED_KEY', `attested ${what} is not a valid Ed25519 public key`)
  }
}

function mismatch(field: string, what: string): MeshError {
  return new MeshError('MESH_ERR_FIELD_MISMATCH', `${what} ${field} differs from the expected one`, {
    details: { field },
  })
}

/** Checks the parts both attestation kinds share, in the order that gives the most useful error. */
function checkCommon(
  f: { mesh: string; memberPk: Uint8Array; key: Uint8Array; id: string; expiresAt: number },
  o: {
    mesh: string
    memberPk: Uint8Array
    key?: Uint8Array | undefined
    id?: string | undefined
    now: number
    maxTtlMs: number
  },
  names: { what: string; key: string; id: string },
): void {
  // The signature is the expected member's; the array must also name that member, not another one.
  if (!bytesEqual(f.memberPk, o.memberPk)) {
    throw new MeshError('MESH_ERR_WRONG_SIGNER', `${names.what} is signed by one member but names another`)
  }
  if (f.mesh !== o.mesh) {
    throw new MeshError('MESH_ERR_WRONG_MESH', `${names.what} is for mesh ${f.mesh}, not ${o.mesh}`, {
      details: { expected: o.mesh, got: f.mesh },
    })
  }
  assertAttestedKey(f.key, names.key)
  if (o.key !== undefined && !bytesEqual(f.key, o.key)) throw mismatch(names.key, names.what)
  if (o.id !== undefined && f.id !== o.id) throw mismatch(names.id, names.what)
  assertWithinWindow(f.expiresAt, o.now, o.maxTtlMs, names.what)
}

/**
 * The member key an attestation names, read from bytes **not yet verified**. Use it only as the expected
 * signer of `verify*Attestation`, then check that member against the roster. Bytes that do not decode as
 * either attestation kind cannot carry a signature worth checking: `MESH_ERR_BAD_SIGNATURE`.
 */
export function attestedMember(att: Signed): Uint8Array {
  const read = (decodeMember: () => Uint8Array): Uint8Array | undefined => {
    try {
      return decodeMember()
    } catch {
      return undefined
    }
  }
  const member =
    read(() => decodeFields('session-attestation', att.signed, sessionArray)[1]) ??
    read(() => decodeFields('service-attestation', att.signed, serviceArray)[1])
  if (member === undefined) {
    throw new MeshError('MESH_ERR_BAD_SIGNATURE', 'attestation bytes do not decode, so they cannot verify')
  }
  return member
}

/** Options of `mintSessionAttestation`. */
export interface MintSessionAttestation {
  mesh: string
  member: Identity
  sessionPk: Uint8Array
  sessionId: string
  now: number
  /** Defaults to 12 h; above the 24 h cap it is refused. */
  ttlMs?: number
}

/** Signs `[mesh, memberPk, sessionPk, sessionId, now + ttlMs]` with the member key. */
export function mintSessionAttestation(o: MintSessionAttestation): Signed {
  const ttlMs = o.ttlMs ?? SESSION_ATTESTATION_TTL_MS
  assertMintTtl(ttlMs, SESSION_ATTESTATION_MAX_TTL_MS, 'session attestation')
  assertAttestedKey(o.sessionPk, 'sessionPk')
  const fields = [o.mesh, o.member.publicKey, o.sessionPk, o.sessionId, o.now + ttlMs]
  parse(sessionArray, fields, 'MESH_ERR_MALFORMED_FRAME', 'session-attestation fields') // sign only what verifies
  return signFields('session-attestation', fields, o.member.secretKey)
}

/** Options of `verifySessionAttestation`. */
export interface VerifySessionAttestation {
  mesh: string
  /** The member key that must have signed. */
  memberPk: Uint8Array
  /** When given, the attested session key must be this one (the hello's `pk`). */
  sessionPk?: Uint8Array
  /** When given, the attested session id must be this one. */
  sessionId?: string
  now: number
  /** Defaults to 24 h. */
  maxTtlMs?: number
}

/**
 * Verifies a session attestation and returns its fields. Errors: `MESH_ERR_BAD_SIGNATURE` (tampered),
 * `MESH_ERR_WRONG_SIGNER` (signed by another member), `MESH_ERR_WRONG_MESH`, `MESH_ERR_MALFORMED_KEY`
 * (the session key is not a usable key), `MESH_ERR_FIELD_MISMATCH` (not the expected session key or id),
 * `MESH_ERR_EXPIRED`, `MESH_ERR_TTL_TOO_LONG`.
 */
export function verifySessionAttestation(att: Signed, o: VerifySessionAttestation): SessionAttestationFields {
  const [mesh, memberPk, sessionPk, sessionId, expiresAt] = openSigned(
    'session-attestation',
    att,
    o.memberPk,
    sessionArray,
    (f) => f[1],
  )
  const common = {
    mesh: o.mesh,
    memberPk: o.memberPk,
    now: o.now,
    maxTtlMs: o.maxTtlMs ?? SESSION_ATTESTATION_MAX_TTL_MS,
  }
  checkCommon(
    { mesh, memberPk, key: sessionPk, id: sessionId, expiresAt },
    { ...common, key: o.sessionPk, id: o.sessionId },
    { what: 'session attestation', key: 'sessionPk', id: 'sessionId' },
  )
  return { mesh, memberPk, sessionPk, sessionId, expiresAt }
}

/** When an attestation minted with `ttlMs` should be replaced: at half its lifetime. */
export function remintAt(expiresAt: number, ttlMs: number = SESSION_ATTESTATION_TTL_MS): number {
  return expiresAt - Math.floor(ttlMs / 2)
}

/** True once an attestation minted with `ttlMs` has used half its lifetime. */
export function attestationNeedsRemint(
  fields: { expiresAt: number },
  now: number,
  ttlMs: number = SESSION_ATTESTATION_TTL_MS,
): boolean {
  return now >= remintAt(fields.expiresAt, ttlMs)
}

/** Options of `mintServiceAttestation`. */
export interface MintServiceAttestation {
  mesh: string
  member: Identity
  servicePk: Uint8Array
  serviceId: string
  type: ServiceType
  scopes: readonly string[]
  now: number
  /** Defaults to 30 days; above the 90-day cap it is refused. */
  ttlMs?: number
}

/** Signs `[mesh, memberPk, servicePk, serviceId, type, scopes, now + ttlMs]` with the owning member's key. */
export function mintServiceAttestation(o: MintServiceAttestation): Signed {
  const ttlMs = o.ttlMs ?? SERVICE_ATTESTATION_TTL_MS
  assertMintTtl(ttlMs, SERVICE_ATTESTATION_MAX_TTL_MS, 'service attestation')
  assertAttestedKey(o.servicePk, 'servicePk')
  const fields = [o.mesh, o.member.publicKey, o.servicePk, o.serviceId, o.type, [...o.scopes], o.now + ttlMs]
  parse(serviceArray, fields, 'MESH_ERR_MALFORMED_FRAME', 'service-attestation fields')
  return signFields('service-attestation', fields, o.member.secretKey)
}

/** Options of `verifyServiceAttestation`. */
export interface VerifyServiceAttestation {
  mesh: string
  /** The member key that must have signed. */
  memberPk: Uint8Array
  /** When given, the attested service key must be this one. */
  servicePk?: Uint8Array
  /** When given, the attested service id must be this one. */
  serviceId?: string
  now: number
  /** Defaults to 90 days. */
  maxTtlMs?: number
}

/** Verifies a service attestation and returns its fields; the same errors as `verifySessionAttestation`. */
export function verifyServiceAttestation(att: Signed, o: VerifyServiceAttestation): ServiceAttestationFields {
  const [mesh, memberPk, servicePk, serviceId, type, scopes, expiresAt] = openSigned(
    'service-attestation',
    att,
    o.memberPk,
    serviceArray,
    (f) => f[1],
  )
  const common = {
    mesh: o.mesh,
    memberPk: o.memberPk,
    now: o.now,
    maxTtlMs: o.maxTtlMs ?? SERVICE_ATTESTATION_MAX_TTL_MS,
  }
  checkCommon(
    { mesh, memberPk, key: servicePk, id: serviceId, expiresAt },
    { ...common, key: o.servicePk, id: o.serviceId },
    { what: 'service attestation', key: 'servicePk', id: 'serviceId' },
  )
  return { mesh, memberPk, servicePk, serviceId, type, scopes, expiresAt }
}
