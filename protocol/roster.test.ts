import fc from 'fast-check'
import { beforeAll, describe, expect, it } from 'vitest'
import { plain } from '../test/support/arbitrary.js'
import { encode } from './codec.js'
import { initCrypto } from './crypto.js'
import { toBase64Url } from './encoding.js'
import { MeshError } from './errors.js'
import {
  decodeInviteToken,
  encodeInviteToken,
  signInvite,
  signJoin,
  verifyInvite,
  type Invite,
  type InviteRole,
} from './invite.js'
import { createIdentity, type Identity } from './keys.js'
import { Roster, signRosterRecord, type RosterAction, type RosterRole } from './roster.js'
import { thrownCode } from '../test/support/rejection.js'

const NOW = 1_700_000_000_000
const DAY = 24 * 60 * 60 * 1000
const MESH = 'acme'

let owner: Identity
let admin: Identity
let member: Identity
let coordinator: Identity

beforeAll(async () => {
  await initCrypto()
  owner = createIdentity('member')
  admin = createIdentity('member')
  member = createIdentity('member')
  coordinator = createIdentity('coordinator')
})

function record(by: Identity, seq: number, action: RosterAction, subject: Identity, role?: RosterRole) {
  return signRosterRecord({
    identity: by,
    mesh: MESH,
    seq,
    action,
    subjectPk: subject.publicKey,
    ...(role !== undefined && { role }),
    displayName: action === 'add' ? 'someone' : undefined,
    issuedAt: NOW,
  })
}

/** A roster where the owner made `admin` an admin and `admin` added `member`. */
function populated(): Roster {
  const roster = new Roster(MESH, owner.publicKey)
  roster.applyRecord(record(owner, 1, 'add', admin, 'admin'))
  roster.applyRecord(record(admin, 2, 'add', member, 'member'))
  return roster
}

function invite(
  by: Identity,
  o: { role?: InviteRole; maxUses?: number; expiresAt?: number; ownerPk?: Uint8Array } = {},
) {
  return signInvite({
    identity: by,
    mesh: MESH,
    coordinatorUrl: 'wss://mesh.example.com/v1/ws',
    coordinatorPk: coordinator.publicKey,
    ownerPk: o.ownerPk ?? owner.publicKey,
    role: o.role ?? 'member',
    expiresAt: o.expiresAt ?? NOW + DAY,
    maxUses: o.maxUses ?? 1,
  })
}

function join(inv: Invite, who: Identity = createIdentity('member')) {
  const { inviteId } = verifyInvite(inv, NOW)
  return signJoin({ identity: who, inviteId })
}

