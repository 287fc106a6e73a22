/**
 * Topics (DESIGN.md §4, "Fan-out / Topics"): a post takes a gap-free offset in the transaction that
 * stores it, and each subscribed connection has a pump that pushes the topic's messages in offset
 * order from its cursor, within a window of unacked offsets. A cumulative `topic_ack` moves the
 * subscriber's committed offset, from which the next `subscribe` resumes. Topic keys travel between
 * subscribers: `topic_key_request` goes to the live subscribers, `topic_key_grant` to its addressee, or
 * is kept until the addressee subscribes. The coordinator never opens a topic post.
 */
import fp from 'fastify-plugin'
import { MeshError, toHex, type FrameOf } from '../../protocol/index.js'
import type { Connection } from '../connection.js'
import type { CoordinatorContext } from '../context.js'
import type { SendOutcome } from '../delivery/dedupe.js'
import type { MeshState, TopicState } from '../mesh-state.js'
import { every } from '../ticker.js'
import type { Accepting } from './accept.js'

/** The most messages one store read of a pump returns. */
const BATCH = 256

export const topicsPlugin = fp(
  (app, _opts, done) => {
    const ctx = app.mesh
    const topics = new Topics(ctx)
    ctx.routes.topic = (a) => topics.post(a)
    ctx.on('subscribe', (conn, frame) => topics.subscribe(conn, frame))
    ctx.on('unsubscribe', (conn, frame) => topics.unsubscribe(conn, frame))
    ctx.on('topic_ack', (conn, frame) => Promise.resolve(topics.ack(conn, frame)))
    ctx.on('topic_key_request', (conn, frame) => topics.keyRequest(conn, frame))
    ctx.on('topic_key_grant', (conn, frame) => topics.keyGrant(conn, frame))
    ctx.hooks.closed.push((conn) => Promise.resolve(topics.stopAll(conn)))

    const sweeper = every(
      ctx.clock,
      ctx.limits.sweepMs,
      () => topics.expire(),
      (err) => ctx.log.warn({ err }, 'topic sweep failed'),
    )
    ctx.sweeps.push(() => sweeper.runNow())
    app.addHook('onClose', async () => {
      await sweeper.stop()
      await topics.commits.drain()
    })
    done()
  },
  { name: 'agentmesh-topics', dependencies: ['agentmesh-delivery', 'agentmesh-accept'] },
)

/** The topic named `name`, or `MESH_ERR_UNKNOWN_TOPIC`. */
function requireTopic(state: MeshState, name: string): TopicState {
  const topic = state.topics.get(name)
  if (topic === undefined) {
    throw new MeshError('MESH_ERR_UNKNOWN_TOPIC', `no topic ${name} in mesh ${state.id}`, {
      details: { topic: name },
    })
  }
  return topic
}

/** True when the member may subscribe to, post to and hand keys around in the topic. */
function allowed(state: MeshState, topic: TopicState, memberHex: string): boolean {
  return state.isMember(memberHex) && (topic.acl === undefined || topic.acl.has(memberHex))
}

function assertAllowed(state: MeshState, topic: TopicState, name: string, memberHex: string): void {
  if (!allowed(state, topic, memberHex)) {
    throw new MeshError('MESH_ERR_NOT_AUTHORIZED', `not in the ACL of topic ${name}`, {
      details: { topic: name },
    })
  }
}

class Topics {
  readonly commits: CommitWriter
  readonly #ctx: CoordinatorContext
  /** Live pumps by `mesh/topic`, and by connection and topic. */
  readonly #byTopic = new Map<string, Set<TopicPump>>()
  readonly #byConn = new Map<Connection, Map<string, TopicPump>>()

  constructor(ctx: CoordinatorContext) {
    this.#ctx = ctx
    this.commits = new CommitWriter(ctx)
  }

