/**
 * The roster: who belongs to a mesh, rooted in the owner key rather than in the coordinator (DESIGN.md §2).
 *
 * Genesis pins the owner. Everything after is a signed record that every peer re-verifies: `roster`
 * records signed by the owner or an admin over
 *
 *     [mesh, seq, action, subjectPk, role, displayName, issuedAt]
 *
 * and joins (an invite by the owner or an admin plus the newcomer's `join` signature). A compromised
 * coordinator can withhold or delay these, but it cannot add a key that peers will encrypt to.
 *
 * Authority:
 * - the owner is fixed at genesis: no record adds, changes or removes an owner (transfer needs a new mesh
 *   until key rotation lands);
 * - the owner adds, promotes, demotes and removes admins and members, and invites either role;
 * - an admin adds and removes members and invites members; it cannot touch the owner or any admin
 *   (itself included), nor grant `admin`;
 * - members sign no roster records.
 * Authority is judged when a record is applied, so an invite signed by an admin who has since been
 * demoted or removed no longer admits anyone.
 *
 * Records carry `seq`, which must be exactly one more than the last applied record's; joins carry no
 * `seq` (the newcomer cannot know it) and are ordered by the mesh-state log that delivers them.
 */
import { bytesEqual, toHex } from './encoding.js'
import { MeshError } from './errors.js'
import { keySchema, meshIdSchema } from './ids.js'
import {
  assertUnexpired,
  openInvite,
  openJoin,
  type Invite,
  type JoinRecord,
  type SignerSigned,
} from './invite.js'
import { assertPublicKey, type Identity } from './keys.js'
import { nullable, oneOf, parse, str, tuple, uint } from './schema.js'
import { openSigned, signFields } from './signing.js'

/** A member's role in a mesh. */
export const ROSTER_ROLES = ['owner', 'admin', 'member'] as const
export type RosterRole = (typeof ROSTER_ROLES)[number]

/** What a roster record does to its subject. */
export const ROSTER_ACTIONS = ['add', 'set-role', 'remove'] as const
export type RosterAction = (typeof ROSTER_ACTIONS)[number]

/** A roster record as it travels: the signed array, the signature and the signer's key. */
export type RosterRecord = SignerSigned

const rosterArray = tuple([
  meshIdSchema,
  uint(),
  oneOf(ROSTER_ACTIONS),
  keySchema,
  oneOf(ROSTER_ROLES),
  nullable(str({ max: 128 })),
  uint(),
])

/** The fields of a roster record whose signature verified. */
export interface RosterFields {
  mesh: string
  seq: number
  action: RosterAction
  subjectPk: Uint8Array
  /** The role granted by `add` and `set-role`; always `member` on `remove`. */
  role: RosterRole
  /** Set by `add`; on `set-role`, a non-nil name replaces the old one. */
  displayName: string | null
  issuedAt: number
}

/** Options of `signRosterRecord`. */
export interface SignRosterRecord {
  /** The owner's or an admin's member key. */
  identity: Identity
  mesh: string
  seq: number
  action: RosterAction
  subjectPk: Uint8Array
  /** Required for `add` and `set-role`; `remove` always signs `member`. */
  role?: RosterRole
  displayName?: string
  issuedAt: number
}

/** Signs a roster record. */
export function signRosterRecord(o: SignRosterRecord): RosterRecord {
  if (o.action !== 'remove' && o.role === undefined) throw new TypeError(`a roster ${o.action} needs a role`)
  const role = o.action === 'remove' ? 'member' : o.role
  const fields = [o.mesh, o.seq, o.action, o.subjectPk, role, o.displayName ?? null, o.issuedAt]
  parse(rosterArray, fields, 'MESH_ERR_MALFORMED_FRAME', 'roster fields')
  return { ...signFields('roster', fields, o.identity.secretKey), signer: o.identity.publicKey }
}

/** Verifies a roster record's signature by its `signer` and returns its fields; authority is the Roster's. */
export function openRosterRecord(record: RosterRecord): RosterFields {
  assertPublicKey(record.signer, 'roster signer')
  const [mesh, seq, action, subjectPk, role, displayName, issuedAt] = openSigned(
    'roster',
    record,
    record.signer,
    rosterArray,
  )
  if (action === 'remove' && role !== 'member') {
    throw new MeshError('MESH_ERR_MALFORMED_FRAME', 'a roster remove signs the role `member`')
  }
  return { mesh, seq, action, subjectPk, role, displayName, issuedAt }
}

