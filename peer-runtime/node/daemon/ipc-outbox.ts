/**
 * `GET /v1/outbox`: the rows a session's sends left in its own outbox, newest last, as a stable JSON
 * shape (`agentmesh outbox list --json` prints the same rows). Only this session's outbox: another
 * session's rows are its own business, as `GET /v1/messages/:id` already holds.
 *
 *     GET /v1/outbox   session   ?state=pending,dead&limit=100 → {rows: OutboxRowJson[]}
 */
import { MeshError } from '../../../protocol/errors.js'
import type { OutboxRow, OutboxState, RuntimeStore } from '../../store/types.js'
import { deliveryJson, type DeliveryJson } from './ipc-json.js'

/** Every state a row can be in, in the order a row moves through them. */
export const OUTBOX_STATES: readonly OutboxState[] = [
  'pending',
  'inflight',
  'accepted',
  'done',
  'dead',
  'aborted',
]

/** An outbox row: `GET /v1/messages/:id`'s shape, with when a pending row is tried next and its requeue. */
export interface OutboxRowJson extends DeliveryJson {
  /** Unix ms of the next attempt of a `pending` row. */
  nextAttemptAt?: number
  /** On an `aborted` row: the id it was requeued as. */
  requeuedAs?: string
}

export function outboxRowJson(row: OutboxRow): OutboxRowJson {
  return {
    ...deliveryJson(row),
    ...(row.state === 'pending' && { nextAttemptAt: row.nextAttemptAt }),
    ...(row.requeuedAs !== undefined && { requeuedAs: row.requeuedAs }),
  }
}

/** `pending,dead` (or undefined: every state) as states; an unknown one is `MESH_ERR_MALFORMED_FRAME`. */
export function parseOutboxStates(text: string | undefined): OutboxState[] {
  if (text === undefined || text === '') return [...OUTBOX_STATES]
  const states = text.split(',').map((s) => s.trim())
  for (const s of states) {
    if (!(OUTBOX_STATES as readonly string[]).includes(s)) {
      throw new MeshError(
        'MESH_ERR_MALFORMED_FRAME',
        `no outbox state ${JSON.stringify(s)} (one of ${OUTBOX_STATES.join(', ')})`,
        { details: { path: 'state' } },
      )
    }
  }
  return states as OutboxState[]
}

/** The rows of `states` in `store`, oldest first, at most `limit` (the newest `limit` of them). */
export async function listOutboxRows(
  store: RuntimeStore,
  states: readonly OutboxState[],
  limit: number,
): Promise<OutboxRowJson[]> {
  // The store lists oldest first from the start: read them all and keep the tail (finished rows are
  // pruned hourly, so an outbox holds what is undelivered plus an hour or so of history).
  const rows = await store.listOutbox(states, Number.MAX_SAFE_INTEGER)
  rows.sort((a, b) => a.createdAt - b.createdAt || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
  return rows.slice(Math.max(0, rows.length - limit)).map(outboxRowJson)
}
