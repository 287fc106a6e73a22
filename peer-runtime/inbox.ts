/**
 * What arrives for this runtime's key, by any transport: the envelope is opened (a body that does not
 * open is kept as `undecryptable` or `rejected` with no payload, never as garbage), stored in the inbox
 * keyed by `(mesh, recipient, from, clientMessageId)` so a redelivery is a `duplicate`, and only then
 * acknowledged. With a volatile store the ack waits until the application consumed the message
 * (DESIGN.md §5), so a crash before that leaves the coordinator holding it.
 *
 * Readers get messages in arrival order through `messages()`, an async iterator that marks a message
 * consumed when the reader asks for the next one (at-least-once to the application).
 */
import type { BoxIdentity, BoxKeyCache } from '../protocol/box-key-cache.js'
import { decode, encode } from '../protocol/codec.js'
import { decodeEnvelope, type Channel, type Envelope, type Meta } from '../protocol/envelope.js'
import { openEnvelope } from '../protocol/seal.js'
import type { Clock } from '../protocol/clock.js'
import { Emitter } from '../transports/emitter.js'
import type { InboxAckStatus, InboxRow, RuntimeStore } from './store/types.js'

/** A message as the application sees it. */
export interface InboundMessage {
  /** The inbox row's position (increasing in arrival order). */
  seq: number
  from: Uint8Array
  clientMessageId: string
  channel: Channel
  /** The opened payload; `null` when it did not open (`status` says why). */
  payload: unknown
  status: InboxAckStatus
  meta?: Meta
  /** False for a `{plain}` body sent without end-to-end encryption (`meta.e2e: false`). */
  e2e: boolean
  /** How it came: `p2p` or `relay`. */
  via: string
  receivedAt: number
}

/** The outcome of taking one envelope. */
export interface Taken {
  status: InboxAckStatus
  /** False when it was already in the inbox. */
  fresh: boolean
  row: InboxRow
}

export interface InboxEvents {
  message: (message: InboundMessage) => void
  /** A redelivery of a stored message (the stored row; rpc re-sends its cached response on it). */
  duplicate: (message: InboundMessage) => void
}

export class Inbox extends Emitter<InboxEvents> {
  readonly #store: RuntimeStore
  readonly #mesh: string
  readonly #me: BoxIdentity
  readonly #cache: BoxKeyCache | undefined
  readonly #clock: Clock
  /** Volatile stores only: acks waiting for the application, by inbox seq. */
  readonly #deferred = new Map<number, () => void>()
  readonly #wakers = new Set<() => void>()

  constructor(o: { store: RuntimeStore; mesh: string; me: BoxIdentity; cache?: BoxKeyCache; clock: Clock }) {
    super()
    this.#store = o.store
    this.#mesh = o.mesh
    this.#me = o.me
    this.#cache = o.cache
    this.#clock = o.clock
  }

  /** True when acks wait for consumption (a volatile store). */
  get acksOnConsumption(): boolean {
    return this.#store.durability === 'volatile'
  }

  /**
   * Opens and stores one direct envelope addressed to us. `ack` is called with the status once it may be
   * sent: after the commit (durable store) or after consumption (volatile store; duplicates and failures
   * are acked at once since nothing is left to consume).
   */
  async take(
    bytes: Uint8Array,
    o: {
      via: string
      deliveryId?: string
      ack: (status: InboxAckStatus) => void
      /** Ack at once even with a volatile store (P2P: the sender demotes after 3 s without an ack). */
      ackOnStore?: boolean
    },
  ): Promise<Taken | undefined> {
    const defer = this.acksOnConsumption && o.ackOnStore !== true
    let env: Envelope
    try {
      env = decodeEnvelope(bytes)
    } catch {
      // Nothing to key it by: refuse it, and the sender sees the refusal.
      o.ack('rejected')
      return undefined
    }
    const opened = openEnvelope(env, this.#me, this.#cache === undefined ? {} : { cache: this.#cache })
    const status: InboxAckStatus = opened.ok ? 'ok' : opened.status
    const result = await this.#store.insertInbox({
      mesh: this.#mesh,
      recipient: this.#me.publicKey,
      from: env.from,
      clientMessageId: env.clientMessageId,
      channel: env.channel,
      via: o.via,
      envelope: bytes,
      status,
      receivedAt: this.#clock.now(),
      ...(o.deliveryId !== undefined && { deliveryId: o.deliveryId }),
      ...(opened.ok && { payload: encode({ p: opened.payload, e2e: opened.e2e, meta: env.meta }) }),
    })
    const row = result.row
    if (!result.inserted) {
      // Already stored: acked as a duplicate, unless the first copy still waits for the application.
      if (defer && row.consumedAt === undefined && row.status === 'ok') {
        this.#defer(row.seq, () => o.ack('duplicate'))
      } else o.ack('duplicate')
      if (this.listenerCount('duplicate') > 0) this.emit('duplicate', toMessage(row))
      return { status: 'duplicate', fresh: false, row }
    }
    if (defer && status === 'ok') this.#defer(row.seq, () => o.ack('ok'))
    else o.ack(status)
    this.emit('message', toMessage(row))
    for (const wake of this.#wakers) wake()
    return { status, fresh: true, row }
  }