/** One member as the roster holds it. */
export interface RosterMember {
  pk: Uint8Array
  role: RosterRole
  displayName?: string
}

/** What `Roster.applyJoin` admitted. */
export interface AppliedJoin {
  memberPk: Uint8Array
  role: RosterRole
  inviteId: Uint8Array
  /** Uses of this invite so far, this one included. */
  uses: number
}

function notAuthorized(reason: string, details: Record<string, unknown> = {}): MeshError {
  return new MeshError('MESH_ERR_NOT_AUTHORIZED', reason, { details })
}

/** A roster action that contradicts the current state (not a signature or authority problem). */
function conflict(reason: string): MeshError {
  return new MeshError('MESH_ERR_ROSTER_CONFLICT', reason, { details: { reason } })
}

/**
 * A mesh's verified membership, built by applying records and joins in log order. Each apply either
 * checks everything and changes the state, or throws a `MeshError` and changes nothing.
 */
export class Roster {
  readonly mesh: string
  readonly ownerPk: Uint8Array
  readonly #members = new Map<string, RosterMember>()
  readonly #inviteUses = new Map<string, number>()
  #seq = 0
  #version = 0

  /** Genesis: the owner is pinned and is the only member. */
  constructor(mesh: string, ownerPk: Uint8Array) {
    parse(meshIdSchema, mesh, 'MESH_ERR_MALFORMED_FRAME', 'mesh id')
    assertPublicKey(ownerPk, 'owner key')
    this.mesh = mesh
    // Copies: decoded keys are views into frame buffers that may be reused.
    this.ownerPk = Uint8Array.from(ownerPk)
    this.#members.set(toHex(ownerPk), { pk: this.ownerPk, role: 'owner' })
  }

  /** How many records and joins have been applied. */
  get version(): number {
    return this.#version
  }

  /** The `seq` of the last applied record (0 at genesis); the next record must carry `seq + 1`. */
  get seq(): number {
    return this.#seq
  }

  /** The role of a key, or `undefined` when it is not a member. */
  roleOf(pk: Uint8Array | string): RosterRole | undefined {
    return this.#members.get(typeof pk === 'string' ? pk.toLowerCase() : toHex(pk))?.role
  }

  /** True when the key is a member (in any role). */
  isMember(pk: Uint8Array): boolean {
    return this.#members.has(toHex(pk))
  }

