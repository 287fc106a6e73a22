/**
 * The hello: challenge–response authentication of a connection (DESIGN.md §2).
 *
 * On connect the coordinator sends `challenge{nonce, coordinatorPk, nodeId}` with 32 fresh random bytes.
 * The client answers with a hello whose signature, by the connecting key `pk`, covers
 *
 *     [mesh, pk, role, challengeNonce, attestationHash, capabilitiesHash, sessionId, instanceId]
 *
 * Binding the nonce makes a hello good for one connection only: no clock window, no nonce cache, and no
 * replay onto another connection or node. The attestation and capabilities travel beside the signed
 * array and are bound to it by hash, so the capabilities go as msgpack bytes (`bin`): they are hashed as
 * received and decoded only after that.
 *
 * Roles: `control-plane` is a member key itself (no attestation, no session id); `session` and `service`
 * keys carry their member's attestation, and `sessionId` holds the session id or the service id it names.
 */
import {
  attestedMember,
  verifyServiceAttestation,
  verifySessionAttestation,
  type ServiceAttestationFields,
  type SessionAttestationFields,
} from './attestation.js'
import { decode, encode } from './codec.js'
import { hash, HASH_BYTES, randomBytes } from './crypto.js'
import { bytesEqual } from './encoding.js'
import { MeshError } from './errors.js'
import { keySchema, localIdSchema, meshIdSchema } from './ids.js'
import { assertPublicKey, type Identity } from './keys.js'
import { arr, bin, bool, nullable, obj, oneOf, opt, parse, str, tuple, uint, type Infer } from './schema.js'
import { openSigned, signedSchema, signFields, type Signed } from './signing.js'

/** The length of a challenge nonce. */
export const CHALLENGE_NONCE_BYTES = 32
/** The largest encoded capabilities map a hello may carry. */
export const MAX_CAPABILITIES_BYTES = 4096

/** What a connecting key is. */
export const HELLO_ROLES = ['control-plane', 'session', 'service'] as const
export type HelloRole = (typeof HELLO_ROLES)[number]

/** What a connection can do and how it presents itself; carried as msgpack bytes in the hello. */
export const capabilitiesSchema = obj({
  p2p: bool(),
  transports: arr(str({ min: 1, max: 32 }), { max: 16 }),
  maxFrameBytes: opt(uint()),
  status: opt(oneOf(['idle', 'working', 'dnd'] as const)),
  summary: opt(str({ max: 256 })),
  displayName: opt(str({ max: 128 })),
})
export type Capabilities = Infer<typeof capabilitiesSchema>

/** The challenge the coordinator sends first on every connection. */
export const challengeSchema = obj({
  nonce: bin({ len: CHALLENGE_NONCE_BYTES }),
  coordinatorPk: keySchema,
  nodeId: str({ max: 64 }),
})
export type Challenge = Infer<typeof challengeSchema>

/**
 * The hello's own fields. The frame layer adds `t`, `reqId`, `proto` and `features`, none of which are
 * signed: version negotiation cannot be downgraded to a version both sides lack, so it needs no signature.
 */
export const helloBodySchema = obj({
  mesh: meshIdSchema,
  pk: keySchema,
  role: oneOf(HELLO_ROLES),
  sessionId: opt(localIdSchema),
  instanceId: localIdSchema,
  attestation: opt(signedSchema),
  capabilities: bin({ max: MAX_CAPABILITIES_BYTES }),
  ...signedSchema.shape,
})
/** The hello's fields as they travel. */
export type HelloFields = Infer<typeof helloBodySchema>

const hash32 = bin({ len: HASH_BYTES })
const helloArray = tuple([
  meshIdSchema,
  keySchema,
  oneOf(HELLO_ROLES),
  bin({ len: CHALLENGE_NONCE_BYTES }),
  nullable(hash32),
  hash32,
  nullable(localIdSchema),
  localIdSchema,
])

/** 32 fresh random bytes for a `challenge` frame. */
export function newChallengeNonce(): Uint8Array {
  return randomBytes(CHALLENGE_NONCE_BYTES)
}

/** The hash a hello signs for an attestation: BLAKE2b-256 of `signed ‖ sig`. */
export function attestationHash(att: Signed): Uint8Array {
  return hash(att.signed, att.sig)
}

/** Options of `signHello`. */
export interface SignHello {
  /** The connecting key: the member key (control-plane), a session key or a service key. */
  identity: Identity
  mesh: string
  role: HelloRole
  challengeNonce: Uint8Array
  /** Required for `session` and `service`, absent for `control-plane`. */
  attestation?: Signed
  capabilities: Capabilities
  /** The session id (session) or service id (service); absent for `control-plane`. */
  sessionId?: string
  /** Names this process's connection, so a replaced connection can tell whether the newer one is its own. */
  instanceId: string
}

/** Builds and signs a hello body. */
export function signHello(o: SignHello): HelloFields {
  assertRoleShape(o.role, o.attestation, o.sessionId)
  const capabilities = encode(
    parse(capabilitiesSchema, o.capabilities, 'MESH_ERR_MALFORMED_FRAME', 'capabilities'),
  )
  const fields = [
    o.mesh,
    o.identity.publicKey,
    o.role,
    o.challengeNonce,
    o.attestation === undefined ? null : attestationHash(o.attestation),
    hash(capabilities),
    o.sessionId ?? null,
    o.instanceId,
  ]
  parse(helloArray, fields, 'MESH_ERR_MALFORMED_FRAME', 'hello fields')
  const { signed, sig } = signFields('hello', fields, o.identity.secretKey)
  const body: HelloFields = {
    mesh: o.mesh,
    pk: o.identity.publicKey,
    role: o.role,
    instanceId: o.instanceId,
    capabilities,
    signed,
    sig,
  }
  if (o.sessionId !== undefined) body.sessionId = o.sessionId
  if (o.attestation !== undefined) body.attestation = { signed: o.attestation.signed, sig: o.attestation.sig }
  return body
}

