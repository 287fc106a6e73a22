/**
 * Mesh state: the roster, groups, topics, services and revocations of each mesh, rebuilt from the
 * signed `mesh_event` log and cached per mesh. Every change runs in one transaction that locks the mesh
 * row, applies the change, appends the coordinator-signed event and bumps `state_version`; a failed
 * change drops the cached copy, so the next reader rebuilds it from what committed.
 */
import {
  fromHex,
  MeshError,
  Roster,
  signSystemEvent,
  toHex,
  verifySystemEvent,
  type Identity,
  type Invite,
  type JoinRecord,
  type RosterRecord,
  type RosterRole,
  type Signed,
} from '../protocol/index.js'
import type { Store, Tx } from './store/types.js'

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
    const bytes = typeof pk === 'string' ? fromHex(pk) : pk
    return bytes === null ? undefined : this.roster.roleOf(bytes)
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

interface EventRow {
  version: number
  signed: Uint8Array
  sig: Uint8Array
  created_at: number
  [k: string]: unknown
}

/** The cache of mesh states, with the transactional mutation that keeps store and cache in step. */
export class MeshStates {
  readonly #store: Store
  readonly #identity: Identity
  readonly #cache = new Map<string, Promise<MeshState | undefined>>()

  constructor(store: Store, identity: Identity) {
    this.#store = store
    this.#identity = identity
  }

  /** The mesh's state, or undefined when no such mesh exists. */
  get(mesh: string): Promise<MeshState | undefined> {
    let state = this.#cache.get(mesh)
    if (state === undefined) {
      state = this.#load(this.#store, mesh)
      this.#cache.set(mesh, state)
      state.catch(() => this.#cache.delete(mesh))
    }
    return state
  }

  /** Like `get`, but a missing mesh is `MESH_ERR_UNKNOWN_MESH`. */
  async require(mesh: string): Promise<MeshState> {
    const state = await this.get(mesh)
    if (state === undefined) throw new MeshError('MESH_ERR_UNKNOWN_MESH', `no mesh ${mesh}`)
    return state
  }

  /** Drops a cached state (another node changed it, or a change failed). */
  invalidate(mesh: string): void {
    this.#cache.delete(mesh)
  }

  /** Creates a mesh with its genesis event (version 1). */
  async create(
    mesh: string,
    ownerPk: Uint8Array,
    displayName: string | undefined,
    now: number,
  ): Promise<MeshState> {
    await this.#store.transaction(async (tx) => {
      const existing = await tx.query('select 1 from mesh where id = $1', [mesh])
      if (existing.length > 0) throw new MeshError('MESH_ERR_MESH_EXISTS', `mesh ${mesh} exists`)
      await tx.query('insert into mesh (id, owner_pk, state_version, created_at) values ($1, $2, 0, $3)', [
        mesh,
        ownerPk,
        now,
      ])
      const body: Record<string, unknown> = { ownerPk }
      if (displayName !== undefined) body['displayName'] = displayName
      await this.#append(tx, mesh, 0, { kind: 'genesis', body }, now)
    })
    this.invalidate(mesh)
    return this.require(mesh)
  }

  /**
   * Applies a change in one transaction. `change` checks and applies it to the state (throwing a
   * MeshError changes nothing) and may write its own rows through `tx`; it returns the event to log.
   */
  async mutate(
    mesh: string,
    now: number,
    change: (state: MeshState, tx: Tx) => Promise<MeshChange> | MeshChange,
  ): Promise<{ state: MeshState; version: number; event: Signed }> {
    try {
      return await this.#store.transaction(async (tx) => {
        const rows = await tx.query<{ state_version: number }>(
          'select state_version from mesh where id = $1 for update',
          [mesh],
        )
        const row = rows[0]
        if (row === undefined) throw new MeshError('MESH_ERR_UNKNOWN_MESH', `no mesh ${mesh}`)
        // The cache only: loading through the store from inside its own transaction is not allowed.
        const cached = this.#cache.get(mesh)
        let state = cached === undefined ? undefined : await cached.catch(() => undefined)
        if (state === undefined || state.version !== row.state_version) {
          // Another node moved the mesh on: rebuild inside this transaction, under its lock.
          state = await this.#load(tx, mesh)
          if (state === undefined) throw new MeshError('MESH_ERR_UNKNOWN_MESH', `no mesh ${mesh}`)
          this.#cache.set(mesh, Promise.resolve(state))
        }
        const { kind, body } = await change(state, tx)
        state.apply(kind, body, now)
        const event = await this.#append(tx, mesh, row.state_version, { kind, body }, now)
        state.version = row.state_version + 1
        return { state, version: state.version, event }
      })
    } catch (err) {
      this.invalidate(mesh)
      throw err
    }
  }

  /** Log entries after `since`, oldest first (at most `limit`). */
  async eventsSince(mesh: string, since: number, limit: number): Promise<Signed[]> {
    const rows = await this.#store.query<EventRow>(
      'select version, signed, sig, created_at from mesh_event where mesh = $1 and version > $2 order by version limit $3',
      [mesh, since, limit],
    )
    return rows.map((r) => ({ signed: r.signed, sig: r.sig }))
  }

  async #append(tx: Tx, mesh: string, prevVersion: number, change: MeshChange, now: number): Promise<Signed> {
    const version = prevVersion + 1
    const event = signSystemEvent({
      coordinator: this.#identity,
      mesh,
      version,
      prevVersion,
      kind: change.kind,
      body: change.body,
    })
    await tx.query(
      'insert into mesh_event (mesh, version, prev_version, kind, signed, sig, created_at) values ($1, $2, $3, $4, $5, $6, $7)',
      [mesh, version, prevVersion, change.kind, event.signed, event.sig, now],
    )
    await tx.query('update mesh set state_version = $2 where id = $1', [mesh, version])
    return event
  }

  async #load(sql: Pick<Store, 'query'>, mesh: string): Promise<MeshState | undefined> {
    const meshRows = await sql.query<{ owner_pk: Uint8Array }>('select owner_pk from mesh where id = $1', [
      mesh,
    ])
    const meshRow = meshRows[0]
    if (meshRow === undefined) return undefined
    const state = new MeshState(mesh, Uint8Array.from(meshRow.owner_pk))
    const events = await sql.query<EventRow>(
      'select version, signed, sig, created_at from mesh_event where mesh = $1 order by version',
      [mesh],
    )
    for (const e of events) {
      const f = verifySystemEvent(
        { signed: e.signed, sig: e.sig },
        { coordinatorPk: this.#identity.publicKey, mesh },
      )
      state.apply(f.kind, f.body as Record<string, unknown>, e.created_at)
      state.version = f.version
    }
    return state
  }
}
