/**
 * Idempotency of sends: `(mesh, from, clientMessageId)` names a message. A retry of an accepted message
 * gets `duplicate` with the original outcome; the same id with another envelope hash gets
 * `MESH_ERR_IDEMPOTENCY_CONFLICT`. Three places answer, in order: sends still in flight on this node,
 * the in-memory window of fast-path ids (never stored), and the store's `dedupe` table.
 */
import { bytesEqual, decode, MeshError } from '../../protocol/index.js'
import type { Tally } from '../metrics.js'
import type { Sql } from '../store/types.js'
import { DedupeLookups } from './lookup-batch.js'
import type { RecipientState, SendOutcome } from './outcome.js'
import { RecentOutcomes } from './recent-outcomes.js'

export type { RecipientState, SendOutcome } from './outcome.js'

/** The in-memory name of a message; `fromHex` is the sender's key in hex (the caller has it already). */
export function dedupeKey(mesh: string, fromHex: string, clientMessageId: string): string {
  return `${mesh}|${fromHex}|${clientMessageId}`
}

/** The right to send a claimed id; `settle` with the send's outcome (a rejection frees the id). */
export interface DedupeTicket {
  settle(outcome: Promise<SendOutcome>): void
}

export class Dedupe {
  readonly #inFlight = new Map<string, { hash: Uint8Array; outcome: Promise<SendOutcome> }>()
  /** Outcomes of recent sends (the fast path's are stored nowhere else). */
  readonly #recent: RecentOutcomes
  readonly #lookups: DedupeLookups
  readonly #checks: Tally<'where'> | undefined

  constructor(sql: Sql, maxRecent: number, checks?: Tally<'where'>) {
    this.#lookups = new DedupeLookups(sql)
    this.#recent = new RecentOutcomes(maxRecent)
    this.#checks = checks
  }

  /**
   * Claims a message id for one send. Either the id is known (a send of it is in flight on this node,
   * remembered, or committed in the store) and `prior` is its outcome, or this caller holds the id and
   * must `settle` its ticket with the send's outcome; sends of the same id meanwhile wait for it. Throws
   * `MESH_ERR_IDEMPOTENCY_CONFLICT` when the id was used for other bytes. With `first` (the sender
   * says no coordinator saw this id before) the store is not asked: that lookup is a store round trip
   * before every fast-path push. A false `first` costs only that sender's own deduplication: the commit
   * of a queued copy skips an existing dedupe row (`on conflict do nothing`), and recipients dedupe too.
   */
  async claim(
    mesh: string,
    from: Uint8Array,
    fromHex: string,
    clientMessageId: string,
    hash: Uint8Array,
    o: { first?: boolean } = {},
  ): Promise<{ prior: SendOutcome } | { ticket: DedupeTicket }> {
    const key = dedupeKey(mesh, fromHex, clientMessageId)
    for (;;) {
      const known = this.#fromMemory(key, mesh, from, hash, clientMessageId)
      if (known !== undefined) {
        const prior = await known
        if (prior !== undefined) return { prior }
        continue // the earlier attempt failed without an ack: try to claim the id again
      }
      // Reserve the id before asking the store, so two sends of it never both miss.
      let resolve!: (o: SendOutcome) => void
      let reject!: (err: unknown) => void
      const outcome = new Promise<SendOutcome>((res, rej) => ((resolve = res), (reject = rej)))
      this.#track(key, mesh, from, clientMessageId, hash, outcome)
      try {
        const inStore = o.first !== true
        this.#checks?.inc({ where: inStore ? 'store' : 'memory' })
        const row = inStore ? await this.#lookups.get(mesh, from, fromHex, clientMessageId) : undefined
        if (row === undefined) {
          return { ticket: { settle: (p) => void p.then(resolve, reject) } }
        }
        assertSameHash(row.envelope_hash, hash, clientMessageId)
        const stored: SendOutcome = { state: row.state }
        if (row.recipients !== null)
          stored.recipients = decode(row.recipients) as Record<string, RecipientState>
        resolve(stored)
        return { prior: stored }
      } catch (err) {
        reject(err)
        throw err
      }
    }
  }

  /** Remembers `outcome` as the answer to a retry of this id now (a receipt changed it; see OutcomeUpdates). */
  remember(
    mesh: string,
    from: Uint8Array,
    clientMessageId: string,
    hash: Uint8Array,
    outcome: SendOutcome,
  ): void {
    this.#recent.set(mesh, from, clientMessageId, hash, outcome)
  }

  /** What this node remembers of `key`: a send in flight (awaited) or a recent outcome; undefined if nothing. */
  #fromMemory(
    key: string,
    mesh: string,
    from: Uint8Array,
    hash: Uint8Array,
    clientMessageId: string,
  ): Promise<SendOutcome | undefined> | undefined {
    const flying = this.#inFlight.get(key)
    if (flying !== undefined) {
      assertSameHash(flying.hash, hash, clientMessageId)
      return flying.outcome.then(outcomeOnly, () => undefined)
    }
    const recent = this.#recent.get(mesh, from, clientMessageId, hash)
    if (recent === undefined) return undefined
    if (!recent.sameBytes) throw idempotencyConflict(clientMessageId)
    return Promise.resolve(outcomeOnly(recent.outcome))
  }

  #track(
    key: string,
    mesh: string,
    from: Uint8Array,
    clientMessageId: string,
    hash: Uint8Array,
    outcome: Promise<SendOutcome>,
  ): void {
    const entry = { hash, outcome }
    this.#inFlight.set(key, entry)
    // Only this send's own entry is cleared: a later try of the same id may have replaced it.
    const settle = (): void => {
      if (this.#inFlight.get(key) === entry) this.#inFlight.delete(key)
    }
    outcome.then((o) => {
      settle()
      this.#recent.set(mesh, from, clientMessageId, hash, o)
    }, settle)
  }
}

function assertSameHash(a: Uint8Array, b: Uint8Array, clientMessageId: string): void {
  if (!bytesEqual(a, b)) throw idempotencyConflict(clientMessageId)
}

function idempotencyConflict(clientMessageId: string): MeshError {
  return new MeshError(
    'MESH_ERR_IDEMPOTENCY_CONFLICT',
    `clientMessageId ${clientMessageId} was used for another envelope`,
    { details: { clientMessageId } },
  )
}

/** The outcome as a send_ack reports it (a remembered entry also holds its hash, which is not sent). */
function outcomeOnly(o: SendOutcome): SendOutcome {
  const out: SendOutcome = { state: o.state }
  if (o.recipientOnline !== undefined) out.recipientOnline = o.recipientOnline
  if (o.recipients !== undefined) out.recipients = o.recipients
  return out
}
