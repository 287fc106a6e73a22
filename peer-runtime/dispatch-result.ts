/**
 * What one transport attempt means for its outbox row (DESIGN.md §5): a receiver's ack is `done`, the
 * coordinator's `queued` is `accepted`, refusals are retried with or without using an attempt, and the
 * rest is `dead` with its code, as `RETRY_CLASS` in protocol/errors.ts says. A `done` or `accepted`
 * result names the transport that answered (`via`), which the row keeps.
 */
import { isMeshError, RETRY_CLASS } from '../protocol/errors.js'
import type { FrameOf } from '../protocol/frames.js'
import type { DispatchResult } from './outbox.js'
import type { InboxAckStatus } from './store/types.js'

/** A receiver's P2P ack as the recipient state the sender records. */
export function p2pState(status: InboxAckStatus): 'delivered' | 'undecryptable' | 'rejected' {
  return status === 'ok' || status === 'duplicate' ? 'delivered' : status
}

/** The coordinator's answer: it pushed the message live (`done`) or stored it (`accepted`); either way `relay`. */
export function fromSendAck(ack: FrameOf<'send_ack'>, target: string): DispatchResult {
  const recipients = ack.recipients ?? { [target]: ack.state === 'delivered' ? 'delivered' : 'queued' }
  if (ack.state === 'delivered') return { kind: 'done', recipients, via: 'relay' }
  return { kind: 'accepted', recipients, via: 'relay' }
}

/** A receiver's ack over the P2P data channel: `done`, `p2p`. */
export function fromP2PAck(status: InboxAckStatus, target: string): DispatchResult {
  return { kind: 'done', recipients: { [target]: p2pState(status) }, via: 'p2p' }
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
  // One table for every sender (protocol/errors.ts): `wait` uses no attempt, `retry` uses one.
  const cls = RETRY_CLASS[err.code]
  if (cls === 'final') return { kind: 'dead', error }
  return { kind: 'retry', counted: cls === 'retry', error, ...after }
}