  /**
   * Stores a post under the next offset: the `topic` row stays locked from the offset's update to the
   * commit, so posts commit in offset order and a reader never sees offset n+1 without n.
   */
  async post({ sender, env, bytes, state, hash }: Accepting): Promise<SendOutcome> {
    const name = (env.target as string).slice(1)
    assertAllowed(state, requireTopic(state, name), name, sender.memberHex)
    const ctx = this.#ctx
    const now = ctx.clock.now()
    const stored = await ctx.store.transaction(async (tx) => {
      // First, so that a post another node accepted under the same id adds nothing.
      const fresh = await tx.query(
        `insert into dedupe (mesh, sender, client_message_id, envelope_hash, state, created_at, expires_at)
         values ($1, $2, $3, $4, 'queued', $5, $6) on conflict do nothing returning 1 as fresh`,
        [sender.mesh, env.from, env.clientMessageId, hash, now, now + ctx.limits.dedupeTtlMs],
      )
      if (fresh.length === 0) return false
      const rows = await tx.query<{ offset: number; retention_ms: number | null }>(
        `update topic set next_offset = next_offset + 1 where mesh = $1 and name = $2
         returning next_offset - 1 as "offset", retention_ms`,
        [sender.mesh, name],
      )
      const row = rows[0]
      if (row === undefined) {
        throw new MeshError('MESH_ERR_UNKNOWN_TOPIC', `no topic ${name}`, { details: { topic: name } })
      }
      await tx.query(
        `insert into topic_message (mesh, topic, "offset", sender, client_message_id, envelope, created_at, expires_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8)`,
        [
          sender.mesh,
          name,
          row.offset,
          env.from,
          env.clientMessageId,
          bytes,
          now,
          now + (row.retention_ms ?? ctx.limits.queueTtlMs),
        ],
      )
      return true
    })
    if (stored) {
      ctx.metrics.sends.inc({ path: 'topic' })
      for (const pump of this.#byTopic.get(`${sender.mesh}/${name}`) ?? []) pump.wake()
    }
    // Stored under its offset; no subscriber has acked it yet.
    return { state: 'queued' }
  }

  /** The connection's presence, its mesh state and the topic, once the topic exists and its ACL allows it. */
  async #access(conn: Connection, name: string) {
    const p = conn.presence!
    const state = await this.#ctx.meshes.require(p.mesh)
    const topic = requireTopic(state, name)
    assertAllowed(state, topic, name, p.memberHex)
    return { p, state, topic }
  }

  async subscribe(conn: Connection, frame: FrameOf<'subscribe'>): Promise<void> {
    const ctx = this.#ctx
    const { p } = await this.#access(conn, frame.topic)
    // An ack this node is still writing for the key belongs before the cursor is read.
    await this.commits.settled(p.mesh, frame.topic, p.pkHex)
    const now = ctx.clock.now()
    const { from, head } = await ctx.store.transaction(async (tx) => {
      const heads = await tx.query<{ next_offset: number }>(
        'select next_offset from topic where mesh = $1 and name = $2',
        [p.mesh, frame.topic],
      )
      const headRow = heads[0]
      if (headRow === undefined) throw new MeshError('MESH_ERR_UNKNOWN_TOPIC', `no topic ${frame.topic}`)
      const explicit = frame.fromOffset === undefined ? null : Math.min(frame.fromOffset, headRow.next_offset)
      const rows = await tx.query<{ committed_offset: number }>(
        `insert into topic_subscription (mesh, topic, subscriber, committed_offset, updated_at)
         values ($1, $2, $3, $4, $6)
         on conflict (mesh, topic, subscriber) do update
           set committed_offset = coalesce($5::bigint, topic_subscription.committed_offset), updated_at = $6
         returning committed_offset`,
        [p.mesh, frame.topic, p.pk, explicit ?? headRow.next_offset, explicit, now],
      )
      return { from: rows[0]!.committed_offset, head: headRow.next_offset }
    })
    if (!conn.open) return
    // Registered, answered and started in one turn: no push can precede `subscribed`.
    const pump = this.#register(conn, frame.topic, from)
    conn.send({ t: 'subscribed', reqId: frame.reqId, topic: frame.topic, fromOffset: from, headOffset: head })
    pump.wake()
    await this.#deliverGrants(conn, frame.topic)
  }

