/**
 * Meshes and membership: creation (admin token, or open registration), joins by signed invite, signed
 * admin requests (roster records, groups, topics, services, revocation, kicks), the mesh-state log
 * (`mesh_events{since}`), and the signed `system` envelope every online peer gets for each change.
 */
import fp from 'fastify-plugin'
import {
  arr,
  bool,
  bytesEqual,
  CLOSE,
  decodeInviteToken,
  either,
  keySchema,
  MAX_FRAME_BYTES,
  meshIdSchema,
  MeshError,
  nameSchema,
  nullable,
  obj,
  openInvite,
  opt,
  parse,
  randomBytes,
  sealSystemEnvelope,
  signerSignedSchema,
  str,
  toBase64Url,
  toHex,
  fromHex,
  uint,
  encodeEnvelope,
  verifyAdminRequest,
  type RosterRole,
} from '../../protocol/index.js'
import type { CoordinatorContext } from '../context.js'
import { bearer, send, tokenHash, tokenMatches } from '../http.js'
import type { MeshChange, MeshState } from '../mesh-state.js'
import type { Tx } from '../store/types.js'

const createBody = obj({ mesh: meshIdSchema, ownerPk: keySchema, displayName: opt(str({ max: 128 })) })
const joinBody = obj({
  invite: either(str({ max: 4096 }), signerSignedSchema),
  join: signerSignedSchema,
  displayName: opt(str({ max: 128 })),
})

const ANY_MEMBER: readonly RosterRole[] = ['owner', 'admin', 'member']
const ADMINS: readonly RosterRole[] = ['owner', 'admin']

interface AdminMethod {
  allowed: readonly RosterRole[]
  run(ctx: CoordinatorContext, mesh: string, signer: Uint8Array, args: unknown): Promise<unknown>
}

export const meshesPlugin = fp(
  async (app) => {
    const ctx = app.mesh

    app.post('/v1/meshes', async (req, reply) => {
      if (!ctx.openRegistration && !tokenMatches(bearer(req), ctx.adminToken)) {
        throw new MeshError('MESH_ERR_UNAUTHENTICATED', 'creating a mesh needs the admin token')
      }
      const body = parse(createBody, req.body, 'MESH_ERR_MALFORMED_FRAME', 'mesh creation')
      const state = await ctx.meshes.create(body.mesh, body.ownerPk, body.displayName, ctx.clock.now())
      ctx.log.info({ mesh: body.mesh }, 'mesh created')
      return send(req, reply, 201, {
        mesh: state.id,
        coordinatorPk: ctx.identity.publicKey,
        stateVersion: state.version,
      })
    })

    app.post<{ Params: { mesh: string } }>('/v1/meshes/:mesh/join', async (req, reply) => {
      const body = parse(joinBody, req.body, 'MESH_ERR_MALFORMED_FRAME', 'join')
      const invite = typeof body.invite === 'string' ? decodeInviteToken(body.invite) : body.invite
      // An invite names the coordinator its joiners will pin: one for another coordinator is refused
      // before it uses up one of its uses here.
      const named = openInvite(invite).coordinatorPk
      if (!bytesEqual(named, ctx.identity.publicKey)) {
        throw new MeshError('MESH_ERR_FIELD_MISMATCH', 'the invite names another coordinator key', {
          details: { field: 'coordinatorPk', expected: toHex(ctx.identity.publicKey), got: toHex(named) },
        })
      }
      const event: Record<string, unknown> = { invite, join: body.join }
      if (body.displayName !== undefined) event['displayName'] = body.displayName
      const { state } = await mutateAndAnnounce(ctx, req.params.mesh, () => ({ kind: 'join', body: event }))
      return send(req, reply, 200, {
        mesh: state.id,
        role: state.roleOf(body.join.signer),
        stateVersion: state.version,
        coordinatorPk: ctx.identity.publicKey,
        ownerPk: state.ownerPk,
      })
    })

    ctx.on('mesh_events', async (conn, frame) => {
      const events = await ctx.meshes.eventsSince(conn.presence!.mesh, frame.since, 1000)
      conn.send({ t: 'mesh_events_result', reqId: frame.reqId, events: oneFrameOf(events) })
    })

    ctx.on('admin', async (conn, frame) => {
      const p = conn.presence!
      const method = METHODS[frame.method]
      if (method === undefined) {
        throw new MeshError('MESH_ERR_MALFORMED_FRAME', `unknown admin method ${frame.method}`, {
          details: { method: frame.method },
        })
      }
      const state = await ctx.meshes.require(p.mesh)
      const req = verifyAdminRequest(frame, {
        challengeNonce: conn.nonce,
        mesh: p.mesh,
        roleOf: (pk) => state.roleOf(pk),
        allowed: method.allowed,
      })
      const result = await method.run(ctx, p.mesh, req.signer, req.args)
      conn.send({ t: 'admin_result', reqId: frame.reqId, result: result ?? null })
    })
  },
  { name: 'agentmesh-meshes', dependencies: ['agentmesh-auth'] },
)

