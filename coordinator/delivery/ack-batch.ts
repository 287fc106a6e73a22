/**
 * Deletes the rows of acked stored deliveries, the acks of one event-loop turn in one statement. When
 * the coordinator falls behind, fast pushes outlive `ackWaitMs` and are stored, and each late ack then
 * deletes a row: one `delete` per ack was the store statement that took the most time in the `relay`
 * bench's load shape on PGlite (0.37 per DM, queued behind each other).
 */
import { toHex } from '../../protocol/index.js'
import type { Sql } from '../store/types.js'
import { TurnBatch, type Entry } from './turn-batch.js'

/** What an acked row held: who to send the receipt to, and what to give back to the quota. */
export interface AckedRow {
  sender: Uint8Array
  client_message_id: string
  size: number
  [k: string]: unknown
}

interface Wanted extends Entry<AckedRow | undefined> {
  id: string
  mesh: string
  recipient: Uint8Array
}

/** At most this many ids per statement. */
const MAX_IDS = 1000

// Scoped to the acking connection's mesh and key: an ack for another key's delivery deletes nothing.
const DELETE = `delete from delivery d
  using unnest($1::text[], $2::text[], $3::bytea[]) as k(id, mesh, recipient)
  where d.id = k.id and d.mesh = k.mesh and d.recipient = k.recipient
  returning d.id, d.mesh, d.recipient, d.sender, d.client_message_id, d.size`

export class StoredAcks {
  readonly #sql: Sql
  readonly #batch: TurnBatch<Wanted, AckedRow | undefined>

  constructor(sql: Sql) {
    this.#sql = sql
    this.#batch = new TurnBatch(MAX_IDS, (chunk) => this.#run(chunk))
  }

  /**
   * Deletes delivery `id` if it is `recipient`'s in `mesh`; resolves with what the row held, or undefined
   * when there was no such row (already acked, expired, or not this key's). Two acks of one delivery in
   * one turn: the first gets the row, the second undefined, as one after the other would.
   */
  delete(id: string, mesh: string, recipient: Uint8Array): Promise<AckedRow | undefined> {
    return this.#batch.add(keyOf(id, mesh, recipient), () => ({ id, mesh, recipient, waiters: [] }))
  }

  async #run(chunk: Wanted[]): Promise<void> {
    const rows = await this.#sql.query<AckedRow & { id: string; mesh: string; recipient: Uint8Array }>(
      DELETE,
      [chunk.map((w) => w.id), chunk.map((w) => w.mesh), chunk.map((w) => w.recipient)],
    )
    const found = new Map(rows.map((r) => [keyOf(r.id, r.mesh, r.recipient), r]))
    for (const w of chunk) {
      const row = found.get(keyOf(w.id, w.mesh, w.recipient))
      w.waiters.forEach((waiter, n) => waiter.resolve(n === 0 ? row : undefined))
    }
  }
}

function keyOf(id: string, mesh: string, recipient: Uint8Array): string {
  return `${id}|${mesh}|${toHex(recipient)}`
}
