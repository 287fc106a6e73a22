/**
 * Invites and joins (DESIGN.md §2). An owner or admin signs an invite over
 *
 *     [mesh, inviteId, coordinatorUrl, coordinatorPk, ownerPk, role, expiresAt, maxUses]
 *
 * and the newcomer signs `[inviteId, newMemberPk]` with its new member key. The two signatures together
 * are the roster record of a join, so no admin needs to be online when someone joins. The invite carries
 * the coordinator's key and the mesh owner's key: the joiner pins both. Whether the invite's signer may
 * invite, and how many uses are left, is decided by the `Roster` that applies the join.
 *
 * In text (CLI links) an invite is `am1.` followed by the unpadded base64url of msgpack
 * `{signed, sig, signer}`.
 */
import { decode, encode } from './codec.js'
import { randomBytes } from './crypto.js'
import { bytesEqual, fromBase64Url, toBase64Url } from './encoding.js'
import { MeshError } from './errors.js'
import { keySchema, meshIdSchema } from './ids.js'
import { assertPublicKey, type Identity } from './keys.js'
import { bin, obj, oneOf, parse, str, tuple, uint, type Infer } from './schema.js'
import { openSigned, signedSchema, signFields } from './signing.js'

/** The length of an invite id. */
export const INVITE_ID_BYTES = 16
/** The most uses one invite may allow. */
export const MAX_INVITE_USES = 1_000_000
/** The prefix of an invite token; the digit is the token format's version. */
export const INVITE_TOKEN_PREFIX = 'am1.'
/** The roles an invite can grant: owners are made at genesis only. */
export const INVITE_ROLES = ['admin', 'member'] as const
export type InviteRole = (typeof INVITE_ROLES)[number]

/** A signed record that names its signer beside it (roster records, invites and joins). */
export const signerSignedSchema = obj({ ...signedSchema.shape, signer: keySchema })
export type SignerSigned = Infer<typeof signerSignedSchema>
/** An invite as it travels: the signed array, the signature, and the signer's key. */
export type Invite = SignerSigned
/** A join as it travels: signed by the new member key, which is also `signer`. */
export type JoinRecord = SignerSigned

const inviteIdSchema = bin({ len: INVITE_ID_BYTES })
const URL_RE = /^(wss?|https?):\/\/\S+$/
const inviteArray = tuple([
  meshIdSchema,
  inviteIdSchema,
  str({ min: 1, max: 512, pattern: URL_RE }),
  keySchema,
  keySchema,
  oneOf(INVITE_ROLES),
  uint(),
  uint({ max: MAX_INVITE_USES }),
])
const joinArray = tuple([inviteIdSchema, keySchema])

/** The fields of an invite whose signature verified. */
export interface InviteFields {
  mesh: string
  inviteId: Uint8Array
  coordinatorUrl: string
  coordinatorPk: Uint8Array
  ownerPk: Uint8Array
  role: InviteRole
  expiresAt: number
  maxUses: number
}

/** The fields of a join whose signature verified. */
export interface JoinFields {
  inviteId: Uint8Array
  newMemberPk: Uint8Array
}

/** Options of `signInvite`. */
export interface SignInvite {
  /** The owner's or an admin's member key. */
  identity: Identity
  mesh: string
  /** Defaults to 16 random bytes. */
  inviteId?: Uint8Array
  coordinatorUrl: string
  coordinatorPk: Uint8Array
  ownerPk: Uint8Array
  role: InviteRole
  expiresAt: number
  /** At least 1. */
  maxUses: number
}

/** Signs an invite. */
export function signInvite(o: SignInvite): Invite {
  assertPublicKey(o.coordinatorPk, 'coordinatorPk')
  assertPublicKey(o.ownerPk, 'ownerPk')
  if (!Number.isSafeInteger(o.maxUses) || o.maxUses < 1)
    throw new RangeError('an invite allows at least one use')
  const fields = [
    o.mesh,
    o.inviteId ?? randomBytes(INVITE_ID_BYTES),
    o.coordinatorUrl,
    o.coordinatorPk,
    o.ownerPk,
    o.role,
    o.expiresAt,
    o.maxUses,
  ]
  parse(inviteArray, fields, 'MESH_ERR_MALFORMED_FRAME', 'invite fields')
  return { ...signFields('invite', fields, o.identity.secretKey), signer: o.identity.publicKey }
}