/** Room a `mesh_events_result` frame keeps for its own fields and each event's msgpack headers. */
const EVENTS_FRAME_SLACK = 256
const PER_EVENT_OVERHEAD = 24

/**
 * The first events that fit in one frame (always at least one): a thousand events of ~130 bytes each
 * exceed MAX_FRAME_BYTES, and a reply that does not encode would leave the runtime unable to catch up.
 * The runtime asks again from the last version it got.
 */
function oneFrameOf<T extends { signed: Uint8Array; sig: Uint8Array }>(events: T[]): T[] {
  let bytes = EVENTS_FRAME_SLACK
  for (let i = 0; i < events.length; i++) {
    bytes += events[i]!.signed.length + events[i]!.sig.length + PER_EVENT_OVERHEAD
    if (bytes > MAX_FRAME_BYTES && i > 0) return events.slice(0, i)
  }
  return events
}

/**
 * Runs a mesh change and sends its signed system envelope to every live connection of the mesh on
 * this node (peers apply it when its `prevVersion` is theirs, else they ask `mesh_events`).
 */
export async function mutateAndAnnounce(
  ctx: CoordinatorContext,
  mesh: string,
  change: (state: MeshState, tx: Tx) => Promise<MeshChange> | MeshChange,
): Promise<{ state: MeshState; version: number }> {
  let logged: MeshChange | undefined
  const { state, version } = await ctx.meshes.mutate(mesh, ctx.clock.now(), async (s, tx) => {
    logged = await change(s, tx)
    return logged
  })
  const env = sealSystemEnvelope({
    mesh,
    coordinator: ctx.identity,
    clientMessageId: ctx.delivery.pusher.nextId(),
    version,
    prevVersion: version - 1,
    kind: logged!.kind,
    body: logged!.body,
  })
  const bytes = encodeEnvelope(env)
  for (const conn of ctx.connections.inMesh(mesh)) {
    conn.send({ t: 'push', deliveryId: `system-${version}`, envelope: bytes })
  }
  return { state, version }
}

const recordArgs = obj({ record: signerSignedSchema })
const groupArgs = obj({ name: nameSchema, members: arr(keySchema, { max: 1024 }) })
const topicArgs = obj({
  name: nameSchema,
  acl: opt(nullable(arr(keySchema, { max: 1024 }))),
  retentionMs: opt(uint()),
})
const keyArgs = obj({ pk: keySchema })
const serviceArgs = obj({
  id: str({ min: 1, max: 64 }),
  pk: keySchema,
  scopes: arr(str({ max: 64 }), { max: 32 }),
  transport: str({ max: 32 }),
  webhookUrl: opt(str({ max: 2048 })),
})
const settingsArgs = obj({ allowPlaintext: opt(bool()) })