/** Options of `verifyHello`. */
export interface VerifyHello {
  /** The nonce this connection's `challenge` carried. */
  challengeNonce: Uint8Array
  /** The mesh the connection must belong to, when the endpoint already names one. */
  mesh?: string
  now: number
  /** Caps for the attestation (defaults: 24 h for sessions, 90 days for services). */
  maxSessionTtlMs?: number
  maxServiceTtlMs?: number
}

/** A hello whose signature, challenge, bindings and attestation all verified. */
export interface VerifiedHello {
  mesh: string
  pk: Uint8Array
  role: HelloRole
  sessionId?: string
  instanceId: string
  /** The member behind the key: `pk` itself for control-plane, else the attestation's member. */
  memberPk: Uint8Array
  capabilities: Capabilities
  attestation?: SessionAttestationFields | ServiceAttestationFields
}

function mismatch(field: string): MeshError {
  return new MeshError('MESH_ERR_FIELD_MISMATCH', `hello ${field} differs from the signed ${field}`, {
    details: { field },
  })
}

/**
 * Verifies a hello. The caller still checks that `memberPk` is in the mesh's roster.
 *
 * Errors, in the order checked: `MESH_ERR_MALFORMED_KEY` (pk), `MESH_ERR_BAD_SIGNATURE` (tampered) or
 * `MESH_ERR_WRONG_SIGNER` (signed by the key the array names, not the outer `pk`), `MESH_ERR_WRONG_CHALLENGE`,
 * `MESH_ERR_FIELD_MISMATCH` (outer fields, capabilities or attestation differ from what was signed),
 * `MESH_ERR_WRONG_MESH`, `MESH_ERR_MALFORMED_FRAME` (role without its attestation or session id, or
 * capabilities that do not decode), then the attestation's own errors (`MESH_ERR_EXPIRED`, …).
 */
export function verifyHello(body: HelloFields, o: VerifyHello): VerifiedHello {
  assertPublicKey(body.pk, 'hello pk')
  const [mesh, pk, role, nonce, attHash, capsHash, sessionId, instanceId] = openSigned(
    'hello',
    body,
    body.pk,
    helloArray,
    (f) => f[1],
  )
  if (!bytesEqual(nonce, o.challengeNonce)) {
    throw new MeshError('MESH_ERR_WRONG_CHALLENGE', 'hello signs another challenge than this connection sent')
  }
  if (mesh !== body.mesh) throw mismatch('mesh')
  if (!bytesEqual(pk, body.pk)) throw mismatch('pk')
  if (role !== body.role) throw mismatch('role')
  if (sessionId !== (body.sessionId ?? null)) throw mismatch('sessionId')
  if (instanceId !== body.instanceId) throw mismatch('instanceId')
  if (o.mesh !== undefined && mesh !== o.mesh) {
    throw new MeshError('MESH_ERR_WRONG_MESH', `hello is for mesh ${mesh}, not ${o.mesh}`, {
      details: { expected: o.mesh, got: mesh },
    })
  }
  if (!bytesEqual(hash(body.capabilities), capsHash)) throw mismatch('capabilities')
  const att = body.attestation
  if (!sameHash(att === undefined ? null : attestationHash(att), attHash)) throw mismatch('attestation')
  assertRoleShape(role, att, body.sessionId)
  const capabilities = parse(
    capabilitiesSchema,
    decode(body.capabilities),
    'MESH_ERR_MALFORMED_FRAME',
    'capabilities',
  )

  const verified: VerifiedHello = { mesh, pk, role, instanceId, memberPk: pk, capabilities }
  if (att === undefined || sessionId === null) return verified // control-plane: the key is the member
  const memberPk = attestedMember(att)
  assertPublicKey(memberPk, 'attested memberPk')
  const common = { mesh, memberPk, now: o.now }
  verified.sessionId = sessionId
  verified.memberPk = memberPk
  verified.attestation =
    role === 'session'
      ? verifySessionAttestation(att, { ...common, sessionPk: pk, sessionId, maxTtlMs: o.maxSessionTtlMs })
      : verifyServiceAttestation(att, {
          ...common,
          servicePk: pk,
          serviceId: sessionId,
          maxTtlMs: o.maxServiceTtlMs,
        })
  return verified
}

/** Two optional hashes agree: both absent, or both present and equal. */
function sameHash(a: Uint8Array | null, b: Uint8Array | null): boolean {
  return a === null || b === null ? a === b : bytesEqual(a, b)
}

/** Control-plane hellos carry neither attestation nor session id; session and service hellos need both. */
function assertRoleShape(
  role: HelloRole,
  attestation: Signed | undefined,
  sessionId: string | undefined,
): void {
  const attested = role !== 'control-plane'
  if ((attestation !== undefined) !== attested || (sessionId !== undefined) !== attested) {
    throw new MeshError(
      'MESH_ERR_MALFORMED_FRAME',
      attested
        ? `a ${role} hello needs an attestation and a session id`
        : 'a control-plane hello carries no attestation and no session id',
      { details: { role } },
    )
  }
}
