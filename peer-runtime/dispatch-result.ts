/**
 * What one transport attempt means for its outbox row (DESIGN.md §5): a receiver's ack is `done`, the
 * coordinator's `queued` is `accepted`, refusals are retried with or without using an attempt, and the
 * rest is `dead` with its code.
 */
import { isMeshError } from '../protocol/errors.js'
import type { FrameOf } from '../protocol/frames.js'
import type { DispatchResult } from './outbox.js'
import type { InboxAckStatus } from './store/types.js'

/** Codes a coordinator answers that are worth the same bytes again later (each counts as an attempt). */
const COUNTED_RETRY = new Set([
  'MESH_ERR_QUEUE_FULL',
  'MESH_ERR_STORE_UNAVAILABLE',
  'MESH_ERR_SHUTTING_DOWN',
  'MESH_ERR_INTERNAL',
])
/** Codes that say "not now" without anything wrong with the message: waits that use no attempt. */
const UNCOUNTED_RETRY = new Set([
  'MESH_ERR_DISCONNECTED',
  'MESH_ERR_REQUEST_TIMEOUT',
  'MESH_ERR_RATE_LIMITED',
  'MESH_ERR_TRANSPORT_CLOSED',
])

/** A receiver's P2P ack as the recipient state the sender records. */
export function p2pState(status: InboxAckStatus): 'delivered' | 'undecryptable' | 'rejected' {
  return status === 'ok' || status === 'duplicate' ? 'delivered' : status
}

export function fromSendAck(ack: FrameOf<'send_ack'>, target: string): DispatchResult {
  const recipients = ack.recipients ?? { [target]: ack.state === 'delivered' ? 'delivered' : 'queued' }
  if (ack.state === 'delivered') return { kind: 'done', recipients }
  return { kind: 'accepted', recipients }
}

export function fromError(err: unknown): DispatchResult {
  if (!isMeshError(err)) {
    const message = err instanceof Error ? err.message : String(err)
    return { kind: 'retry', counted: false, error: { code: 'MESH_ERR_INTERNAL', message } }
  }
  const error = { code: err.code, message: err.message }
  const retryAfterMs =
    typeof err.details?.['retryAfterMs'] === 'number' ? err.details['retryAfterMs'] : undefined
  const after = retryAfterMs === undefined ? {} : { retryAfterMs }
  if (UNCOUNTED_RETRY.has(err.code)) return { kind: 'retry', counted: false, error, ...after }
  if (COUNTED_RETRY.has(err.code) || !err.permanent) return { kind: 'retry', counted: true, error, ...after }
  return { kind: 'dead', error }
}
