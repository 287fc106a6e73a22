/**
 * Presence and discovery: the store row of every key that said hello, the 90 s lease a closed socket
 * leaves (a reattach inside it is silent; after it, exactly one `peer_left`), node heartbeats (a silent
 * node's presences get a fresh lease), `list_peers` with signed records, `set_status`, and the presence
 * events a mesh sees.
 */
import fp from 'fastify-plugin'
import {
  MeshError,
  toHex,
  verifyServiceAttestation,
  verifySessionAttestation,
  type FrameOf,
  type PeerRecord,
  type Signed,
} from '../../protocol/index.js'
import type { Connection, PresenceIdentity } from '../connection.js'
import type { CoordinatorContext } from '../context.js'
import type { MeshState } from '../mesh-state.js'
import { every } from '../ticker.js'

interface PresenceRow {
  mesh: string
  pk: Uint8Array
  member_pk: Uint8Array
  role: 'control-plane' | 'session' | 'service'
  session_id: string | null
  node_id: string | null
  connected: boolean
  status: 'idle' | 'working' | 'dnd'
  summary: string | null
  display_name: string | null
  capabilities: Uint8Array | null
  attestation_signed: Uint8Array | null
  attestation_sig: Uint8Array | null
  lease_until: number | null
  left_announced: boolean
  [k: string]: unknown
}

const COLUMNS =
  'mesh, pk, member_pk, role, session_id, node_id, connected, status, summary, display_name, capabilities, attestation_signed, attestation_sig, lease_until, left_announced'

export const presencePlugin = fp(
  async (app) => {
    const ctx = app.mesh
    ctx.hooks.attach.push(async (conn) => attach(ctx, conn))
    ctx.hooks.closed.push(async (conn, { current }) => {
      if (!current) return
      const p = conn.presence!
      const now = ctx.clock.now()
      await ctx.store.query(
        `update presence set connected = false, lease_until = $3, updated_at = $4
         where mesh = $1 and pk = $2 and presence_id = $5`,
        [p.mesh, p.pk, now + ctx.limits.leaseMs, now, p.presenceId],
      )
      // The sweep after the lease sends the single peer_left unless the key came back.
      ctx.clock.setTimeout(() => void sweeper.runNow(), ctx.limits.leaseMs)
    })

    ctx.on('list_peers', async (conn, frame) => {
      const p = conn.presence!
      const state = await ctx.meshes.require(p.mesh)
      const rows = await ctx.store.query<PresenceRow>(
        `select ${COLUMNS} from presence where mesh = $1 order by role, updated_at`,
        [p.mesh],
      )
      const peers: PeerRecord[] = []
      for (const row of rows) {
        if (row.role === 'control-plane' && frame.includeDaemons !== true) continue
        const online = isOnline(row)
        if (!online && frame.includeOffline !== true) continue
        if (!state.isMember(row.member_pk) || state.revoked.has(toHex(row.pk))) continue
        peers.push(peerRecord(state, row))
      }
      conn.send({ t: 'peers', reqId: frame.reqId, peers })
    })

    ctx.on('attest_refresh', async (conn, frame: FrameOf<'attest_refresh'>) => {
      const p = conn.presence!
      verifyRefresh(p, frame.attestation, ctx.clock.now())
      const attestation = { signed: frame.attestation.signed, sig: frame.attestation.sig }
      const rows = await ctx.store.query<PresenceRow>(
        `update presence set attestation_signed = $3, attestation_sig = $4, updated_at = $5
         where mesh = $1 and pk = $2 and presence_id = $6 returning ${COLUMNS}`,
        [p.mesh, p.pk, attestation.signed, attestation.sig, ctx.clock.now(), p.presenceId],
      )
      p.attestation = attestation
      conn.send({ t: 'ok', reqId: frame.reqId })
      const row = rows[0]
      if (row !== undefined) await announce(ctx, 'updated', row, conn)
    })

    ctx.on('set_status', async (conn, frame: FrameOf<'set_status'>) => {
      const p = conn.presence!
      const rows = await ctx.store.query<PresenceRow>(
        `update presence set status = coalesce($3, status), summary = coalesce($4, summary), updated_at = $5
         where mesh = $1 and pk = $2 returning ${COLUMNS}`,
        [p.mesh, p.pk, frame.status ?? null, frame.summary ?? null, ctx.clock.now()],
      )
      const row = rows[0]
      if (row !== undefined) await announce(ctx, 'updated', row, conn)
    })

    const sweeper = every(
      ctx.clock,
      ctx.limits.sweepMs,
      async () => {
        await heartbeat(ctx)
        await sweepLeases(ctx)
      },
      (err) => ctx.log.warn({ err }, 'presence sweep failed'),
    )
    await heartbeat(ctx)
    app.addHook('onClose', async () => {
      await sweeper.stop()
    })
    ctx.sweeps.push(() => sweeper.runNow())
  },
  { name: 'agentmesh-presence', dependencies: ['agentmesh-auth'] },
)

