/**
 * Delivery: at-least-once, acked by the receiver. Wires the pusher (claims, pushes, acks, receipts),
 * the group committer, the dedupe window, the rate limiter and the queue quota into the coordinator;
 * drains a presence's queue when it attaches, releases a connection's claims the moment it goes away,
 * and sweeps expired claims and expired messages.
 */
import fp from 'fastify-plugin'
import { fromHex, RECIPIENT_STATES, type FrameOf } from '../../protocol/index.js'
import type { CoordinatorContext } from '../context.js'
import { Committer } from '../delivery/committer.js'
import { Dedupe } from '../delivery/dedupe.js'
import { OutcomeUpdates } from '../delivery/outcome-updates.js'
import { Pusher } from '../delivery/pusher.js'
import { QueueQuota } from '../delivery/quota.js'
import { RateLimiter } from '../delivery/rate-limit.js'
import { Waker } from '../delivery/waker.js'
import { every } from '../ticker.js'

/** The delivery machinery other plugins (accept, fan-out, topics, HTTP send) use. */
export interface DeliveryServices {
  pusher: Pusher
  committer: Committer
  dedupe: Dedupe
  rate: RateLimiter
  quota: QueueQuota
  /** Wakes the node holding a key's connection after a delivery was queued for it elsewhere. */
  waker: Waker
}

declare module '../context.js' {
  interface CoordinatorContext {
    delivery: DeliveryServices
  }
}

export const deliveryPlugin = fp(
  async (app) => {
    const ctx = app.mesh
    const l = ctx.limits
    const quota = new QueueQuota(l, ctx.clock)
    const dedupe = new Dedupe(ctx.store, l.fastPathDedupeEntries, ctx.metrics.dedupeChecks)
    const services: DeliveryServices = {
      pusher: new Pusher(ctx, quota, new OutcomeUpdates(ctx.store, dedupe)),
      committer: new Committer(ctx.store, l.commitBatchRows),
      dedupe,
      rate: new RateLimiter(ctx.clock, l.rate),
      quota,
      waker: new Waker(ctx.store, (err) => ctx.log.warn({ err }, 'wake notify failed')),
    }
    ctx.delivery = services
    const unlisten = await Waker.listen(ctx.store, (mesh, hex) => {
      const conn = ctx.connections.get(mesh, hex)
      if (conn !== undefined) void services.pusher.drain(conn)
    })
    const unlistenReceipts = await Waker.listenReceipts(ctx.store, (r) => {
      const status = r.status as FrameOf<'delivery_receipt'>['status']
      const recipient = fromHex(r.recipientHex)
      if (!(RECIPIENT_STATES as readonly string[]).includes(status) || recipient?.length !== 32) return
      ctx.connections
        .get(r.mesh, r.senderHex)
        ?.send({ t: 'delivery_receipt', clientMessageId: r.clientMessageId, recipient, status })
    })
    const { pusher } = services

    ctx.on('client_ack', async (conn, frame) => {
      await pusher.ack(conn, frame.deliveryId, frame.status)
    })
    ctx.hooks.ready.push(async (conn) => {
      await pusher.takeOverClaims(conn)
      void pusher.drain(conn)
    })
    ctx.hooks.closed.push(async (conn) => {
      await pusher.releaseClaims(conn)
      // A newer connection of the same key may be waiting for exactly these claims.
      const p = conn.presence!
      const current = ctx.connections.get(p.mesh, p.pk)
      if (current !== undefined && current !== conn) void pusher.drain(current)
    })

    const sweeper = every(
      ctx.clock,
      l.sweepMs,
      async () => {
        await pusher.sweepClaims()
        await expire(ctx, services)
        services.rate.prune()
      },
      (err) => ctx.log.warn({ err }, 'delivery sweep failed'),
    )
    ctx.sweeps.push(() => sweeper.runNow())
    app.addHook('onClose', async () => {
      await unlisten()
      await unlistenReceipts()
      await sweeper.stop()
      await services.committer.drain()
    })
  },
  { name: 'agentmesh-delivery', dependencies: ['agentmesh-auth'] },
)

/** Drops messages past their TTL (the sender hears `expired`) and dedupe entries past their window. */
async function expire(ctx: CoordinatorContext, d: DeliveryServices): Promise<void> {
  const now = ctx.clock.now()
  const gone = await ctx.store.query<{
    mesh: string
    recipient: Uint8Array
    sender: Uint8Array
    client_message_id: string
    size: number
  }>(
    `delete from delivery where id in (select id from delivery where expires_at <= $1 limit 1000)
     returning mesh, recipient, sender, client_message_id, size`,
    [now],
  )
  for (const row of gone) d.quota.released(row.mesh, row.recipient, row.sender, row.size)
  await Promise.all(
    gone.map((row) =>
      d.pusher.receipt(row.mesh, row.sender, row.client_message_id, row.recipient, 'expired'),
    ),
  )
  await ctx.store.query(
    'delete from dedupe where (mesh, sender, client_message_id) in (select mesh, sender, client_message_id from dedupe where expires_at <= $1 limit 1000)',
    [now],
  )
}
