/**
 * Pushes, claims and acks. Every push is claimed by the connection it went to; an ack from the
 * recipient key settles it (a fast-path push resolves its waiting sender, a stored one deletes its row
 * and sends the sender a receipt). A connection that goes away releases its claims at once; a claim
 * that outlives its lease makes the delivery claimable again. A delivery is never pushed to two open
 * connections, because one key has one live connection and a push needs that connection's claim.
 */
import { toHex, ulidFactory, type ClockTimer, type FrameOf } from '../../protocol/index.js'
import type { Connection } from '../connection.js'
import type { CoordinatorContext } from '../context.js'
import { StoredAcks } from './ack-batch.js'
import type { OutcomeUpdates } from './outcome-updates.js'
import type { QueueQuota } from './quota.js'

export type AckStatus = FrameOf<'client_ack'>['status']
type RecipientState = FrameOf<'delivery_receipt'>['status']

interface Pending {
  conn: Connection
  size: number
  mesh: string
  recipientHex: string
  /** fast: a sender waits in memory; committing: its row is being written; stored: its row exists. */
  phase: 'fast' | 'committing' | 'stored'
  /** The waiting sender of a fast push, until it is answered (ack, timeout or close). */
  settle?: (status: AckStatus | 'closed' | 'timeout') => void
  /** A fast push's deadline: `ackWaitMs` after it went out. */
  until?: number
  lateAck?: AckStatus
}

interface ClaimedRow {
  id: string
  envelope: Uint8Array
  size: number
  queued_at: number
  attempts: number
  claim_until: number
  [k: string]: unknown
}

/** What a recipient's ack means to the sender. */
export function recipientState(status: AckStatus): RecipientState {
  return status === 'ok' || status === 'duplicate' ? 'delivered' : status
}

export class Pusher {
  readonly #ctx: CoordinatorContext
  readonly #pending = new Map<string, Pending>()
  readonly #draining = new Map<Connection, { again: boolean }>()
  readonly #quota: QueueQuota
  readonly #acks: StoredAcks
  /**
   * Fast pushes in the order they went out, which is their deadline order too (each waits `ackWaitMs`):
   * one timer for the oldest unanswered one instead of a timer per push. Answered entries are skipped.
   */
  #fast: Pending[] = []
  #fastHead = 0
  #fastTimer: ClockTimer | undefined
  readonly nextId: () => string

  readonly #outcomes: OutcomeUpdates

  constructor(ctx: CoordinatorContext, quota: QueueQuota, outcomes: OutcomeUpdates) {
    this.#ctx = ctx
    this.#quota = quota
    this.#outcomes = outcomes
    this.#acks = new StoredAcks(ctx.store)
    this.nextId = ulidFactory(() => ctx.clock.now())
  }

  /** Room in the connection's push window for one more push of `size` bytes. */
  fits(conn: Connection, size: number): boolean {
    const l = this.#ctx.limits
    return (
      conn.inFlight < l.pushWindow && (conn.inFlight === 0 || conn.inFlightBytes + size <= l.pushWindowBytes)
    )
  }

  /**
   * The fast path: pushes a delivery that is not stored yet and resolves with the recipient's ack, or
   * with 'timeout' after `ackWaitMs`, or 'closed' when the connection went away first. On 'timeout' the
   * push stays claimed by the connection: the caller stores it (`committing` → `stored`).
   */
  pushFast(
    conn: Connection,
    deliveryId: string,
    envelope: Uint8Array,
    mesh: string,
    recipientHex: string,
  ): Promise<AckStatus | 'closed' | 'timeout'> {
    // Before its hello_ack the peer would drop the push, and it would wait out ackWaitMs and then the
    // claim lease: it is stored instead, and the drain after the hello_ack pushes it.
    if (!conn.helloAcked) return Promise.resolve('closed')
    return new Promise((resolve) => {
      const entry: Pending = {
        conn,
        size: envelope.length,
        mesh,
        recipientHex,
        phase: 'fast',
        settle: resolve,
        until: this.#ctx.clock.now() + this.#ctx.limits.ackWaitMs,
      }
      this.#track(deliveryId, entry)
      if (!conn.send({ t: 'push', deliveryId, envelope })) {
        this.#untrack(deliveryId)
        answer(entry, 'closed')
        return
      }
      this.#fast.push(entry)
      if (this.#fastTimer === undefined) this.#armFast(entry.until!)
    })
  }

  #armFast(at: number): void {
    this.#fastTimer = this.#ctx.clock.setTimeout(this.#expireFast, Math.max(0, at - this.#ctx.clock.now()))
  }