/**
 * Verifies an invite's signature by its `signer` and returns its fields (`MESH_ERR_MALFORMED_KEY`,
 * `MESH_ERR_BAD_SIGNATURE`). It does not check expiry or the signer's authority: see `verifyInvite` and
 * `Roster.applyJoin`.
 */
export function openInvite(invite: Invite): InviteFields {
  assertPublicKey(invite.signer, 'invite signer')
  const [mesh, inviteId, coordinatorUrl, coordinatorPk, ownerPk, role, expiresAt, maxUses] = openSigned(
    'invite',
    invite,
    invite.signer,
    inviteArray,
  )
  return { mesh, inviteId, coordinatorUrl, coordinatorPk, ownerPk, role, expiresAt, maxUses }
}

/**
 * What a joiner checks before using an invite: the signature and expiry (`MESH_ERR_EXPIRED`), and that the
 * keys it is about to pin are usable (`MESH_ERR_MALFORMED_KEY`). The signer's authority is checked by
 * whoever holds the roster.
 */
export function verifyInvite(invite: Invite, now: number): InviteFields {
  const fields = openInvite(invite)
  assertPublicKey(fields.coordinatorPk, 'invite coordinatorPk')
  assertPublicKey(fields.ownerPk, 'invite ownerPk')
  assertUnexpired(fields, now)
  return fields
}

/** `MESH_ERR_EXPIRED` when the invite's `expiresAt <= now`. */
export function assertUnexpired(fields: InviteFields, now: number): void {
  if (fields.expiresAt <= now) {
    throw new MeshError('MESH_ERR_EXPIRED', `invite expired at ${fields.expiresAt} (now ${now})`, {
      details: { expiresAt: fields.expiresAt, now },
    })
  }
}

/** Signs `[inviteId, newMemberPk]` with the new member key. */
export function signJoin(o: { identity: Identity; inviteId: Uint8Array }): JoinRecord {
  const fields = [o.inviteId, o.identity.publicKey]
  parse(joinArray, fields, 'MESH_ERR_MALFORMED_FRAME', 'join fields')
  return { ...signFields('join', fields, o.identity.secretKey), signer: o.identity.publicKey }
}

/**
 * Verifies a join's signature by its `signer`, which must be the key the join names
 * (`MESH_ERR_FIELD_MISMATCH` otherwise), and returns its fields.
 */
export function openJoin(join: JoinRecord): JoinFields {
  assertPublicKey(join.signer, 'join signer')
  const [inviteId, newMemberPk] = openSigned('join', join, join.signer, joinArray, (f) => f[1])
  if (!bytesEqual(newMemberPk, join.signer)) {
    throw new MeshError('MESH_ERR_FIELD_MISMATCH', 'a join is signed by a key other than the one it adds', {
      details: { field: 'newMemberPk' },
    })
  }
  return { inviteId, newMemberPk }
}

/** The invite as text for links and the CLI: `am1.<base64url(msgpack({signed, sig, signer}))>`. */
export function encodeInviteToken(invite: Invite): string {
  const { signed, sig, signer } = invite
  return INVITE_TOKEN_PREFIX + toBase64Url(encode({ signed, sig, signer }))
}

/**
 * Parses an invite token; anything that is not one gives `MESH_ERR_MALFORMED_FRAME`, never another
 * exception. The result is not verified yet: pass it to `verifyInvite`.
 */
export function decodeInviteToken(text: unknown): Invite {
  const bad = (reason: string, cause?: unknown): MeshError =>
    new MeshError('MESH_ERR_MALFORMED_FRAME', `not an invite token: ${reason}`, {
      details: { reason },
      ...(cause !== undefined && { cause }),
    })
  if (typeof text !== 'string') throw bad('not text')
  const trimmed = text.trim()
  if (!trimmed.startsWith(INVITE_TOKEN_PREFIX)) throw bad(`does not start with ${INVITE_TOKEN_PREFIX}`)
  // A token is a few hundred characters; refusing huge input early keeps decoding cheap.
  if (trimmed.length > 16 * 1024) throw bad('too long')
  const bytes = fromBase64Url(trimmed.slice(INVITE_TOKEN_PREFIX.length))
  if (bytes === null || bytes.length === 0) throw bad('not base64url')
  try {
    return parse(signerSignedSchema, decode(bytes), 'MESH_ERR_MALFORMED_FRAME', 'invite token')
  } catch (err) {
    if (err instanceof MeshError) throw bad(err.message, err)
    throw bad('undecodable', err)
  }
}