/** True for a presence other peers should see as there: connected, or inside a lease not yet announced. */
function isOnline(row: PresenceRow): boolean {
  return row.connected || !row.left_announced
}

async function attach(ctx: CoordinatorContext, conn: Connection): Promise<boolean> {
  const p = conn.presence!
  const now = ctx.clock.now()
  const caps = p.capabilities
  const previous = await ctx.store.transaction(async (tx) => {
    const rows = await tx.query<{ left_announced: boolean }>(
      'select left_announced from presence where mesh = $1 and pk = $2 for update',
      [p.mesh, p.pk],
    )
    // A connection replaced while it waited for this lock writes nothing: its successor (which waits for
    // it to close before attaching) must be the presence the store names, or a claim takeover reading
    // the store would release the successor's claims.
    if (!conn.open) return { replaced: true as const }
    await tx.query(
      `insert into presence (mesh, pk, member_pk, role, session_id, instance_id, presence_id, node_id, connected,
         status, summary, display_name, capabilities, attestation_signed, attestation_sig, lease_until,
         left_announced, updated_at)
       values ($1, $2, $3, $4, $5, $6, $7, $8, true, $9, $10, $11, $12, $13, $14, null, false, $15)
       on conflict (mesh, pk) do update set member_pk = excluded.member_pk, role = excluded.role,
         session_id = excluded.session_id, instance_id = excluded.instance_id,
         presence_id = excluded.presence_id, node_id = excluded.node_id, connected = true,
         status = excluded.status, summary = excluded.summary, display_name = excluded.display_name,
         capabilities = excluded.capabilities, attestation_signed = excluded.attestation_signed,
         attestation_sig = excluded.attestation_sig, lease_until = null, left_announced = false,
         updated_at = excluded.updated_at`,
      [
        p.mesh,
        p.pk,
        p.memberPk,
        p.role,
        p.sessionId ?? null,
        p.instanceId,
        p.presenceId,
        ctx.nodeId,
        caps.status ?? 'idle',
        caps.summary ?? null,
        caps.displayName ?? null,
        p.capabilityBytes,
        p.attestation?.signed ?? null,
        p.attestation?.sig ?? null,
        now,
      ],
    )
    return rows[0]
  })
  if (previous !== undefined && 'replaced' in previous) return false
  const reattached = previous !== undefined && !previous.left_announced
  if (!reattached) {
    const rows = await ctx.store.query<PresenceRow>(
      `select ${COLUMNS} from presence where mesh = $1 and pk = $2`,
      [p.mesh, p.pk],
    )
    if (rows[0] !== undefined) await announce(ctx, 'joined', rows[0], conn)
  }
  return reattached
}

