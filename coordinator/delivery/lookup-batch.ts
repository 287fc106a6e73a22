/**
 * Batches the dedupe lookups of one event-loop turn into one query. Every new send asks the store
 * whether its id was committed before; one statement per send was most of the fast path's cost
 * (bench `relay`), one statement per turn is not.
 */
import { toHex } from '../../protocol/index.js'
import type { Sql } from '../store/types.js'

/** A committed dedupe row. */
export interface DedupeRecord {
  envelope_hash: Uint8Array
  state: 'delivered' | 'queued' | 'partial'
  recipients: Uint8Array | null
}

interface Wanted {
  mesh: string
  sender: Uint8Array
  clientMessageId: string
  waiters: { resolve: (row: DedupeRecord | undefined) => void; reject: (err: unknown) => void }[]
}

/** At most this many ids per statement (3 parameters each). */
const MAX_KEYS = 1000

export class DedupeLookups {
  readonly #sql: Sql
  #wanted = new Map<string, Wanted>()
  #scheduled = false

  constructor(sql: Sql) {
    this.#sql = sql
  }

  /** The committed row of this id, if any. */
  get(mesh: string, sender: Uint8Array, clientMessageId: string): Promise<DedupeRecord | undefined> {
    return new Promise((resolve, reject) => {
      const key = `${mesh}|${toHex(sender)}|${clientMessageId}`
      let w = this.#wanted.get(key)
      if (w === undefined) this.#wanted.set(key, (w = { mesh, sender, clientMessageId, waiters: [] }))
      w.waiters.push({ resolve, reject })
      if (!this.#scheduled) {
        this.#scheduled = true
        setImmediate(() => void this.#run())
      }
    })
  }

  async #run(): Promise<void> {
    this.#scheduled = false
    const batch = [...this.#wanted.values()]
    this.#wanted = new Map()
    for (let i = 0; i < batch.length; i += MAX_KEYS) {
      const chunk = batch.slice(i, i + MAX_KEYS)
      try {
        const rows = await this.#query(chunk)
        for (const w of chunk) {
          const row = rows.get(`${w.mesh}|${toHex(w.sender)}|${w.clientMessageId}`)
          for (const waiter of w.waiters) waiter.resolve(row)
        }
      } catch (err) {
        for (const w of chunk) for (const waiter of w.waiters) waiter.reject(err)
      }
    }
  }

  async #query(chunk: Wanted[]): Promise<Map<string, DedupeRecord>> {
    const params: unknown[] = []
    const tuples: string[] = []
    for (const w of chunk) {
      const n = params.length
      tuples.push(`($${n + 1}::text, $${n + 2}::bytea, $${n + 3}::text)`)
      params.push(w.mesh, w.sender, w.clientMessageId)
    }
    const rows = await this.#sql.query<
      DedupeRecord & { mesh: string; sender: Uint8Array; client_message_id: string; [k: string]: unknown }
    >(
      `select mesh, sender, client_message_id, envelope_hash, state, recipients from dedupe
       where (mesh, sender, client_message_id) in (values ${tuples.join(', ')})`,
      params,
    )
    const out = new Map<string, DedupeRecord>()
    for (const r of rows) out.set(`${r.mesh}|${toHex(r.sender)}|${r.client_message_id}`, r)
    return out
  }
}
