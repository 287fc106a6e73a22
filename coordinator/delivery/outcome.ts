/** What a send came to, as the coordinator answers it (its own module: dedupe and its memory both use it). */
import type { FrameOf } from '../../protocol/index.js'

/** The outcome a send_ack reported. */
export interface SendOutcome {
  state: 'delivered' | 'queued' | 'partial'
  recipientOnline?: boolean
  recipients?: Record<string, RecipientState>
}

/** A recipient's state as the sender sees it. */
export type RecipientState = FrameOf<'delivery_receipt'>['status']
