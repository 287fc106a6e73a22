/**
 * A mesh-state log built without a coordinator process: coordinator-signed system events in order, and
 * `writeMeshLog`, which puts a mesh and its log straight into a coordinator's store (the `mesh` and
 * `mesh_event` tables of `001_init.sql`), the way a coordinator that ran for a long time left them. The
 * restart bench and the snapshot tests stand on it.
 *
 * The cheapest event a runtime accepts is a `group` change: one coordinator signature to verify and a
 * map entry to set (a roster record or a join also carries an owner signature to check).
 */
import type { Sql } from '../../coordinator/store/types.js'
import { signSystemEvent, type Identity, type Signed } from '../../protocol/index.js'

/** One event as the `mesh_event` table keeps it. */
export interface LoggedEvent {
  version: number
  kind: string
  record: Signed
}

/** A mesh's signed log, grown one event at a time from genesis. */
export class MeshLog {
  readonly mesh: string
  readonly owner: Identity
  readonly coordinator: Identity
  readonly events: LoggedEvent[] = []

  /** Starts the log with its genesis (version 1). */
  constructor(o: { mesh: string; owner: Identity; coordinator: Identity; displayName?: string }) {
    this.mesh = o.mesh
    this.owner = o.owner
    this.coordinator = o.coordinator
    this.append('genesis', {
      ownerPk: o.owner.publicKey,
      ...(o.displayName !== undefined && { displayName: o.displayName }),
    })
  }

  /** The version of the last event. */
  get version(): number {
    return this.events.length
  }

  /** Signs and appends one event; returns its signed record. */
  append(kind: string, body: Record<string, unknown>): Signed {
    const version = this.version + 1
    const record = signSystemEvent({
      coordinator: this.coordinator,
      mesh: this.mesh,
      version,
      prevVersion: version - 1,
      kind,
      body,
    })
    this.events.push({ version, kind, record })
    return record
  }

  /**
   * Appends `n` group changes: groups `g0`…`g{groups-1}` in turn, each set to `members` (a realistic
   * log: the same few groups edited again and again).
   */
  appendGroupChanges(n: number, members: readonly Uint8Array[], groups = 16): void {
    for (let i = 0; i < n; i++) this.append('group', { name: `g${i % groups}`, members: [...members] })
  }

  /** The signed records after `since`, as `mesh_events` returns them. */
  since(since: number): Signed[] {
    return this.events.slice(since).map((e) => e.record)
  }
}

/**
 * Writes `log` into a coordinator store: the mesh row (created if missing) at the log's version and
 * every event not in `mesh_event` yet, 1,000 rows a statement. Run it while no coordinator holds the
 * mesh cached (before it starts, or on a node that never loaded the mesh): a running one would not see
 * rows written behind its back.
 */
export async function writeMeshLog(sql: Pick<Sql, 'query'>, log: MeshLog, now = Date.now()): Promise<void> {
  await sql.query(
    `insert into mesh (id, owner_pk, state_version, created_at) values ($1, $2, 0, $3)
     on conflict (id) do nothing`,
    [log.mesh, log.owner.publicKey, now],
  )
  const rows = await sql.query<{ v: number | string | null }>(
    'select max(version) as v from mesh_event where mesh = $1',
    [log.mesh],
  )
  const from = Number(rows[0]?.v ?? 0)
  for (let i = from; i < log.events.length; i += 1000) {
    const batch = log.events.slice(i, i + 1000)
    await sql.query(
      `insert into mesh_event (mesh, version, prev_version, kind, signed, sig, created_at)
       select $1, * from unnest($2::bigint[], $3::bigint[], $4::text[], $5::bytea[], $6::bytea[], $7::bigint[])`,
      [
        log.mesh,
        batch.map((e) => e.version),
        batch.map((e) => e.version - 1),
        batch.map((e) => e.kind),
        batch.map((e) => e.record.signed),
        batch.map((e) => e.record.sig),
        batch.map(() => now),
      ],
    )
  }
  await sql.query('update mesh set state_version = $2 where id = $1', [log.mesh, log.version])
}