  /**
   * The inbox in arrival order, from the oldest message not yet consumed; waits for more until `signal`
   * aborts (then the iterator ends). A message is marked consumed when the next one is asked for, or
   * when the loop breaks. Only `channels` are read (default `dm` and `group`): `rpc` and `stream` rows belong to
   * their handlers, which consume them themselves.
   */
  async *messages(
    o: { signal?: AbortSignal; recipients?: readonly Uint8Array[]; channels?: readonly Channel[] } = {},
  ): AsyncGenerator<InboundMessage> {
    let after = 0
    const recipients = o.recipients ?? [this.#me.publicKey]
    const channels = new Set<Channel>(o.channels ?? ['dm', 'group'])
    while (o.signal?.aborted !== true) {
      const rows = await this.#store.readInbox({
        mesh: this.#mesh,
        recipients,
        afterSeq: after,
        unconsumed: true,
        limit: 100,
      })
      if (rows.length === 0) {
        if (!(await this.#wait(o.signal))) return
        continue
      }
      for (const row of rows) {
        after = row.seq
        if (!channels.has(row.channel)) continue
        try {
          yield toMessage(row)
        } finally {
          await this.consume([row.seq])
        }
        if (isAborted(o.signal)) return
      }
    }
  }

  /** Marks messages consumed and sends the acks a volatile store held back for them. */
  async consume(seqs: readonly number[]): Promise<void> {
    await this.#store.consumeInbox(this.#mesh, seqs, this.#clock.now())
    for (const seq of seqs) {
      const ack = this.#deferred.get(seq)
      this.#deferred.delete(seq)
      ack?.()
    }
  }

  #defer(seq: number, ack: () => void): void {
    // A redelivery replaces the held ack: the coordinator now waits on the newer deliveryId.
    this.#deferred.set(seq, ack)
  }

  #wait(signal: AbortSignal | undefined): Promise<boolean> {
    if (signal?.aborted === true) return Promise.resolve(false)
    return new Promise((resolve) => {
      const done = (more: boolean): void => {
        this.#wakers.delete(wake)
        signal?.removeEventListener('abort', onAbort)
        resolve(more)
      }
      const wake = (): void => done(true)
      const onAbort = (): void => done(false)
      this.#wakers.add(wake)
      signal?.addEventListener('abort', onAbort, { once: true })
    })
  }
}

/** A stored row as the application sees it. */
export function toMessage(row: InboxRow): InboundMessage {
  const opened =
    row.payload === undefined ? undefined : (decode(row.payload) as { p: unknown; e2e: boolean; meta?: Meta })
  return {
    seq: row.seq,
    from: row.from,
    clientMessageId: row.clientMessageId,
    channel: row.channel,
    payload: opened?.p ?? null,
    status: row.status,
    e2e: opened?.e2e ?? true,
    via: row.via,
    receivedAt: row.receivedAt,
    ...(opened?.meta !== undefined && { meta: opened.meta }),
  }
}

// A function, so the check after a `yield` is not narrowed away (the signal may abort while suspended).
function isAborted(signal: AbortSignal | undefined): boolean {
  return signal?.aborted === true
}