  async unsubscribe(conn: Connection, frame: FrameOf<'unsubscribe'>): Promise<void> {
    const p = conn.presence!
    this.#stop(conn, frame.topic)
    await this.commits.settled(p.mesh, frame.topic, p.pkHex)
    await this.#ctx.store.query(
      'delete from topic_subscription where mesh = $1 and topic = $2 and subscriber = $3',
      [p.mesh, frame.topic, p.pk],
    )
    conn.send({ t: 'ok', reqId: frame.reqId })
  }

  /** Synchronous on purpose: a `subscribe` that follows the ack on any connection waits for its write. */
  ack(conn: Connection, frame: FrameOf<'topic_ack'>): void {
    const pump = this.#byConn.get(conn)?.get(frame.topic)
    // An ack for a topic this connection does not follow changes nothing.
    if (pump === undefined) return
    const committed = pump.ack(frame.offset)
    if (committed !== undefined) {
      const p = conn.presence!
      this.commits.set(p.mesh, frame.topic, p.pk, committed)
    }
  }

  async keyRequest(conn: Connection, frame: FrameOf<'topic_key_request'>): Promise<void> {
    const { p, state, topic } = await this.#access(conn, frame.topic)
    const request: FrameOf<'topic_key_request'> = {
      t: 'topic_key_request',
      topic: frame.topic,
      epoch: frame.epoch,
      from: p.pk,
    }
    for (const pump of this.#byTopic.get(`${p.mesh}/${frame.topic}`) ?? []) {
      if (pump.conn === conn || !allowed(state, topic, pump.conn.presence!.memberHex)) continue
      pump.conn.send(request)
    }
  }

  /** Delivers a sealed key to its addressee if it is connected here, else keeps it until it subscribes. */
  async keyGrant(conn: Connection, frame: FrameOf<'topic_key_grant'>): Promise<void> {
    const ctx = this.#ctx
    const { p, state, topic } = await this.#access(conn, frame.topic)
    const live = ctx.connections.get(p.mesh, frame.to)
    if (live !== undefined) {
      assertAllowed(state, topic, frame.topic, live.presence!.memberHex)
      const grant = {
        t: 'topic_key_grant',
        topic: frame.topic,
        epoch: frame.epoch,
        to: frame.to,
        sealed: frame.sealed,
        from: p.pk,
      } as const
      if (live.send(grant)) return
    }
    await ctx.store.query(
      `insert into topic_key_grant (mesh, topic, epoch, to_pk, from_pk, sealed, created_at) values ($1, $2, $3, $4, $5, $6, $7)
       on conflict (mesh, topic, epoch, to_pk) do update set from_pk = excluded.from_pk, sealed = excluded.sealed,
         created_at = excluded.created_at`,
      [p.mesh, frame.topic, frame.epoch, frame.to, p.pk, frame.sealed, ctx.clock.now()],
    )
    // The addressee may have subscribed while the row was being written; its subscribe read no grant then.
    const addressee = ctx.connections.get(p.mesh, frame.to)
    if (addressee !== undefined && this.#byConn.get(addressee)?.has(frame.topic) === true) {
      await this.#deliverGrants(addressee, frame.topic)
    }
  }

  /** Stops every pump of a connection that went away. */
  stopAll(conn: Connection): void {
    for (const name of [...(this.#byConn.get(conn)?.keys() ?? [])]) this.#stop(conn, name)
  }

  /** Drops messages past their retention and key grants nobody collected within the queue TTL. */
  async expire(): Promise<void> {
    const now = this.#ctx.clock.now()
    await this.#ctx.store.query(
      `delete from topic_message where (mesh, topic, "offset") in
         (select mesh, topic, "offset" from topic_message where expires_at <= $1 limit 1000)`,
      [now],
    )
    await this.#ctx.store.query(
      `delete from topic_key_grant where (mesh, topic, epoch, to_pk) in
         (select mesh, topic, epoch, to_pk from topic_key_grant where created_at <= $1 limit 1000)`,
      [now - this.#ctx.limits.queueTtlMs],
    )
  }

  /** Sends the connection the grants kept for its key; each is forgotten once sent. */
  async #deliverGrants(conn: Connection, name: string): Promise<void> {
    const p = conn.presence!
    const rows = await this.#ctx.store.query<{ epoch: number; from_pk: Uint8Array; sealed: Uint8Array }>(
      'select epoch, from_pk, sealed from topic_key_grant where mesh = $1 and topic = $2 and to_pk = $3 order by epoch',
      [p.mesh, name, p.pk],
    )
    for (const { epoch, from_pk: from, sealed } of rows) {
      if (!conn.send({ t: 'topic_key_grant', topic: name, epoch, to: p.pk, sealed, from })) return
      // Only this very grant: a newer one for the same epoch may have replaced it meanwhile.
      await this.#ctx.store.query(
        'delete from topic_key_grant where mesh = $1 and topic = $2 and epoch = $3 and to_pk = $4 and sealed = $5',
        [p.mesh, name, epoch, p.pk, sealed],
      )
    }
  }

  #register(conn: Connection, name: string, from: number): TopicPump {
    // A second subscribe on the same connection restarts the pump at the new cursor.
    this.#stop(conn, name)
    const p = conn.presence!
    const pump: TopicPump = new TopicPump(this.#ctx, conn, name, from, () => this.#stop(conn, name, pump))
    const key = `${p.mesh}/${name}`
    let set = this.#byTopic.get(key)
    if (set === undefined) this.#byTopic.set(key, (set = new Set<TopicPump>()))
    set.add(pump)
    let mine = this.#byConn.get(conn)
    if (mine === undefined) this.#byConn.set(conn, (mine = new Map<string, TopicPump>()))
    mine.set(name, pump)
    return pump
  }

  /** Stops the connection's pump of `name` (only if it is still `only`, when given). */
  #stop(conn: Connection, name: string, only?: TopicPump): void {
    const mine = this.#byConn.get(conn)
    const pump = mine?.get(name)
    if (pump === undefined || (only !== undefined && pump !== only)) return
    pump.stopped = true
    mine!.delete(name)
    if (mine!.size === 0) this.#byConn.delete(conn)
    const key = `${conn.presence!.mesh}/${name}`
    const set = this.#byTopic.get(key)
    set?.delete(pump)
    if (set?.size === 0) this.#byTopic.delete(key)
  }
}

