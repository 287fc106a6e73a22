/**
 * Signatures on P2P offers and answers (DESIGN.md §5, Signaling). Each side signs, with its presence key
 * (the session, service or member key it authenticated with), purpose `p2p-offer` or `p2p-answer` over
 *
 *     [mesh, from, to, sigId, role, dtlsFingerprints, expiresAt]
 *
 * `dtlsFingerprints` lists every `a=fingerprint` of the SDP it sends. The receiver verifies the signature
 * against the sender's attested key and checks the fingerprints against the SDP it received before
 * `setRemoteDescription`: DTLS then proves the data channel ends at that key, so the coordinator relaying
 * the SDP cannot sit in the middle.
 *
 * SDP parsing lives here, tiny and pure, because it is what binds the signature to the SDP.
 */
import { assertMintTtl, assertWithinWindow } from './attestation.js'
import { bytesEqual } from './encoding.js'
import { MeshError } from './errors.js'
import { keySchema, meshIdSchema } from './ids.js'
import { assertPublicKey, type Identity } from './keys.js'
import { arr, literal, obj, parse, str, tuple, uint } from './schema.js'
import { openSigned, signFields, type Signed } from './signing.js'

/** Which side of the handshake signed. */
export type P2pRole = 'offer' | 'answer'

/** Default lifetime of a signed offer or answer: it only has to outlive one handshake. */
export const P2P_SIGNATURE_TTL_MS = 60_000
/** Verifiers refuse a signed offer or answer expiring further ahead than this. */
export const P2P_SIGNATURE_MAX_TTL_MS = 5 * 60_000

/** A DTLS certificate fingerprint as SDP writes it: `sha-256` and `AB:CD:…` (uppercase hex, colons). */
export interface DtlsFingerprint {
  alg: string
  value: string
}

const fingerprintSchema = obj({
  alg: str({ min: 1, max: 16, pattern: /^[a-z0-9-]+$/ }),
  // 16 (md5) to 64 (sha-512) bytes.
  value: str({ min: 47, max: 191, pattern: /^[0-9A-F]{2}(:[0-9A-F]{2}){15,63}$/ }),
})
const fingerprintsSchema = arr(fingerprintSchema, { min: 1, max: 8 })
const sigIdSchema = str({ min: 1, max: 64 })

function arrayFor(role: P2pRole) {
  return tuple([meshIdSchema, keySchema, keySchema, sigIdSchema, literal(role), fingerprintsSchema, uint()])
}
const ARRAYS = { offer: arrayFor('offer'), answer: arrayFor('answer') }

/** The fields of a signed offer or answer whose signature verified. */
export interface P2pSignatureFields {
  mesh: string
  from: Uint8Array
  to: Uint8Array
  sigId: string
  role: P2pRole
  dtlsFingerprints: DtlsFingerprint[]
  expiresAt: number
}

/** Options of `signP2pSignature`. */
export interface SignP2pSignature {
  /** The presence key this side authenticated with; becomes `from`. */
  identity: Identity
  role: P2pRole
  mesh: string
  to: Uint8Array
  sigId: string
  /** Usually `fingerprintsFromSdp(localDescription.sdp)`. */
  dtlsFingerprints: readonly DtlsFingerprint[]
  now: number
  /** Defaults to 60 s; above the 5 min cap it is refused. */
  ttlMs?: number
}

/** Signs an offer's or answer's binding fields; the result travels as the frame's `signed` and `sig`. */
export function signP2pSignature(o: SignP2pSignature): Signed {
  const ttlMs = o.ttlMs ?? P2P_SIGNATURE_TTL_MS
  assertMintTtl(ttlMs, P2P_SIGNATURE_MAX_TTL_MS, `p2p-${o.role}`)
  const fingerprints = normalizeFingerprints(o.dtlsFingerprints)
  const fields = [o.mesh, o.identity.publicKey, o.to, o.sigId, o.role, fingerprints, o.now + ttlMs]
  parse(ARRAYS[o.role], fields, 'MESH_ERR_MALFORMED_FRAME', `p2p-${o.role} fields`)
  return signFields(`p2p-${o.role}`, fields, o.identity.secretKey)
}

