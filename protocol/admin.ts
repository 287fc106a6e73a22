/**
 * Admin requests (DESIGN.md §2): create invite, kick, ban, revoke, roles. Each is signed by an owner or
 * admin member key over
 *
 *     [mesh, method, argsHash, challengeNonce]
 *
 * where `argsHash` is BLAKE2b-256 of the msgpack bytes of the arguments, which travel beside as `args: bin`
 * (hashed as received, decoded after). `challengeNonce` is the nonce of the `challenge` that opened the
 * connection carrying the request, so a captured request cannot be replayed on any other connection.
 */
import { decode, encode } from './codec.js'
import { hash, HASH_BYTES } from './crypto.js'
import { bytesEqual } from './encoding.js'
import { MeshError } from './errors.js'
import { keySchema, meshIdSchema } from './ids.js'
import { assertPublicKey, type Identity } from './keys.js'
import type { RosterRole } from './roster.js'
import { bin, obj, parse, str, tuple, type Infer } from './schema.js'
import { openSigned, signedSchema, signFields } from './signing.js'

/** The largest encoded arguments an admin request may carry. */
export const MAX_ADMIN_ARGS_BYTES = 16 * 1024

const methodSchema = str({ min: 1, max: 64 })
const adminArray = tuple([meshIdSchema, methodSchema, bin({ len: HASH_BYTES }), bin({ len: 32 })])

/** An admin request's fields as they travel (the frame layer adds `t` and `reqId`). */
export const adminRequestSchema = obj({
  mesh: meshIdSchema,
  method: methodSchema,
  args: bin({ max: MAX_ADMIN_ARGS_BYTES }),
  signer: keySchema,
  ...signedSchema.shape,
})
export type AdminRequest = Infer<typeof adminRequestSchema>

/** Options of `signAdminRequest`. */
export interface SignAdminRequest {
  /** The owner's or an admin's member key. */
  identity: Identity
  mesh: string
  method: string
  /** Any msgpack value; encoded once, and its bytes are what the hash covers. */
  args: unknown
  /** The nonce of this connection's `challenge`. */
  challengeNonce: Uint8Array
}

/** Encodes the arguments and signs the request. */
export function signAdminRequest(o: SignAdminRequest): AdminRequest {
  const args = encode(o.args)
  if (args.length > MAX_ADMIN_ARGS_BYTES) {
    throw new MeshError(
      'MESH_ERR_FRAME_TOO_LARGE',
      `admin arguments of ${args.length} bytes exceed ${MAX_ADMIN_ARGS_BYTES}`,
      {
        details: { size: args.length, max: MAX_ADMIN_ARGS_BYTES },
      },
    )
  }
  const fields = [o.mesh, o.method, hash(args), o.challengeNonce]
  parse(adminArray, fields, 'MESH_ERR_MALFORMED_FRAME', 'admin-request fields')
  const { signed, sig } = signFields('admin-request', fields, o.identity.secretKey)
  return { mesh: o.mesh, method: o.method, args, signer: o.identity.publicKey, signed, sig }
}

/** Options of `verifyAdminRequest`. */
export interface VerifyAdminRequest {
  /** The nonce this connection's `challenge` carried. */
  challengeNonce: Uint8Array
  /** The mesh the request must be for. */
  mesh: string
  /** The signer's current role in that mesh, from the verified roster. */
  roleOf: (pk: Uint8Array) => RosterRole | undefined
  /** The roles allowed to call this method. */
  allowed: readonly RosterRole[]
}

/** A verified admin request. */
export interface VerifiedAdminRequest {
  method: string
  args: unknown
  signer: Uint8Array
  role: RosterRole
}

function mismatch(field: string): MeshError {
  return new MeshError('MESH_ERR_FIELD_MISMATCH', `admin request ${field} differs from the signed one`, {
    details: { field },
  })
}

/**
 * Verifies an admin request and decodes its arguments. Errors, in order: `MESH_ERR_MALFORMED_KEY`,
 * `MESH_ERR_BAD_SIGNATURE`, `MESH_ERR_WRONG_CHALLENGE`, `MESH_ERR_FIELD_MISMATCH` (outer mesh or method),
 * `MESH_ERR_WRONG_MESH`, `MESH_ERR_NOT_AUTHORIZED` (the signer's role is not allowed),
 * `MESH_ERR_FIELD_MISMATCH` (`args` are not the hashed ones), `MESH_ERR_MALFORMED_FRAME` (undecodable args).
 */
export function verifyAdminRequest(req: AdminRequest, o: VerifyAdminRequest): VerifiedAdminRequest {
  assertPublicKey(req.signer, 'admin request signer')
  const [mesh, method, argsHash, nonce] = openSigned('admin-request', req, req.signer, adminArray)
  if (!bytesEqual(nonce, o.challengeNonce)) {
    throw new MeshError(
      'MESH_ERR_WRONG_CHALLENGE',
      'admin request signs another challenge than this connection sent',
    )
  }
  if (mesh !== req.mesh) throw mismatch('mesh')
  if (method !== req.method) throw mismatch('method')
  if (mesh !== o.mesh) {
    throw new MeshError('MESH_ERR_WRONG_MESH', `admin request is for mesh ${mesh}, not ${o.mesh}`, {
      details: { expected: o.mesh, got: mesh },
    })
  }
  const role = o.roleOf(req.signer)
  if (role === undefined || !o.allowed.includes(role)) {
    throw new MeshError(
      'MESH_ERR_NOT_AUTHORIZED',
      `${method} needs one of the roles ${o.allowed.join(', ')}`,
      {
        details: { method, role: role ?? null, allowed: [...o.allowed] },
      },
    )
  }
  if (!bytesEqual(hash(req.args), argsHash)) throw mismatch('args')
  return { method, args: decode(req.args), signer: req.signer, role }
}