/**
 * Pushes one topic to one connection, strictly in offset order from its cursor, with at most
 * `pushWindow` messages (and `pushWindowBytes`, at least one message) pushed and not yet acked.
 */
class TopicPump {
  readonly conn: Connection
  readonly name: string
  stopped = false
  readonly #ctx: CoordinatorContext
  readonly #onDenied: () => void
  /** The next offset to push, and the next offset not acked. */
  #next: number
  #acked: number
  readonly #inFlight: { offset: number; size: number }[] = []
  #inFlightBytes = 0
  #running = false
  #again = false

  constructor(ctx: CoordinatorContext, conn: Connection, name: string, from: number, onDenied: () => void) {
    this.#ctx = ctx
    this.conn = conn
    this.name = name
    this.#next = from
    this.#acked = from
    this.#onDenied = onDenied
  }

  /** There may be more to push: new posts, or room in the window. */
  wake(): void {
    this.#drain().catch((err: unknown) =>
      this.#ctx.log.warn({ err, topic: this.name, conn: this.conn.id }, 'topic pump failed'),
    )
  }

  /**
   * A cumulative ack: every offset below `offset` is done. Returns the new committed offset when it
   * moved forward; an offset beyond what was pushed counts as everything pushed.
   */
  ack(offset: number): number | undefined {
    const upTo = Math.min(offset, this.#next)
    if (upTo <= this.#acked) return undefined
    this.#acked = upTo
    while (this.#inFlight.length > 0 && this.#inFlight[0]!.offset < upTo) {
      this.#inFlightBytes -= this.#inFlight.shift()!.size
    }
    this.wake()
    return upTo
  }

  get #live(): boolean {
    return !this.stopped && this.conn.open && !this.#ctx.closing
  }

  async #drain(): Promise<void> {
    if (this.#running) {
      this.#again = true
      return
    }
    this.#running = true
    try {
      do {
        this.#again = false
        await this.#pushSome()
      } while (this.#again && this.#live)
    } finally {
      this.#running = false
    }
  }

  async #pushSome(): Promise<void> {
    const ctx = this.#ctx
    const l = ctx.limits
    if (!this.#live) return
    const p = this.conn.presence!
    const state = await ctx.meshes.get(p.mesh)
    if (!this.#live) return
    const topic = state?.topics.get(this.name)
    if (state === undefined || topic === undefined || !allowed(state, topic, p.memberHex)) {
      // The topic went away or its ACL no longer lists this member.
      this.#onDenied()
      this.conn.sendError(
        new MeshError('MESH_ERR_NOT_AUTHORIZED', `no longer in the ACL of topic ${this.name}`, {
          details: { topic: this.name },
        }),
      )
      return
    }
    const room = l.pushWindow - this.#inFlight.length
    if (room <= 0 || this.#inFlightBytes >= l.pushWindowBytes) return
    const limit = Math.min(BATCH, room)
    const rows = await ctx.store.query<{ offset: number; envelope: Uint8Array }>(
      `select "offset", envelope from topic_message
       where mesh = $1 and topic = $2 and "offset" >= $3 and expires_at > $4 order by "offset" limit $5`,
      [p.mesh, this.name, this.#next, ctx.clock.now(), limit],
    )
    for (const row of rows) {
      if (!this.#live) return
      // Over the byte window: the next ack wakes the pump.
      if (this.#inFlight.length > 0 && this.#inFlightBytes + row.envelope.length > l.pushWindowBytes) return
      const deliveryId = `topic:${this.name}:${row.offset}`
      if (!this.conn.send({ t: 'push', deliveryId, envelope: row.envelope, topicOffset: row.offset })) return
      this.#inFlight.push({ offset: row.offset, size: row.envelope.length })
      this.#inFlightBytes += row.envelope.length
      this.#next = row.offset + 1
    }
    if (rows.length === limit) this.#again = true
  }
}

/**
 * Writes committed offsets, one write in flight per subscription: acks that arrive during a write are
 * folded into the next one, so a burst of acks costs a couple of statements, not one each.
 */
class CommitWriter {
  readonly #ctx: CoordinatorContext
  readonly #pending = new Map<string, { offset: number; done: Promise<void> }>()

  constructor(ctx: CoordinatorContext) {
    this.#ctx = ctx
  }

  set(mesh: string, name: string, pk: Uint8Array, offset: number): void {
    const key = `${mesh}/${name}/${toHex(pk)}`
    const running = this.#pending.get(key)
    if (running !== undefined) {
      running.offset = Math.max(running.offset, offset)
      return
    }
    const entry = { offset, done: Promise.resolve() }
    this.#pending.set(key, entry)
    entry.done = (async () => {
      let written = -1
      for (;;) {
        // The check and the delete share one turn, so a `set` never lands on a finished loop.
        if (entry.offset <= written) {
          this.#pending.delete(key)
          return
        }
        written = entry.offset
        try {
          await this.#ctx.store.query(
            `update topic_subscription set committed_offset = greatest(committed_offset, $4), updated_at = $5
             where mesh = $1 and topic = $2 and subscriber = $3`,
            [mesh, name, pk, written, this.#ctx.clock.now()],
          )
        } catch (err) {
          this.#ctx.log.warn({ err, topic: name }, 'topic ack not stored')
        }
      }
    })()
  }

  /** Resolves once the key's committed offset holds every ack received so far. */
  async settled(mesh: string, name: string, pkHex: string): Promise<void> {
    await this.#pending.get(`${mesh}/${name}/${pkHex}`)?.done
  }

  /** Waits for every write in flight (shutdown). */
  async drain(): Promise<void> {
    await Promise.all([...this.#pending.values()].map((e) => e.done))
  }
}