const METHODS: Record<string, AdminMethod> = {
  roster: {
    allowed: ADMINS,
    async run(ctx, mesh, _signer, args) {
      const { record } = parse(recordArgs, args, 'MESH_ERR_MALFORMED_FRAME', 'roster args')
      const { version } = await mutateAndAnnounce(ctx, mesh, () => ({ kind: 'roster', body: { record } }))
      return { stateVersion: version }
    },
  },
  group_set: {
    allowed: ADMINS,
    async run(ctx, mesh, _signer, args) {
      const a = parse(groupArgs, args, 'MESH_ERR_MALFORMED_FRAME', 'group args')
      const { version } = await mutateAndAnnounce(ctx, mesh, (state) => {
        for (const pk of a.members) {
          if (!state.isMember(pk)) {
            throw new MeshError('MESH_ERR_UNKNOWN_KEY', 'a group member is not a member of the mesh', {
              details: { key: toHex(pk) },
            })
          }
        }
        return { kind: 'group', body: { name: a.name, members: a.members } }
      })
      return { stateVersion: version }
    },
  },
  topic_create: {
    allowed: ANY_MEMBER,
    async run(ctx, mesh, signer, args) {
      const a = parse(topicArgs, args, 'MESH_ERR_MALFORMED_FRAME', 'topic args')
      const { version } = await mutateAndAnnounce(ctx, mesh, async (state, tx) => {
        // Any member may create a topic; changing one (its ACL above all) is for its creator, the owner
        // or an admin, or a member could re-create a topic to let itself in.
        const existing = state.topics.get(a.name)
        const role = state.roleOf(signer)
        if (
          existing !== undefined &&
          existing.creator !== toHex(signer) &&
          role !== 'owner' &&
          role !== 'admin'
        ) {
          throw new MeshError(
            'MESH_ERR_NOT_AUTHORIZED',
            `topic ${a.name} exists; only its creator or an admin changes it`,
            {
              details: { topic: a.name },
            },
          )
        }
        await tx.query(
          `insert into topic (mesh, name, acl, retention_ms, changed_version) values ($1, $2, $3, $4, 0)
           on conflict (mesh, name) do update set acl = excluded.acl, retention_ms = excluded.retention_ms`,
          [mesh, a.name, a.acl ?? null, a.retentionMs ?? null],
        )
        const body: Record<string, unknown> = {
          name: a.name,
          acl: a.acl ?? null,
          creator: existing?.creator === undefined ? signer : fromHex(existing.creator),
        }
        if (a.retentionMs !== undefined) body['retentionMs'] = a.retentionMs
        return { kind: 'topic', body }
      })
      return { stateVersion: version }
    },
  },
  service_register: {
    allowed: ANY_MEMBER,
    async run(ctx, mesh, signer, args) {
      const a = parse(serviceArgs, args, 'MESH_ERR_MALFORMED_FRAME', 'service args')
      const token = `ams1.${toBase64Url(randomBytes(32))}`
      const { version } = await mutateAndAnnounce(ctx, mesh, async (_state, tx) => {
        await tx.query(
          `insert into service (mesh, id, pk, member_pk, scopes, token_hash, transport, webhook_url, created_at)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
          [
            mesh,
            a.id,
            a.pk,
            signer,
            a.scopes,
            tokenHash(token),
            a.transport,
            a.webhookUrl ?? null,
            ctx.clock.now(),
          ],
        )
        return { kind: 'service', body: { id: a.id, pk: a.pk, memberPk: signer, scopes: a.scopes } }
      })
      // The token is shown once; only its hash is kept.
      return { stateVersion: version, token }
    },
  },
  settings: {
    allowed: ['owner'],
    async run(ctx, mesh, _signer, args) {
      const a = parse(settingsArgs, args, 'MESH_ERR_MALFORMED_FRAME', 'settings args')
      const body: Record<string, unknown> = {}
      if (a.allowPlaintext !== undefined) body['allowPlaintext'] = a.allowPlaintext
      const { version } = await mutateAndAnnounce(ctx, mesh, () => ({ kind: 'settings', body }))
      return { stateVersion: version }
    },
  },
  kick: {
    allowed: ADMINS,
    async run(ctx, mesh, _signer, args) {
      const { pk } = parse(keyArgs, args, 'MESH_ERR_MALFORMED_FRAME', 'kick args')
      const conn = ctx.connections.get(mesh, pk)
      if (conn === undefined) return { kicked: false, reason: 'not_connected' }
      // A daemon's control-plane connection is its member's lifeline; kicking it is a revoke's job.
      if (conn.presence?.role === 'control-plane') return { kicked: false, reason: 'skipped_control_plane' }
      conn.fail(new MeshError('MESH_ERR_NOT_AUTHORIZED', 'kicked by an admin'), CLOSE.KICKED)
      return { kicked: true }
    },
  },
  revoke: {
    allowed: ADMINS,
    async run(ctx, mesh, signer, args) {
      const { pk } = parse(keyArgs, args, 'MESH_ERR_MALFORMED_FRAME', 'revoke args')
      const { version, state } = await mutateAndAnnounce(ctx, mesh, (s) => {
        const role = s.roleOf(pk)
        if (role === 'owner') throw new MeshError('MESH_ERR_NOT_AUTHORIZED', 'the owner cannot be revoked')
        if (role === 'admin' && s.roleOf(signer) !== 'owner') {
          throw new MeshError('MESH_ERR_NOT_AUTHORIZED', 'only the owner revokes an admin')
        }
        return { kind: 'revoke', body: { pk } }
      })
      await ctx.revoke(state, pk)
      return { stateVersion: version }
    },
  },
}
