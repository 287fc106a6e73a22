/**
 * Group and broadcast fan-out: a `group` envelope (`@name`, or `*` for every member) becomes one
 * delivery per member, each copy holding only that member's key box, each pushed, claimed and acked on
 * its own. The key set must be the group as the coordinator holds it (the sender's own member aside):
 * otherwise `MESH_ERR_STALE_ROSTER {added, removed}` and nothing is delivered.
 */
import fp from 'fastify-plugin'
import { encodeEnvelope, MeshError } from '../../protocol/index.js'
import type { Connection } from '../connection.js'
import type { CoordinatorContext } from '../context.js'
import type { DedupeRow, DeliveryRow } from '../delivery/committer.js'
import type { RecipientState, SendOutcome } from '../delivery/dedupe.js'
import { recipientState } from '../delivery/pusher.js'
import type { MeshState } from '../mesh-state.js'
import { expiryOf, type Accepting } from './accept.js'

export const fanoutPlugin = fp(
  async (app) => {
    const ctx = app.mesh
    ctx.routes.group = (a) => fanOut(ctx, a)
  },
  { name: 'agentmesh-fanout', dependencies: ['agentmesh-accept'] },
)

/** The member keys (hex) a group target names, or `MESH_ERR_UNKNOWN_GROUP`. */
export function groupMembers(state: MeshState, target: string): Set<string> {
  if (target === '*') return new Set(state.memberHexes())
  const name = target.startsWith('@') ? target.slice(1) : target
  const members = state.groups.get(name)
  if (members === undefined) {
    throw new MeshError('MESH_ERR_UNKNOWN_GROUP', `no group ${name} in this mesh`, {
      details: { group: name },
    })
  }
  return new Set([...members].filter((hex) => state.isMember(hex)))
}

interface Copy {
  hex: string
  row: DeliveryRow
  live: Connection | undefined
  result?: RecipientState
}

async function fanOut(
  ctx: CoordinatorContext,
  { sender, env, state, hash }: Accepting,
): Promise<SendOutcome> {
  const d = ctx.delivery
  const expected = groupMembers(state, env.target as string)
  expected.delete(sender.memberHex)
  const keys = env.keys ?? {}
  const sealedTo = new Set(Object.keys(keys))
  // The sender may list itself (PROTOCOL.md §5.4): its sealing key, which for a session or a service is
  // not its member's key. Neither is a recipient.
  sealedTo.delete(sender.memberHex)
  sealedTo.delete(sender.pkHex)
  const added = [...expected].filter((hex) => !sealedTo.has(hex))
  const removed = [...sealedTo].filter((hex) => !expected.has(hex))
  if (added.length > 0 || removed.length > 0) {
    throw new MeshError('MESH_ERR_STALE_ROSTER', 'the key set differs from the group at the current state', {
      details: { added, removed, stateVersion: state.version, rosterVersion: env.rosterVersion ?? null },
    })
  }

  const now = ctx.clock.now()
  const copies: Copy[] = []
  const reserved: Copy[] = []
  try {
    for (const hex of sealedTo) {
      const box = keys[hex]!
      const copyBytes = encodeEnvelope({ ...env, keys: { [hex]: box } })
      const recipient = Uint8Array.from(Buffer.from(hex, 'hex'))
      const copy: Copy = {
        hex,
        live: ctx.connections.get(sender.mesh, hex),
        row: {
          id: d.pusher.nextId(),
          mesh: sender.mesh,
          recipient,
          sender: env.from,
          clientMessageId: env.clientMessageId,
          envelope: copyBytes,
          queuedAt: now,
          expiresAt: expiryOf(ctx, env, now),
          attempts: 0,
        },
      }
      // All or nothing: one full queue refuses the whole send before anything is pushed.
      await d.quota.reserve(ctx.store, sender.mesh, recipient, env.from, copyBytes.length)
      reserved.push(copy)
      copies.push(copy)
    }
  } catch (err) {
    for (const c of reserved)
      d.quota.released(c.row.mesh, c.row.recipient, c.row.sender, c.row.envelope.length)
    throw err
  }

  // Fast path for every online member at once; each waits for its own ack.
  await Promise.all(
    copies.map(async (c) => {
      if (c.live === undefined || !c.live.open || !d.pusher.fits(c.live, c.row.envelope.length)) return
      const r = await d.pusher.pushFast(c.live, c.row.id, c.row.envelope, sender.mesh, c.hex)
      if (r === 'timeout' || r === 'closed') {
        c.row.attempts = 1
        if (r === 'timeout') {
          c.row.claimOwner = c.live.presence!.presenceId
          c.row.claimUntil = ctx.clock.now() + ctx.limits.claimLeaseMs
        }
        return
      }
      c.result = recipientState(r)
      d.quota.released(c.row.mesh, c.row.recipient, c.row.sender, c.row.envelope.length)
    }),
  )

  const queued = copies.filter((c) => c.result === undefined)
  const recipients: Record<string, RecipientState> = {}
  for (const c of copies) recipients[c.hex] = c.result ?? 'queued'
  const outcome: SendOutcome = {
    state: queued.length === 0 ? 'delivered' : queued.length === copies.length ? 'queued' : 'partial',
    recipients,
  }
  const dedupe: DedupeRow = {
    mesh: sender.mesh,
    sender: env.from,
    clientMessageId: env.clientMessageId,
    hash,
    state: outcome.state,
    recipients,
    createdAt: now,
    expiresAt: now + ctx.limits.dedupeTtlMs,
  }
  try {
    await d.committer.commit(
      queued.map((c) => c.row),
      dedupe,
    )
  } catch (err) {
    for (const c of queued) {
      d.quota.released(c.row.mesh, c.row.recipient, c.row.sender, c.row.envelope.length)
      d.pusher.abandon(c.row.id)
    }
    throw err
  }
  ctx.metrics.sends.inc({ path: queued.length === 0 ? 'fast' : 'queued' })
  for (const c of queued) {
    if (c.row.claimOwner !== undefined) await d.pusher.committed(c.row.id)
    else {
      const live = ctx.connections.get(sender.mesh, c.hex)
      if (live !== undefined) void d.pusher.drain(live)
      else d.waker.wake(sender.mesh, c.hex)
    }
  }
  return outcome
}