describe('roster records', () => {
  it('the owner adds an admin, the admin adds a member', () => {
    const roster = populated()
    expect(roster.roleOf(owner.publicKey)).toBe('owner')
    expect(roster.roleOf(admin.publicKey)).toBe('admin')
    expect(roster.roleOf(member.publicKey)).toBe('member')
    expect(roster.members().map((m) => m.role)).toEqual(['owner', 'admin', 'member'])
    expect(roster.version).toBe(2)
    expect(roster.seq).toBe(2)
  })

  it('a member cannot add anyone (NOT_AUTHORIZED)', () => {
    const roster = populated()
    const stranger = createIdentity('member')
    expect(thrownCode(() => roster.applyRecord(record(member, 3, 'add', stranger, 'member')))).toBe(
      'MESH_ERR_NOT_AUTHORIZED',
    )
    expect(roster.isMember(stranger.publicKey)).toBe(false)
  })

  it('an admin cannot remove the owner, touch another admin, or grant admin', () => {
    const roster = populated()
    const other = createIdentity('member')
    roster.applyRecord(record(owner, 3, 'add', other, 'admin'))
    expect(thrownCode(() => roster.applyRecord(record(admin, 4, 'remove', owner)))).toBe(
      'MESH_ERR_NOT_AUTHORIZED',
    )
    expect(thrownCode(() => roster.applyRecord(record(admin, 4, 'remove', other)))).toBe(
      'MESH_ERR_NOT_AUTHORIZED',
    )
    expect(thrownCode(() => roster.applyRecord(record(admin, 4, 'set-role', member, 'admin')))).toBe(
      'MESH_ERR_NOT_AUTHORIZED',
    )
    expect(thrownCode(() => roster.applyRecord(record(owner, 4, 'set-role', member, 'owner')))).toBe(
      'MESH_ERR_NOT_AUTHORIZED',
    )
    expect(thrownCode(() => roster.applyRecord(record(owner, 4, 'remove', owner)))).toBe(
      'MESH_ERR_NOT_AUTHORIZED',
    )
    // Refused records change nothing; the next valid one still takes seq 4.
    roster.applyRecord(record(admin, 4, 'remove', member))
    expect(roster.isMember(member.publicKey)).toBe(false)
    roster.applyRecord(record(owner, 5, 'set-role', other, 'member'))
    expect(roster.roleOf(other.publicKey)).toBe('member')
  })

  it('refuses a record out of order with OUT_OF_ORDER {expected, got}', () => {
    const roster = new Roster(MESH, owner.publicKey)
    const err = (() => {
      try {
        roster.applyRecord(record(owner, 2, 'add', admin, 'admin'))
      } catch (e) {
        return e as MeshError
      }
      throw new Error('accepted')
    })()
    expect(err.code).toBe('MESH_ERR_OUT_OF_ORDER')
    expect(err.details).toEqual({ expected: 1, got: 2 })
    roster.applyRecord(record(owner, 1, 'add', admin, 'admin'))
    expect(thrownCode(() => roster.applyRecord(record(owner, 1, 'add', member, 'member')))).toBe(
      'MESH_ERR_OUT_OF_ORDER',
    )
  })

  it('refuses tampered records, other meshes and actions that contradict the state', () => {
    const roster = populated()
    const rec = record(owner, 3, 'add', createIdentity('member'), 'member')
    const signed = Uint8Array.from(rec.signed)
    signed[signed.length - 1]! ^= 1
    expect(thrownCode(() => roster.applyRecord({ ...rec, signed }))).toBe('MESH_ERR_BAD_SIGNATURE')
    const other = signRosterRecord({
      identity: owner,
      mesh: 'other',
      seq: 3,
      action: 'add',
      subjectPk: createIdentity('member').publicKey,
      role: 'member',
      issuedAt: NOW,
    })
    expect(thrownCode(() => roster.applyRecord(other))).toBe('MESH_ERR_WRONG_MESH')
    expect(thrownCode(() => roster.applyRecord(record(owner, 3, 'add', member, 'member')))).toBe(
      'MESH_ERR_ROSTER_CONFLICT',
    )
    expect(thrownCode(() => roster.applyRecord(record(owner, 3, 'remove', createIdentity('member'))))).toBe(
      'MESH_ERR_ROSTER_CONFLICT',
    )
    expect(roster.version).toBe(2)
  })

  it('a removed admin signs nothing more', () => {
    const roster = populated()
    roster.applyRecord(record(owner, 3, 'remove', admin))
    expect(thrownCode(() => roster.applyRecord(record(admin, 4, 'remove', member)))).toBe(
      'MESH_ERR_NOT_AUTHORIZED',
    )
  })
})