/** Options of `verifyP2pSignature`. */
export interface VerifyP2pSignature {
  role: P2pRole
  mesh: string
  /** The sender's attested presence key: the signer it must be. */
  from: Uint8Array
  /** Our own presence key: the offer or answer must be addressed to it. */
  to: Uint8Array
  /** The frame's `sigId`. */
  sigId: string
  /** The SDP the frame carried; its fingerprints must be exactly the signed ones. */
  sdp: string
  now: number
  /** Defaults to 5 min. */
  maxTtlMs?: number
}

function mismatch(field: string, role: P2pRole): MeshError {
  return new MeshError('MESH_ERR_FIELD_MISMATCH', `p2p-${role} ${field} differs from the expected one`, {
    details: { field },
  })
}

/**
 * Verifies a signed offer or answer before `setRemoteDescription`. Errors: `MESH_ERR_BAD_SIGNATURE`
 * (tampered), `MESH_ERR_WRONG_SIGNER` (signed by the key it names, not the expected sender),
 * `MESH_ERR_WRONG_MESH`, `MESH_ERR_FIELD_MISMATCH` (`from`, `to`, `sigId` or the SDP's fingerprints),
 * `MESH_ERR_EXPIRED`, `MESH_ERR_TTL_TOO_LONG`.
 */
export function verifyP2pSignature(record: Signed, o: VerifyP2pSignature): P2pSignatureFields {
  assertPublicKey(o.from, 'p2p sender key')
  const [mesh, from, to, sigId, role, dtlsFingerprints, expiresAt] = openSigned(
    `p2p-${o.role}`,
    record,
    o.from,
    ARRAYS[o.role],
    (f) => f[1],
  )
  if (!bytesEqual(from, o.from)) throw mismatch('from', o.role)
  if (mesh !== o.mesh) {
    throw new MeshError('MESH_ERR_WRONG_MESH', `p2p-${role} is for mesh ${mesh}, not ${o.mesh}`, {
      details: { expected: o.mesh, got: mesh },
    })
  }
  if (!bytesEqual(to, o.to)) throw mismatch('to', o.role)
  if (sigId !== o.sigId) throw mismatch('sigId', o.role)
  assertWithinWindow(expiresAt, o.now, o.maxTtlMs ?? P2P_SIGNATURE_MAX_TTL_MS, `p2p-${role}`)
  if (!fingerprintsMatch(dtlsFingerprints, fingerprintsFromSdp(o.sdp)))
    throw mismatch('dtlsFingerprints', o.role)
  return { mesh, from, to, sigId, role, dtlsFingerprints, expiresAt }
}

const FINGERPRINT_LINE = /^a=fingerprint:(\S+)[ \t]+(\S+)[ \t]*$/i

/**
 * Every `a=fingerprint:<alg> <value>` of an SDP, session and media level alike, normalized (alg lowercase,
 * value uppercase) and without duplicates, in order of first appearance.
 */
export function fingerprintsFromSdp(sdp: string): DtlsFingerprint[] {
  const found: DtlsFingerprint[] = []
  for (const line of sdp.split(/\r?\n/)) {
    const m = FINGERPRINT_LINE.exec(line.trim())
    if (m !== null) found.push({ alg: m[1]!, value: m[2]! })
  }
  return normalizeFingerprints(found)
}

/** True when two fingerprint lists hold the same set (after normalization); an empty set never matches. */
export function fingerprintsMatch(
  signed: readonly DtlsFingerprint[],
  fromSdp: readonly DtlsFingerprint[],
): boolean {
  const a = new Set(normalizeFingerprints(signed).map(keyOf))
  const b = new Set(normalizeFingerprints(fromSdp).map(keyOf))
  return a.size > 0 && a.size === b.size && [...a].every((k) => b.has(k))
}

function keyOf(f: DtlsFingerprint): string {
  return `${f.alg} ${f.value}`
}

function normalizeFingerprints(list: readonly DtlsFingerprint[]): DtlsFingerprint[] {
  const seen = new Map<string, DtlsFingerprint>()
  for (const f of list) {
    const n = { alg: f.alg.toLowerCase(), value: f.value.toUpperCase() }
    if (!seen.has(keyOf(n))) seen.set(keyOf(n), n)
  }
  return [...seen.values()]
}