  /** Every member, owner first, then in the order they were added. */
  members(): RosterMember[] {
    return [...this.#members.values()].map((m) => ({ ...m, pk: m.pk.slice() }))
  }

  /** How many times an invite has been used. */
  inviteUses(inviteId: Uint8Array): number {
    return this.#inviteUses.get(toHex(inviteId)) ?? 0
  }

  /**
   * Applies a roster record. Errors: `MESH_ERR_MALFORMED_KEY`, `MESH_ERR_BAD_SIGNATURE`, `MESH_ERR_WRONG_MESH`,
   * `MESH_ERR_OUT_OF_ORDER` (a `seq` gap, with `{expected, got}`), `MESH_ERR_ROSTER_CONFLICT` (an action
   * that contradicts the state: adding a member, changing a non-member), `MESH_ERR_NOT_AUTHORIZED` (see the module comment).
   */
  applyRecord(record: RosterRecord): RosterFields {
    const f = openRosterRecord(record)
    this.#assertMesh(f.mesh, 'roster record')
    const expected = this.#seq + 1
    if (f.seq !== expected) {
      throw new MeshError('MESH_ERR_OUT_OF_ORDER', `roster record seq ${f.seq} is not ${expected}`, {
        details: { expected, got: f.seq },
      })
    }
    const subject = this.#members.get(toHex(f.subjectPk))
    this.#authorize(record.signer, f.action, subject?.role, f.role)
    if (f.action === 'add') {
      if (subject !== undefined) throw conflict('the subject is already a member')
      assertPublicKey(f.subjectPk, 'roster subject')
    } else if (subject === undefined) {
      throw conflict(`the subject of a roster ${f.action} is not a member`)
    }

    this.#seq = f.seq
    this.#version++
    const key = toHex(f.subjectPk)
    if (f.action === 'remove') this.#members.delete(key)
    else {
      const displayName = f.displayName ?? subject?.displayName
      const pk = Uint8Array.from(f.subjectPk)
      this.#members.set(key, { pk, role: f.role, ...(displayName !== undefined && { displayName }) })
    }
    return f
  }

  /**
   * Applies a join: an invite by the owner or an admin and the newcomer's join signature. Errors:
   * `MESH_ERR_BAD_SIGNATURE`, `MESH_ERR_WRONG_MESH`, `MESH_ERR_WRONG_SIGNER` (the invite names another
   * owner), `MESH_ERR_NOT_AUTHORIZED` (its signer may not invite to that role), `MESH_ERR_EXPIRED`,
   * `MESH_ERR_FIELD_MISMATCH` (the join is for another invite), `MESH_ERR_ROSTER_CONFLICT` (the key is
   * already a member),
   * `MESH_ERR_INVITE_EXHAUSTED`.
   */
  applyJoin(invite: Invite, join: JoinRecord, now: number): AppliedJoin {
    const inv = openInvite(invite)
    this.#assertMesh(inv.mesh, 'invite')
    if (!bytesEqual(inv.ownerPk, this.ownerPk)) {
      throw new MeshError('MESH_ERR_WRONG_SIGNER', 'the invite names another owner than the pinned one')
    }
    const signerRole = this.roleOf(invite.signer)
    if (signerRole !== 'owner' && !(signerRole === 'admin' && inv.role === 'member')) {
      throw notAuthorized(
        signerRole === 'admin'
          ? 'only the owner invites admins'
          : 'the invite is not signed by the owner or a current admin',
        { signerRole: signerRole ?? null, role: inv.role },
      )
    }
    assertUnexpired(inv, now)
    const j = openJoin(join)
    if (!bytesEqual(j.inviteId, inv.inviteId)) {
      throw new MeshError('MESH_ERR_FIELD_MISMATCH', 'the join is for another invite', {
        details: { field: 'inviteId' },
      })
    }
    const uses = this.inviteUses(inv.inviteId)
    const { maxUses } = inv
    if (uses >= maxUses) {
      throw new MeshError('MESH_ERR_INVITE_EXHAUSTED', `the invite was used ${uses} of ${maxUses} times`, {
        details: { uses, maxUses },
      })
    }
    if (this.isMember(j.newMemberPk)) throw conflict('the joining key is already a member')

    this.#inviteUses.set(toHex(inv.inviteId), uses + 1)
    const memberPk = Uint8Array.from(j.newMemberPk)
    this.#members.set(toHex(memberPk), { pk: memberPk, role: inv.role })
    this.#version++
    return { memberPk, role: inv.role, inviteId: Uint8Array.from(inv.inviteId), uses: uses + 1 }
  }

  #assertMesh(mesh: string, what: string): void {
    if (mesh !== this.mesh) {
      throw new MeshError('MESH_ERR_WRONG_MESH', `${what} is for mesh ${mesh}, not ${this.mesh}`, {
        details: { expected: this.mesh, got: mesh },
      })
    }
  }

  /** The authority rules of the module comment. */
  #authorize(
    signer: Uint8Array,
    action: RosterAction,
    subjectRole: RosterRole | undefined,
    role: RosterRole,
  ): void {
    const signerRole = this.roleOf(signer)
    const details = { signerRole: signerRole ?? null, action, subjectRole: subjectRole ?? null, role }
    if (signerRole !== 'owner' && signerRole !== 'admin') {
      throw notAuthorized('only the owner or an admin signs roster records', details)
    }
    if (subjectRole === 'owner') throw notAuthorized('the owner is fixed at genesis', details)
    const grants = action === 'remove' ? undefined : role
    if (grants === 'owner') throw notAuthorized('no record grants the owner role', details)
    if (signerRole === 'admin' && (subjectRole === 'admin' || grants === 'admin')) {
      throw notAuthorized('only the owner adds, changes or removes admins', details)
    }
  }
}
