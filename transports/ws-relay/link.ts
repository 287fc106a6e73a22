/**
 * What the `ws-relay` adapter needs from the runtime's authenticated coordinator connection. The adapter
 * opens no socket of its own: the runtime injects one `ControlLink` per connection (in Node a `ws`
 * client, in browsers the native WebSocket), so this folder stays platform-neutral.
 */
import type { Envelope } from '../../protocol/envelope.js'
import type { ACK_STATUSES, FrameOf } from '../../protocol/frames.js'
import type { PeerRef } from '../types.js'

/** How a receiver acknowledges a push. */
export type AckStatus = (typeof ACK_STATUSES)[number]

/** A `send` request as the adapter builds it; the link assigns the `reqId`. */
export type SendRequest = Omit<FrameOf<'send'>, 'reqId'>

/** One authenticated connection to the coordinator (after `hello_ack`). A closed link stays closed. */
export interface ControlLink {
  /** The key the connection authenticated, and its mesh: every envelope the adapter submits is `from` it. */
  readonly self: PeerRef
  /** False once the connection closed. */
  readonly open: boolean
  /**
   * Sends `frame` with a fresh `reqId` and resolves with its `send_ack`. Rejects with the `MeshError` of
   * an `error` reply (`MeshError.fromWire`); any other rejection means the connection failed.
   */
  request(frame: SendRequest): Promise<FrameOf<'send_ack'>>
  /**
   * Calls `listener` with every `push` whose envelope decoded, beside the decoded envelope. A listener
   * that takes a push answers it with `ack`; one that does not leaves it for another. Returns `off`.
   */
  onPush(listener: (push: FrameOf<'push'>, envelope: Envelope) => void): () => void
  /** Sends `client_ack`; does nothing once the link closed (the coordinator releases the claim). */
  ack(deliveryId: string, status: AckStatus): void
  /** Calls `listener` once when the connection closes (at once if it already has). Returns `off`. */
  onClose(listener: (err?: Error) => void): () => void
}