describe('joins', () => {
  it('a join via an admin invite adds the member with the invite role', () => {
    const roster = populated()
    const inv = invite(admin)
    const newcomer = createIdentity('member')
    const applied = roster.applyJoin(inv, join(inv, newcomer), NOW)
    expect(applied).toMatchObject({ role: 'member', uses: 1 })
    expect(roster.roleOf(newcomer.publicKey)).toBe('member')
    expect(roster.version).toBe(3)
  })

  it('counts uses and refuses past maxUses with INVITE_EXHAUSTED', () => {
    const roster = populated()
    const inv = invite(owner, { role: 'admin', maxUses: 2 })
    roster.applyJoin(inv, join(inv), NOW)
    roster.applyJoin(inv, join(inv), NOW)
    expect(thrownCode(() => roster.applyJoin(inv, join(inv), NOW))).toBe('MESH_ERR_INVITE_EXHAUSTED')
    expect(roster.members().filter((m) => m.role === 'admin')).toHaveLength(3)
  })

  it('refuses an expired invite with EXPIRED', () => {
    const roster = populated()
    const inv = invite(admin, { expiresAt: NOW + 1000 })
    const j = join(inv)
    expect(thrownCode(() => roster.applyJoin(inv, j, NOW + 1000))).toBe('MESH_ERR_EXPIRED')
    expect(thrownCode(() => verifyInvite(inv, NOW + 1000))).toBe('MESH_ERR_EXPIRED')
  })

  it('refuses an invite signed by a non-admin, or an admin inviting an admin, with NOT_AUTHORIZED', () => {
    const roster = populated()
    const byMember = invite(member)
    expect(thrownCode(() => roster.applyJoin(byMember, join(byMember), NOW))).toBe('MESH_ERR_NOT_AUTHORIZED')
    const adminByAdmin = invite(admin, { role: 'admin' })
    expect(thrownCode(() => roster.applyJoin(adminByAdmin, join(adminByAdmin), NOW))).toBe(
      'MESH_ERR_NOT_AUTHORIZED',
    )
  })

  it('refuses an invite naming another owner with WRONG_SIGNER', () => {
    const roster = populated()
    const inv = invite(admin, { ownerPk: createIdentity('member').publicKey })
    expect(thrownCode(() => roster.applyJoin(inv, join(inv), NOW))).toBe('MESH_ERR_WRONG_SIGNER')
  })

  it('refuses a join for another invite, a join signed by another key, or a key already a member', () => {
    const roster = populated()
    const inv = invite(admin, { maxUses: 5 })
    expect(thrownCode(() => roster.applyJoin(inv, join(invite(admin)), NOW))).toBe('MESH_ERR_FIELD_MISMATCH')
    const j = join(inv)
    expect(
      thrownCode(() => roster.applyJoin(inv, { ...j, signer: createIdentity('member').publicKey }, NOW)),
    ).toBe('MESH_ERR_WRONG_SIGNER')
    expect(thrownCode(() => roster.applyJoin(inv, join(inv, member), NOW))).toBe('MESH_ERR_ROSTER_CONFLICT')
    expect(roster.inviteUses(verifyInvite(inv, NOW).inviteId)).toBe(0)
  })
})

describe('invite tokens', () => {
  it('round-trip through text', () => {
    const inv = invite(admin)
    const token = encodeInviteToken(inv)
    expect(token).toMatch(/^am1\.[A-Za-z0-9_-]+$/)
    expect(plain(decodeInviteToken(`  ${token}\n`))).toEqual(plain(inv))
    expect(verifyInvite(decodeInviteToken(token), NOW)).toMatchObject({
      mesh: MESH,
      coordinatorUrl: 'wss://mesh.example.com/v1/ws',
      role: 'member',
      maxUses: 1,
    })
  })

  it('garbage gives MESH_ERR_MALFORMED_FRAME, never another exception', () => {
    const samples: unknown[] = [
      '',
      'am1.',
      'am2.abcd',
      'am1.!!!',
      'am1.a',
      `am1.${toBase64Url(encode({ signed: 'x', sig: 1 }))}`,
      `am1.${toBase64Url(encode([1, 2, 3]))}`,
      `am1.${toBase64Url(new Uint8Array([0xc1]))}`,
      `am1.${'A'.repeat(20000)}`,
      null,
      42,
    ]
    for (const s of samples) expect(thrownCode(() => decodeInviteToken(s))).toBe('MESH_ERR_MALFORMED_FRAME')
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
        expect(thrownCode(() => decodeInviteToken(`am1.${toBase64Url(bytes)}`))).toBe(
          'MESH_ERR_MALFORMED_FRAME',
        )
      }),
      { numRuns: 300 },
    )
    fc.assert(
      fc.property(fc.string({ maxLength: 300 }), (text) => {
        expect(thrownCode(() => decodeInviteToken(`am1.${text}`))).toBe('MESH_ERR_MALFORMED_FRAME')
      }),
      { numRuns: 300 },
    )
  })
})
