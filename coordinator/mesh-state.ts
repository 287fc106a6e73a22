/**
 * Mesh state: the roster, groups, topics, services and revocations of each mesh, rebuilt from the
 * signed `mesh_event` log and cached per mesh. Every change runs in one transaction that locks the mesh
 * row, applies the change, appends the coordinator-signed event and bumps `state_version`; a failed
 * change drops the cached copy, so the next reader rebuilds it from what committed.
 */
import {
  MeshError,
  MeshState,
  signSystemEvent,
  verifySystemEvent,
  type Identity,
  type MeshChange,
  type Signed,
} from '../protocol/index.js'
import type { Store, Tx } from './store/types.js'

export { MeshState, type MemberProof, type MeshChange, type TopicState } from '../protocol/index.js'

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
