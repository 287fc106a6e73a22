/**
 * Idempotency of sends: `(mesh, from, clientMessageId)` names a message. A retry of an accepted message
 * gets `duplicate` with the original outcome; the same id with another envelope hash gets
 * `MESH_ERR_IDEMPOTENCY_CONFLICT`. Three places answer, in order: sends still in flight on this node,
 * the in-memory window of fast-path ids (never stored), and the store's `dedupe` table.
 */
import { bytesEqual, decode, MeshError, toHex, type FrameOf } from '../../protocol/index.js'
import type { Sql } from '../store/types.js'

/** The outcome a send_ack reported. */
export interface SendOutcome {
  state: 'delivered' | 'queued' | 'partial'
  recipientOnline?: boolean
  recipients?: Record<string, RecipientState>
}

/** A recipient's state as the sender sees it. */
export type RecipientState = FrameOf<'delivery_receipt'>['status']

export interface Accepted extends SendOutcome {
  hash: Uint8Array
}

export function dedupeKey(mesh: string, from: Uint8Array, clientMessageId: string): string {
  return `${mesh}|${toHex(from)}|${clientMessageId}`
}

export class Dedupe {
  readonly #inFlight = new Map<string, { hash: Uint8Array; outcome: Promise<SendOutcome> }>()
  readonly #recent = new Map<string, Accepted>()
  readonly #maxRecent: number

  constructor(maxRecent: number) {
    this.#maxRecent = maxRecent
  }

  /**
   * The earlier outcome of this message, or undefined when it is new. Waits for an identical send that
   * is still in flight. Throws `MESH_ERR_IDEMPOTENCY_CONFLICT` when the id was used for other bytes.
   */
  async lookup(
    sql: Sql,
    mesh: string,
    from: Uint8Array,
    clientMessageId: string,
    hash: Uint8Array,
  ): Promise<SendOutcome | undefined> {
    const key = dedupeKey(mesh, from, clientMessageId)
    const flying = this.#inFlight.get(key)
    if (flying !== undefined) {
      assertSameHash(flying.hash, hash, clientMessageId)
      try {
        return await flying.outcome
      } catch {
        return undefined // the first attempt failed without an ack: this one is a fresh try
      }
    }
    const recent = this.#recent.get(key)
    if (recent !== undefined) {
      assertSameHash(recent.hash, hash, clientMessageId)
      return recent
    }
    const rows = await sql.query<{
      envelope_hash: Uint8Array
      state: SendOutcome['state']
      recipients: Uint8Array | null
    }>(
      'select envelope_hash, state, recipients from dedupe where mesh = $1 and sender = $2 and client_message_id = $3',
      [mesh, from, clientMessageId],
    )
    const row = rows[0]
    if (row === undefined) return undefined
    assertSameHash(row.envelope_hash, hash, clientMessageId)
    const outcome: SendOutcome = { state: row.state }
    if (row.recipients !== null) outcome.recipients = decode(row.recipients) as Record<string, RecipientState>
    return outcome
  }

  /** Registers a send in flight; resolves waiting retries with its outcome. */
  begin(
    mesh: string,
    from: Uint8Array,
    clientMessageId: string,
    hash: Uint8Array,
    outcome: Promise<SendOutcome>,
  ): void {
    const key = dedupeKey(mesh, from, clientMessageId)
    this.#inFlight.set(key, { hash, outcome })
    outcome.then(
      (o) => {
        this.#inFlight.delete(key)
        this.#remember(key, { ...o, hash })
      },
      () => this.#inFlight.delete(key),
    )
  }

  #remember(key: string, accepted: Accepted): void {
    this.#recent.set(key, accepted)
    if (this.#recent.size > this.#maxRecent) {
      const oldest = this.#recent.keys().next()
      if (oldest.done !== true) this.#recent.delete(oldest.value)
    }
  }
}

function assertSameHash(a: Uint8Array, b: Uint8Array, clientMessageId: string): void {
  if (!bytesEqual(a, b)) {
    throw new MeshError(
      'MESH_ERR_IDEMPOTENCY_CONFLICT',
      `clientMessageId ${clientMessageId} was used for another envelope`,
      {
        details: { clientMessageId },
      },
    )
  }
}
