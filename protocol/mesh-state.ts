/**
 * One mesh's state rebuilt from its signed `mesh_event` log: the roster (rooted in the owner key), groups,
 * topics, services, revocations. The coordinator and the peer runtime replay the same log through
 * `MeshState.apply`, so both hold the same view of a version; roster records and joins are checked by
 * `Roster` (owner or admin signatures), so a coordinator cannot add a member that peers accept.
 */
import { toHex } from './encoding.js'
import type { Invite, JoinRecord } from './invite.js'
import { Roster, type RosterRecord, type RosterRole } from './roster.js'

/** A proof discovery hands out with a member's record. */
export interface MemberProof {
  kind: 'roster' | 'invite' | 'join'
  signer: Uint8Array
  signed: Uint8Array
  sig: Uint8Array
}

export interface TopicState {
  /** The member (hex) that created the topic; it, the owner and admins may change it. */
  creator: string | undefined
  /** Member keys (hex) allowed to subscribe and post; undefined = every member. */
  acl: Set<string> | undefined
  keyEpoch: number
  retentionMs: number | undefined
}

/** The change a mutation made, as its system event records it. */
export interface MeshChange {
  kind: string
  body: Record<string, unknown>
}

/** One mesh's state at `version`. */
export class MeshState {
  readonly id: string
  readonly ownerPk: Uint8Array
  version = 0
  readonly roster: Roster
  readonly groups = new Map<string, Set<string>>()
  readonly topics = new Map<string, TopicState>()
  readonly revoked = new Set<string>()
  readonly displayNames = new Map<string, string>()
  readonly proofs = new Map<string, MemberProof[]>()
  /** Services by key (hex): their member and scopes. */
  readonly services = new Map<string, { id: string; memberHex: string; scopes: string[] }>()
  allowPlaintext = true

  constructor(id: string, ownerPk: Uint8Array) {
    this.id = id
    this.ownerPk = ownerPk
    this.roster = new Roster(id, ownerPk)
  }

  /** The role of a member key that is not revoked. */
  roleOf(pk: Uint8Array | string): RosterRole | undefined {
    const hex = typeof pk === 'string' ? pk : toHex(pk)
    if (this.revoked.has(hex)) return undefined
    return this.roster.roleOf(hex)
  }

  isMember(pk: Uint8Array | string): boolean {
    return this.roleOf(pk) !== undefined
  }

  /** Current members (hex), revoked ones excluded. */
  memberHexes(): string[] {
    return this.roster
      .members()
      .map((m) => toHex(m.pk))
      .filter((hex) => !this.revoked.has(hex))
  }

  /** Applies one event of the log (replay and live changes share this). */
  apply(kind: string, body: Record<string, unknown>, at: number): void {
    switch (kind) {
      case 'genesis':
        if (typeof body['displayName'] === 'string') {
          this.displayNames.set(toHex(this.ownerPk), body['displayName'])
        }
        return
      case 'roster': {
        const record = body['record'] as RosterRecord
        const f = this.roster.applyRecord(record)
        const hex = toHex(f.subjectPk)
        if (f.action === 'remove') {
          this.proofs.delete(hex)
          this.displayNames.delete(hex)
          for (const members of this.groups.values()) members.delete(hex)
        } else {
          this.proofs.set(hex, [...(this.proofs.get(hex) ?? []), { kind: 'roster', ...record }])
          if (f.displayName !== undefined && f.displayName !== null) this.displayNames.set(hex, f.displayName)
        }
        return
      }
      case 'join': {
        const invite = body['invite'] as Invite
        const join = body['join'] as JoinRecord
        const applied = this.roster.applyJoin(invite, join, at)
        const hex = toHex(applied.memberPk)
        this.proofs.set(hex, [
          { kind: 'invite', ...invite },
          { kind: 'join', ...join },
        ])
        if (typeof body['displayName'] === 'string') this.displayNames.set(hex, body['displayName'])
        return
      }
      case 'group': {
        const members = (body['members'] as Uint8Array[]).map(toHex)
        if (members.length === 0) this.groups.delete(body['name'] as string)
        else this.groups.set(body['name'] as string, new Set(members))
        return
      }
      case 'topic': {
        const acl = body['acl'] as Uint8Array[] | null | undefined
        const retentionMs = body['retentionMs'] as number | undefined
        const prev = this.topics.get(body['name'] as string)
        const creator = body['creator']
        this.topics.set(body['name'] as string, {
          creator: creator instanceof Uint8Array ? toHex(creator) : prev?.creator,
          acl: acl === null || acl === undefined ? undefined : new Set(acl.map(toHex)),
          keyEpoch: (body['keyEpoch'] as number | undefined) ?? prev?.keyEpoch ?? 1,
          retentionMs,
        })
        return
      }
      case 'service': {
        const pk = toHex(body['pk'] as Uint8Array)
        if (body['removed'] === true) this.services.delete(pk)
        else {
          this.services.set(pk, {
            id: body['id'] as string,
            memberHex: toHex(body['memberPk'] as Uint8Array),
            scopes: body['scopes'] as string[],
          })
        }
        return
      }
      case 'revoke': {
        const hex = toHex(body['pk'] as Uint8Array)
        this.revoked.add(hex)
        for (const members of this.groups.values()) members.delete(hex)
        for (const [svc, s] of this.services) if (s.memberHex === hex) this.revoked.add(svc)
        return
      }
      case 'settings':
        if (typeof body['allowPlaintext'] === 'boolean') this.allowPlaintext = body['allowPlaintext']
        return
      default:
        // Kinds from a newer coordinator are skipped, not fatal: the log stays readable.
        return
    }
  }
}
