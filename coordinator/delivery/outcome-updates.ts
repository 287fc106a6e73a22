/**
 * Receipts a sender was not there for. A `delivery_receipt` goes only to the sender's live connection on
 * this node, so a sender that was disconnected (a dropped link, a coordinator restart) when its recipient
 * acked never gets one. What it can do is send the message again: the retry is `duplicate` and answers
 * the message's outcome from the dedupe window. So that answer is the message's outcome now, not the one
 * its first `send_ack` gave, each recipient's final state (acked, expired, dropped) is written into the
 * message's `dedupe` row before the receipt is sent, the updates of one event-loop turn in one
 * transaction, and into the node's memory of recent outcomes.
 */
import { decode, encode, toHex } from '../../protocol/index.js'
import type { Store } from '../store/types.js'
import type { Dedupe, RecipientState, SendOutcome } from './dedupe.js'
import { TurnBatch, type Entry } from './turn-batch.js'

interface Wanted extends Entry<void> {
  mesh: string
  sender: Uint8Array
  clientMessageId: string
  /** Recipient hex → its final state, in the order they came. */
  states: Map<string, RecipientState>
}

interface Row {
  mesh: string
  sender: Uint8Array
  client_message_id: string
  envelope_hash: Uint8Array
  state: SendOutcome['state']
  recipients: Uint8Array | null
  [k: string]: unknown
}

/** At most this many messages per transaction. */
const MAX_KEYS = 500

const SELECT = `select d.mesh, d.sender, d.client_message_id, d.envelope_hash, d.state, d.recipients
  from unnest($1::text[], $2::bytea[], $3::text[]) as k(mesh, sender, client_message_id)
  join dedupe d on d.mesh = k.mesh and d.sender = k.sender and d.client_message_id = k.client_message_id
  order by d.mesh, d.sender, d.client_message_id
  for update of d`

const UPDATE = `update dedupe d set state = k.state, recipients = k.recipients
  from unnest($1::text[], $2::bytea[], $3::text[], $4::text[], $5::bytea[])
    as k(mesh, sender, client_message_id, state, recipients)
  where d.mesh = k.mesh and d.sender = k.sender and d.client_message_id = k.client_message_id`

/** A recipient state that is the recipient's own answer (an ack of any status). */
function acked(s: RecipientState): boolean {
  return s === 'delivered' || s === 'undecryptable' || s === 'rejected'
}

/**
 * The outcome once `states` are known: `delivered` when every recipient acked, `queued` when none did
 * (expired and dropped copies were never acked: the map says which), `partial` otherwise.
 */
export function outcomeWith(
  prior: { state: SendOutcome['state']; recipients: Record<string, RecipientState> | undefined },
  states: ReadonlyMap<string, RecipientState>,
): SendOutcome {
  const recipients: Record<string, RecipientState> = { ...prior.recipients }
  for (const [hex, s] of states) recipients[hex] = s
  const all = Object.values(recipients)
  const n = all.filter(acked).length
  const state = n === all.length ? 'delivered' : n === 0 ? 'queued' : 'partial'
  return { state, recipients }
}

export class OutcomeUpdates {
  readonly #store: Store
  readonly #dedupe: Dedupe
  readonly #batch: TurnBatch<Wanted, void>

  constructor(store: Store, dedupe: Dedupe) {
    this.#store = store
    this.#dedupe = dedupe
    this.#batch = new TurnBatch(MAX_KEYS, (chunk) => this.#run(chunk))
  }

  /**
   * Records that `recipientHex` reached `state` for message `(mesh, sender, clientMessageId)`; resolves
   * once the dedupe row says so (a message whose row already expired has nothing to update).
   */
  record(
    mesh: string,
    sender: Uint8Array,
    clientMessageId: string,
    recipientHex: string,
    state: RecipientState,
  ): Promise<void> {
    return this.#batch.add(
      `${mesh}|${toHex(sender)}|${clientMessageId}`,
      () => ({ mesh, sender, clientMessageId, states: new Map(), waiters: [] }),
      (w) => w.states.set(recipientHex, state),
    )
  }

  async #run(chunk: Wanted[]): Promise<void> {
    const updated = await this.#store.transaction(async (tx) => {
      const rows = await tx.query<Row>(SELECT, [
        chunk.map((w) => w.mesh),
        chunk.map((w) => w.sender),
        chunk.map((w) => w.clientMessageId),
      ])
      const byKey = new Map(rows.map((r) => [`${r.mesh}|${toHex(r.sender)}|${r.client_message_id}`, r]))
      const out: { row: Row; outcome: SendOutcome }[] = []
      for (const w of chunk) {
        const row = byKey.get(`${w.mesh}|${toHex(w.sender)}|${w.clientMessageId}`)
        if (row === undefined) continue
        const prior =
          row.recipients === null ? undefined : (decode(row.recipients) as Record<string, RecipientState>)
        out.push({ row, outcome: outcomeWith({ state: row.state, recipients: prior }, w.states) })
      }
      if (out.length > 0) {
        await tx.query(UPDATE, [
          out.map((o) => o.row.mesh),
          out.map((o) => o.row.sender),
          out.map((o) => o.row.client_message_id),
          out.map((o) => o.outcome.state),
          out.map((o) => encode(o.outcome.recipients)),
        ])
      }
      return out
    })
    for (const { row, outcome } of updated) {
      this.#dedupe.remember(row.mesh, row.sender, row.client_message_id, row.envelope_hash, outcome)
    }
    for (const w of chunk) for (const waiter of w.waiters) waiter.resolve()
  }
}