async function heartbeat(ctx: CoordinatorContext): Promise<void> {
  const now = ctx.clock.now()
  await ctx.store.query(
    `insert into node (id, started_at, heartbeat_at) values ($1, $2, $2)
     on conflict (id) do update set heartbeat_at = excluded.heartbeat_at`,
    [ctx.nodeId, now],
  )
  // A node that stopped heartbeating (crashed, or restarted under a new id) leaves its presences a
  // fresh lease: their peers get one chance to reattach before the single peer_left.
  const stale = await ctx.store.query<{ id: string }>(
    'delete from node where heartbeat_at < $1 and id <> $2 returning id',
    [now - ctx.limits.nodeStaleMs, ctx.nodeId],
  )
  if (stale.length > 0) {
    const ids = stale.map((r) => r.id)
    await ctx.store.query(
      `update presence set connected = false, lease_until = $2, updated_at = $3
       where connected and node_id = any($1::text[])`,
      [ids, now + ctx.limits.leaseMs, now],
    )
    ctx.log.info({ nodes: ids }, 'stale nodes: their presences got a fresh lease')
  }
}

async function sweepLeases(ctx: CoordinatorContext): Promise<void> {
  const now = ctx.clock.now()
  const gone = await ctx.store.query<PresenceRow>(
    `update presence set left_announced = true, updated_at = $1
     where (mesh, pk) in (select mesh, pk from presence
       where not connected and not left_announced and lease_until <= $1 limit 1000)
     returning ${COLUMNS}`,
    [now],
  )
  for (const row of gone) {
    // A key that reattached on this node after its row was leased is not gone.
    if (ctx.connections.get(row.mesh, row.pk) !== undefined) continue
    await announce(ctx, 'left', row, undefined)
  }
}

/** Sends a presence event to every live connection of the mesh on this node but the subject's own. */
async function announce(
  ctx: CoordinatorContext,
  event: 'joined' | 'left' | 'updated',
  row: PresenceRow,
  subject: Connection | undefined,
): Promise<void> {
  const state = await ctx.meshes.get(row.mesh)
  if (state === undefined) return
  const peer = peerRecord(state, { ...row, connected: event !== 'left', left_announced: event === 'left' })
  for (const conn of ctx.connections.inMesh(row.mesh)) {
    if (conn === subject || conn.presence?.pkHex === toHex(row.pk)) continue
    conn.send({ t: 'presence', event, peer })
  }
}

function peerRecord(state: MeshState, row: PresenceRow): PeerRecord {
  const memberHex = toHex(row.member_pk)
  const peer: PeerRecord = {
    pk: row.pk,
    memberPk: row.member_pk,
    role: row.role,
    status: row.status,
    online: isOnline(row),
  }
  if (row.session_id !== null) peer.sessionId = row.session_id
  const displayName = row.display_name ?? state.displayNames.get(memberHex)
  if (displayName !== undefined) peer.displayName = displayName
  if (row.summary !== null) peer.summary = row.summary
  if (row.node_id !== null) peer.nodeId = row.node_id
  if (row.lease_until !== null && !row.connected) peer.leaseUntil = row.lease_until
  if (row.capabilities !== null) peer.capabilities = row.capabilities
  if (row.attestation_signed !== null && row.attestation_sig !== null) {
    peer.attestation = { signed: row.attestation_signed, sig: row.attestation_sig }
  }
  const proofs = state.proofs.get(memberHex)
  if (proofs !== undefined) peer.proofs = proofs.slice(-16)
  return peer
}

/**
 * A fresh attestation for a live presence (the runtime re-mints at half the TTL): the same member must
 * sign it for the same key and id, within the TTL cap. A control-plane presence has none to refresh.
 */
function verifyRefresh(p: PresenceIdentity, att: Signed, now: number): void {
  const o = { mesh: p.mesh, memberPk: p.memberPk, now }
  if (p.role === 'session') {
    verifySessionAttestation(att, {
      ...o,
      sessionPk: p.pk,
      ...(p.sessionId !== undefined && { sessionId: p.sessionId }),
    })
  } else if (p.role === 'service') {
    verifyServiceAttestation(att, {
      ...o,
      servicePk: p.pk,
      ...(p.sessionId !== undefined && { serviceId: p.sessionId }),
    })
  } else {
    throw new MeshError(
      'MESH_ERR_MALFORMED_FRAME',
      'a control-plane presence carries no attestation to refresh',
    )
  }
}
