/**
 * Group commit: deliveries queued in the same turn of the event loop (and while a flush is running)
 * go to the store in one transaction with one multi-row INSERT per table. Each caller's promise settles
 * when its rows are durable, so a `send_ack` never precedes the commit it reports.
 */
import { encode } from '../../protocol/index.js'
import type { Store } from '../store/types.js'

/** One row of `delivery`. */
export interface DeliveryRow {
  id: string
  mesh: string
  recipient: Uint8Array
  sender: Uint8Array
  clientMessageId: string
  envelope: Uint8Array
  queuedAt: number
  expiresAt: number
  /** The connection that holds a claim from the fast path's push, and until when. */
  claimOwner?: string
  claimUntil?: number
  /** 1 when it was already pushed once (the fast path). */
  attempts: number
}

/** One row of `dedupe`. */
export interface DedupeRow {
  mesh: string
  sender: Uint8Array
  clientMessageId: string
  hash: Uint8Array
  state: string
  recipients?: Record<string, string>
  createdAt: number
  expiresAt: number
}

interface Job {
  deliveries: DeliveryRow[]
  dedupe: DedupeRow | undefined
  resolve: () => void
  reject: (err: unknown) => void
}

export class Committer {
  readonly #store: Store
  readonly #maxRows: number
  #queue: Job[] = []
  #flushing: Promise<void> | undefined
  #scheduled = false

  constructor(store: Store, maxRows: number) {
    this.#store = store
    this.#maxRows = maxRows
  }

  /** Resolves once the rows are committed. */
  commit(deliveries: DeliveryRow[], dedupe?: DedupeRow): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#queue.push({ deliveries, dedupe, resolve, reject })
      this.#schedule()
    })
  }

  /** Waits until everything queued so far is committed (shutdown). */
  async drain(): Promise<void> {
    while (this.#queue.length > 0 || this.#flushing !== undefined) {
      await (this.#flushing ?? new Promise((r) => setImmediate(r)))
    }
  }

  #schedule(): void {
    if (this.#scheduled || this.#flushing !== undefined) return
    this.#scheduled = true
    setImmediate(() => {
      this.#scheduled = false
      void this.#flush()
    })
  }

  async #flush(): Promise<void> {
    if (this.#queue.length === 0) return
    const batch: Job[] = []
    let rows = 0
    while (
      this.#queue.length > 0 &&
      (batch.length === 0 || rows + this.#queue[0]!.deliveries.length <= this.#maxRows)
    ) {
      const job = this.#queue.shift()!
      rows += job.deliveries.length + 1
      batch.push(job)
    }
    const run = this.#write(batch).then(
      () => batch.forEach((j) => j.resolve()),
      (err: unknown) => batch.forEach((j) => j.reject(err)),
    )
    this.#flushing = run
    await run
    this.#flushing = undefined
    if (this.#queue.length > 0) this.#schedule()
  }

  async #write(batch: Job[]): Promise<void> {
    const deliveries = batch.flatMap((j) => j.deliveries)
    const dedupes = batch.flatMap((j) => (j.dedupe === undefined ? [] : [j.dedupe]))
    // One column array per parameter (`unnest`): the statement text is the same for every batch size,
    // so the server parses and plans it once instead of once per distinct row count.
    await this.#store.transaction(async (tx) => {
      if (deliveries.length > 0) {
        await tx.query(
          `insert into delivery (id, mesh, recipient, sender, client_message_id, envelope, size, queued_at,
             expires_at, claim_owner, claim_until, attempts)
           select * from unnest($1::text[], $2::text[], $3::bytea[], $4::bytea[], $5::text[], $6::bytea[],
             $7::int[], $8::bigint[], $9::bigint[], $10::text[], $11::bigint[], $12::int[])`,
          [
            deliveries.map((d) => d.id),
            deliveries.map((d) => d.mesh),
            deliveries.map((d) => d.recipient),
            deliveries.map((d) => d.sender),
            deliveries.map((d) => d.clientMessageId),
            deliveries.map((d) => d.envelope),
            deliveries.map((d) => d.envelope.length),
            deliveries.map((d) => d.queuedAt),
            deliveries.map((d) => d.expiresAt),
            deliveries.map((d) => d.claimOwner ?? null),
            deliveries.map((d) => d.claimUntil ?? null),
            deliveries.map((d) => d.attempts),
          ],
        )
      }
      if (dedupes.length > 0) {
        await tx.query(
          `insert into dedupe (mesh, sender, client_message_id, envelope_hash, state, recipients, created_at,
             expires_at)
           select * from unnest($1::text[], $2::bytea[], $3::text[], $4::bytea[], $5::text[], $6::bytea[],
             $7::bigint[], $8::bigint[])
           on conflict do nothing`,
          [
            dedupes.map((d) => d.mesh),
            dedupes.map((d) => d.sender),
            dedupes.map((d) => d.clientMessageId),
            dedupes.map((d) => d.hash),
            dedupes.map((d) => d.state),
            dedupes.map((d) => (d.recipients === undefined ? null : encode(d.recipients))),
            dedupes.map((d) => d.createdAt),
            dedupes.map((d) => d.expiresAt),
          ],
        )
      }
    })
  }
}