  /** Fast pushes past their deadline go on to be stored (claimed by their connection); see pushFast. */
  readonly #expireFast = (): void => {
    this.#fastTimer = undefined
    const now = this.#ctx.clock.now()
    const queue = this.#fast
    let head = this.#fastHead
    for (; head < queue.length; head++) {
      const entry = queue[head]!
      if (entry.settle === undefined || entry.phase !== 'fast') continue
      if (entry.until! > now) break
      entry.phase = 'committing'
      answer(entry, 'timeout')
    }
    if (head === queue.length) {
      this.#fast = []
      this.#fastHead = 0
      return
    }
    // Drop the answered prefix now and then, not on every expiry.
    if (head > 4096) {
      this.#fast = queue.slice(head)
      head = 0
    }
    this.#fastHead = head
    this.#armFast(this.#fast[head]!.until!)
  }

  /**
   * After a timed-out fast push was committed: an ack that came meanwhile settles the stored row now;
   * otherwise the row is left to a later ack. Returns the ack that came during the commit, if any.
   */
  async committed(deliveryId: string): Promise<AckStatus | undefined> {
    const entry = this.#pending.get(deliveryId)
    if (entry === undefined) {
      return undefined
    }
    entry.phase = 'stored'
    const late = entry.lateAck
    if (late !== undefined) {
      this.#untrack(deliveryId)
      await this.#settleStored(deliveryId, late, entry.conn)
    } else if (!entry.conn.open) {
      // The connection went while its push was being stored: it gave its claims back before this row
      // existed, so the row would sit out the whole claim lease. Give it back now, and let the key's
      // current connection (a reconnect that came meanwhile) have it.
      this.#untrack(deliveryId)
      const p = entry.conn.presence!
      await this.#ctx.store.query(
        'update delivery set claim_owner = null, claim_until = null where id = $1 and claim_owner = $2',
        [deliveryId, p.presenceId],
      )
      const current = this.#ctx.connections.get(p.mesh, p.pk)
      if (current !== undefined && current.open) void this.drain(current)
    }
    return late
  }

  /** Forgets an in-memory push whose row could not be stored (the sender got an error, not an ack). */
  abandon(deliveryId: string): void {
    this.#untrack(deliveryId)
  }

  /** A `client_ack` from `conn`: scoped to the connection's own mesh and key. */
  async ack(conn: Connection, deliveryId: string, status: AckStatus): Promise<void> {
    // Topic pushes are acked with topic_ack and system events need none: no delivery row to settle.
    if (deliveryId.startsWith('topic:') || deliveryId.startsWith('system-')) return
    const p = conn.presence!
    this.#ctx.metrics.deliveries.inc({ status })
    const entry = this.#pending.get(deliveryId)
    if (entry !== undefined && entry.mesh === p.mesh && entry.recipientHex === p.pkHex) {
      if (entry.phase === 'fast') {
        this.#untrack(deliveryId)
        answer(entry, status)
      } else if (entry.phase === 'committing') {
        entry.lateAck = status
        this.#release(entry)
      } else {
        this.#untrack(deliveryId)
        await this.#settleStored(deliveryId, status, conn)
      }
    } else if (entry === undefined) {
      await this.#settleStored(deliveryId, status, conn)
    }
    // An ack for another key's delivery changes nothing. The window has room again: drain, unless the
    // last drain found nothing stored for this key (most acks settle fast-path pushes).
    if (conn.maybeStored) void this.drain(conn)
  }

  /** Deletes an acked row (scoped to the acking connection's mesh and key) and tells the sender. */
  async #settleStored(deliveryId: string, status: AckStatus, conn: Connection): Promise<void> {
    const p = conn.presence!
    const row = await this.#acks.delete(deliveryId, p.mesh, p.pk)
    if (row === undefined) return
    this.#quota.released(p.mesh, p.pk, row.sender, row.size)
    // Not awaited: the ack's own work is done; the receipt follows its dedupe update.
    void this.receipt(p.mesh, row.sender, row.client_message_id, p.pk, recipientState(status))
  }

  /**
   * A recipient's final state for a stored message: written into the message's dedupe row first (so a
   * sender that misses the receipt learns it by sending again: `duplicate` answers the outcome now), then
   * sent as a delivery_receipt to the sender's live connection: on this node, or handed to the node that
   * holds it (the waker's NOTIFY). A store that
   * cannot take the update does not hold the receipt back; that sender then learns it no other way.
   */
  async receipt(
    mesh: string,
    sender: Uint8Array,
    clientMessageId: string,
    recipient: Uint8Array,
    status: RecipientState,
  ): Promise<void> {
    try {
      await this.#outcomes.record(mesh, sender, clientMessageId, toHex(recipient), status)
    } catch (err) {
      this.#ctx.log[this.#ctx.closing ? 'debug' : 'warn']({ err }, 'recording a receipt in dedupe failed')
    }
    const to = this.#ctx.connections.get(mesh, sender)
    if (to !== undefined) to.send({ t: 'delivery_receipt', clientMessageId, recipient, status })
    else {
      // The sender may be connected to another node of this store: it gets the receipt from there.
      this.#ctx.delivery.waker.receipt({
        mesh,
        senderHex: toHex(sender),
        clientMessageId,
        recipientHex: toHex(recipient),
        status,
      })
    }
  }

  /** Pushes what the store holds for the connection's key, as far as its push window allows. */
  async drain(conn: Connection): Promise<void> {
    conn.maybeStored = true
    const running = this.#draining.get(conn)
    if (running !== undefined) {
      running.again = true
      return
    }
    const flag = { again: true }
    this.#draining.set(conn, flag)
    // Drains are started and not awaited (`void drain()`): a failure is logged, never an unhandled
    // rejection. What stays stored is pushed by the next drain (an ack, a reconnect, the claim sweep).
    const failed = (err: unknown): void =>
      this.#ctx.log[this.#ctx.closing ? 'debug' : 'warn']({ err, conn: conn.id }, 'drain failed')
    try {
      while (flag.again && conn.open && !this.#ctx.closing) {
        flag.again = false
        await this.#drainOnce(conn, flag)
      }
    } catch (err) {
      failed(err)
    }
    this.#draining.delete(conn)
    // Claims taken by a drain that raced the close are given back too.
    if (!conn.open) await this.releaseClaims(conn).catch(failed)
  }

  async #drainOnce(conn: Connection, flag: { again: boolean }): Promise<void> {
    if (!conn.helloAcked) return // the drain after its hello_ack (the ready hook) pushes
    const p = conn.presence!
    const l = this.#ctx.limits
    const room = l.pushWindow - conn.inFlight
    if (room <= 0) return
    const now = this.#ctx.clock.now()
    const rows = await this.#ctx.store.query<ClaimedRow>(
      `update delivery set claim_owner = $3, claim_until = $4, attempts = attempts + 1
       where id in (select id from delivery
         where mesh = $1 and recipient = $2 and (claim_owner is null or claim_until < $5) and expires_at > $5
         order by queued_at, id limit $6 for update skip locked)
       returning id, envelope, size, queued_at, attempts, claim_until`,
      [p.mesh, p.pk, p.presenceId, now + l.claimLeaseMs, now, room],
    )
    rows.sort((a, b) => a.queued_at - b.queued_at || (a.id < b.id ? -1 : 1))
    for (const row of rows) {
      if (!conn.open) return
      const stale = this.#pending.get(row.id)
      // Claimed again while this connection still holds its push (a takeover let the claim go without
      // forgetting the push): the peer has it already, so it is not pushed twice on one socket.
      if (stale !== undefined && stale.conn === conn && stale.phase === 'stored') continue
      if (stale !== undefined) this.#untrack(row.id)
      this.#track(row.id, { conn, size: row.size, mesh: p.mesh, recipientHex: p.pkHex, phase: 'stored' })
      if (row.attempts > 1) this.#ctx.metrics.redeliveries.inc()
      conn.send({
        t: 'push',
        deliveryId: row.id,
        envelope: row.envelope,
        claimUntil: row.claim_until,
        queuedAt: row.queued_at,
      })
    }
    if (rows.length === room) flag.again = true
    else conn.maybeStored = false
  }

  /** Gives back every claim the connection holds and forgets its in-memory pushes. */
  async releaseClaims(conn: Connection): Promise<void> {
    const p = conn.presence
    if (p === undefined) return
    for (const [id, entry] of this.#pending) {
      if (entry.conn !== conn) continue
      if (entry.phase === 'fast') {
        this.#untrack(id)
        answer(entry, 'closed')
      } else if (entry.phase === 'stored') this.#untrack(id)
    }
    await this.#ctx.store.query(
      'update delivery set claim_owner = null, claim_until = null where claim_owner = $1',
      [p.presenceId],
    )
  }

  /**
   * At a hello: the deliveries to this key that a former presence of it still holds (a coordinator
   * killed with its connections open, a node that died) become this connection's to push now, not at the
   * end of their lease. Only claims of presences other than the one the store names live now are let go,
   * in the same statement: a hello that was itself replaced meanwhile takes nothing from its successor.
   */
  async takeOverClaims(conn: Connection): Promise<void> {
    const p = conn.presence
    if (p === undefined || !conn.open) return
    await this.#ctx.store.query(
      `update delivery set claim_owner = null, claim_until = null
       where mesh = $1 and recipient = $2 and claim_owner is not null
         and claim_owner <> (select presence_id from presence where mesh = $1 and pk = $2 and connected)`,
      [p.mesh, p.pk],
    )
  }

  /** Claims whose lease ran out become claimable again; their recipients' live connections drain. */
  async sweepClaims(): Promise<void> {
    const now = this.#ctx.clock.now()
    const rows = await this.#ctx.store.query<{ id: string; mesh: string; recipient: Uint8Array }>(
      `update delivery set claim_owner = null, claim_until = null
       where id in (select id from delivery where claim_until < $1 limit 1000)
       returning id, mesh, recipient`,
      [now],
    )
    const conns = new Set<Connection>()
    for (const row of rows) {
      const entry = this.#pending.get(row.id)
      if (entry !== undefined && entry.phase === 'stored') this.#untrack(row.id)
      const conn = this.#ctx.connections.get(row.mesh, row.recipient)
      if (conn !== undefined) conns.add(conn)
    }
    for (const conn of conns) void this.drain(conn)
  }

  #track(id: string, entry: Pending): void {
    this.#pending.set(id, entry)
    entry.conn.inFlight++
    entry.conn.inFlightBytes += entry.size
  }

  #untrack(id: string): void {
    const entry = this.#pending.get(id)
    if (entry === undefined) return
    this.#pending.delete(id)
    this.#release(entry)
  }

  #release(entry: Pending): void {
    if (entry.size < 0) return
    entry.conn.inFlight--
    entry.conn.inFlightBytes -= entry.size
    entry.size = -1
  }
}

/** Answers a fast push's waiting sender once; later answers (a late ack, a close) find none. */
function answer(entry: Pending, status: AckStatus | 'closed' | 'timeout'): void {
  const settle = entry.settle
  entry.settle = undefined
  settle?.(status)
}
