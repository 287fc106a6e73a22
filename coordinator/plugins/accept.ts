/**
 * The accept path of DESIGN.md §4, in its order: the sender is whoever authenticated (a connection, or
 * a service token over HTTP) → dedupe (a retry costs no rate budget) → revocation → schema and size →
 * rate limit → route. Direct messages take the fast path when the recipient is online: pushed at once,
 * acked within `ackWaitMs`, never stored; otherwise they are committed (group commit) before the sender
 * hears `queued`, so nothing acknowledged is lost in a crash.
 */
import fp from 'fastify-plugin'
import {
  bytesEqual,
  decodeEnvelope,
  MeshError,
  toHex,
  type Envelope,
  type FrameOf,
} from '../../protocol/index.js'
import type { CoordinatorContext } from '../context.js'
import type { DedupeRow, DeliveryRow } from '../delivery/committer.js'
import { dedupeFingerprint } from '../delivery/fingerprint.js'
import type { SendOutcome } from '../delivery/dedupe.js'
import { recipientState } from '../delivery/pusher.js'
import type { MeshState } from '../mesh-state.js'

/** Who is sending: fixed by the connection's hello or the service token, never by the envelope. */
export interface Sender {
  mesh: string
  pk: Uint8Array
  pkHex: string
  memberHex: string
}

/** What a send_ack reports. */
export interface SendResult extends SendOutcome {
  clientMessageId: string
  duplicate?: boolean
}

/** A send that passed the checks, on its way to a route. */
export interface Accepting {
  sender: Sender
  env: Envelope
  /** The envelope as the sender encoded it (what is stored and pushed). */
  bytes: Uint8Array
  state: MeshState
  /** The envelope's dedupe fingerprint (SHA-256, see delivery/fingerprint.ts). */
  hash: Uint8Array
}

/** A route for the channels other plugins own (group fan-out, topics). */
export type ChannelRoute = (a: Accepting) => Promise<SendOutcome>

declare module '../context.js' {
  interface CoordinatorContext {
    routes: Partial<Record<'group' | 'topic', ChannelRoute>>
  }
}

export const acceptPlugin = fp(
  async (app) => {
    const ctx = app.mesh
    ctx.routes = {}
    ctx.on('send', async (conn, frame: FrameOf<'send'>) => {
      const p = conn.presence!
      const result = await acceptSend(ctx, p, frame.envelope, { first: frame.first === true })
      conn.send({ t: 'send_ack', reqId: frame.reqId, ...result })
    })
  },
  { name: 'agentmesh-accept', dependencies: ['agentmesh-delivery'] },
)

/**
 * Accepts one encoded envelope from `sender`; resolves when the outcome may be acknowledged. `first`: the
 * sender says no coordinator has seen this id (the send frame's flag), so only this node's memory is
 * asked whether it is a duplicate, not the store.
 */
export async function acceptSend(
  ctx: CoordinatorContext,
  sender: Sender,
  bytes: Uint8Array,
  o: { first?: boolean } = {},
): Promise<SendResult> {
  if (ctx.closing) throw new MeshError('MESH_ERR_SHUTTING_DOWN', 'the coordinator is shutting down')
  const env = decodeEnvelope(bytes)
  const clientMessageId = env.clientMessageId
  if (!bytesEqual(env.from, sender.pk)) {
    throw new MeshError(
      'MESH_ERR_FROM_MISMATCH',
      "the envelope's from is not the key this connection authenticated",
      {
        details: { clientMessageId },
      },
    )
  }
  if (env.mesh !== sender.mesh) {
    throw new MeshError('MESH_ERR_WRONG_MESH', `the envelope is for mesh ${env.mesh}, not ${sender.mesh}`, {
      details: { expected: sender.mesh, got: env.mesh },
    })
  }
  const d = ctx.delivery
  const hash = dedupeFingerprint(bytes)
  const claim = await d.dedupe.claim(sender.mesh, env.from, sender.pkHex, clientMessageId, hash, o)
  if ('prior' in claim) return { ...claim.prior, clientMessageId, duplicate: true }

  const outcome = (async (): Promise<SendOutcome> => {
    const state = await ctx.meshes.require(sender.mesh)
    if (state.revoked.has(sender.memberHex) || state.revoked.has(sender.pkHex)) {
      throw new MeshError('MESH_ERR_REVOKED', 'the sender was revoked')
    }
    if (!(env.body instanceof Uint8Array) && !state.allowPlaintext) {
      throw new MeshError(
        'MESH_ERR_PLAINTEXT_FORBIDDEN',
        'this mesh accepts only end-to-end encrypted bodies',
      )
    }
    // Buckets are per member and per mesh (one key may be a member of several meshes).
    d.rate.take(`${sender.mesh}/${sender.memberHex}`, bytes.length)
    return route(ctx, { sender, env, bytes, state, hash })
  })()
  claim.ticket.settle(outcome)
  return { ...(await outcome), clientMessageId }
}

