/**
 * Group commit: deliveries queued in the same turn of the event loop (and while a flush is running)
 * go to the store in one transaction with one multi-row INSERT per table. Each caller's promise settles
 * when its rows are durable, so a `send_ack` never precedes the commit it reports.
 */
import { encode } from '../../protocol/index.js'
import { valuesPlaceholders } from '../store/placeholders.js'
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

const DELIVERY_COLS = 12
const DEDUPE_COLS = 8

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
    await this.#store.transaction(async (tx) => {
      if (deliveries.length > 0) {
        const params: unknown[] = []
        for (const d of deliveries) {
          params.push(
            d.id,
            d.mesh,
            d.recipient,
            d.sender,
            d.clientMessageId,
            d.envelope,
            d.envelope.length,
            d.queuedAt,
            d.expiresAt,
            d.claimOwner ?? null,
            d.claimUntil ?? null,
            d.attempts,
          )
        }
        await tx.query(
          `insert into delivery (id, mesh, recipient, sender, client_message_id, envelope, size, queued_at,
             expires_at, claim_owner, claim_until, attempts) values ${valuesPlaceholders(deliveries.length, DELIVERY_COLS)}`,
          params,
        )
      }
      if (dedupes.length > 0) {
        const params: unknown[] = []
        for (const d of dedupes) {
          params.push(
            d.mesh,
            d.sender,
            d.clientMessageId,
            d.hash,
            d.state,
            d.recipients === undefined ? null : encode(d.recipients),
            d.createdAt,
            d.expiresAt,
          )
        }
        await tx.query(
          `insert into dedupe (mesh, sender, client_message_id, envelope_hash, state, recipients, created_at,
             expires_at) values ${valuesPlaceholders(dedupes.length, DEDUPE_COLS)} on conflict do nothing`,
          params,
        )
      }
    })
  }
}