function route(ctx: CoordinatorContext, a: Accepting): Promise<SendOutcome> {
  switch (a.env.channel) {
    case 'dm':
    case 'rpc':
    case 'stream':
      return routeDirect(ctx, a)
    case 'group':
    case 'topic': {
      const r = ctx.routes[a.env.channel]
      if (r === undefined) {
        return Promise.reject(
          new MeshError('MESH_ERR_INVALID_ENVELOPE', `${a.env.channel} is not served here`),
        )
      }
      return r(a)
    }
    case 'system':
      return Promise.reject(
        new MeshError('MESH_ERR_INVALID_ENVELOPE', 'only the coordinator sends system envelopes'),
      )
  }
}

/** Expiry of a queued copy: the queue TTL, or the envelope's own `expiresAt` when sooner. */
export function expiryOf(ctx: CoordinatorContext, env: Envelope, now: number): number {
  const ttl = now + ctx.limits.queueTtlMs
  return env.meta.expiresAt === undefined ? ttl : Math.min(ttl, env.meta.expiresAt)
}

/**
 * Throws unless `target` is a key the mesh knows: a member, a service, or a session that said hello.
 * `hex` is the target in hex when the caller has it.
 */
export async function assertKnownTarget(
  ctx: CoordinatorContext,
  state: MeshState,
  target: Uint8Array,
  hex = toHex(target),
): Promise<void> {
  if (state.revoked.has(hex)) throw new MeshError('MESH_ERR_REVOKED', 'the recipient was revoked')
  if (state.isMember(hex) || state.services.has(hex)) return
  if (ctx.connections.get(state.id, hex) !== undefined) return
  const rows = await ctx.store.query<{ member_pk: Uint8Array }>(
    'select member_pk from presence where mesh = $1 and pk = $2',
    [state.id, target],
  )
  const row = rows[0]
  if (row === undefined) {
    throw new MeshError(
      'MESH_ERR_UNKNOWN_KEY',
      'the target is not a key of this mesh (a full key is required)',
      {
        details: { key: hex },
      },
    )
  }
  if (!state.isMember(row.member_pk)) throw new MeshError('MESH_ERR_REVOKED', 'the recipient was revoked')
}

async function routeDirect(
  ctx: CoordinatorContext,
  { sender, env, bytes, state, hash }: Accepting,
): Promise<SendOutcome> {
  const d = ctx.delivery
  const target = env.target as Uint8Array
  const targetHex = toHex(target)
  await assertKnownTarget(ctx, state, target, targetHex)
  const now = ctx.clock.now()
  const id = d.pusher.nextId()
  let attempts = 0
  let claim: { owner: string; until: number } | undefined
  const live = ctx.connections.get(sender.mesh, targetHex)
  if (live !== undefined && live.open && d.pusher.fits(live, bytes.length)) {
    const r = await d.pusher.pushFast(live, id, bytes, sender.mesh, targetHex)
    if (r !== 'timeout' && r !== 'closed') {
      ctx.metrics.sends.inc({ path: 'fast' })
      const outcome: SendOutcome = { state: 'delivered', recipientOnline: true }
      if (r !== 'ok' && r !== 'duplicate') outcome.recipients = { [targetHex]: recipientState(r) }
      return outcome
    }
    attempts = 1
    if (r === 'timeout') {
      claim = { owner: live.presence!.presenceId, until: ctx.clock.now() + ctx.limits.claimLeaseMs }
    }
  }
  // Counted against the quota only when stored; a copy already pushed (and claimed) is stored anyway,
  // since refusing it now would lose what the recipient may hold.
  try {
    await d.quota.reserve(ctx.store, sender.mesh, target, env.from, bytes.length, attempts > 0)
  } catch (err) {
    d.pusher.abandon(id)
    throw err
  }
  // Built only here: most DMs take the fast path and are never stored.
  const row: DeliveryRow = {
    id,
    mesh: sender.mesh,
    recipient: target,
    sender: env.from,
    clientMessageId: env.clientMessageId,
    envelope: bytes,
    queuedAt: now,
    expiresAt: expiryOf(ctx, env, now),
    attempts,
    ...(claim !== undefined && { claimOwner: claim.owner, claimUntil: claim.until }),
  }
  const dedupe: DedupeRow = {
    mesh: sender.mesh,
    sender: env.from,
    clientMessageId: env.clientMessageId,
    hash,
    state: 'queued',
    createdAt: now,
    expiresAt: now + ctx.limits.dedupeTtlMs,
  }
  try {
    await d.committer.commit([row], dedupe)
  } catch (err) {
    d.quota.released(sender.mesh, target, env.from, bytes.length)
    d.pusher.abandon(id)
    throw err
  }
  ctx.metrics.sends.inc({ path: 'queued' })
  if (claim !== undefined) await d.pusher.committed(id)
  const now2 = ctx.connections.get(sender.mesh, targetHex)
  if (now2 !== undefined && claim === undefined) void d.pusher.drain(now2)
  // The recipient may be connected to another node of this store.
  if (now2 === undefined) d.waker.wake(sender.mesh, targetHex)
  return { state: 'queued', recipientOnline: now2 !== undefined }
}
