/**
 * Receipts this peer was away for. The coordinator sends a `delivery_receipt` only to a sender that is
 * connected at that moment, so a message accepted for an offline recipient can stay `accepted` for good
 * when its sender was disconnected (or restarted) when the recipient acked. The coordinator keeps each
 * recipient's final state in the message's dedupe record and answers a re-send with it (`duplicate`,
 * PROTOCOL.md §11), so after each hello the peer sends its `accepted` rows again and records what the
 * answers say, as receipts.
 *
 * A re-send is a duplicate to the coordinator: it costs no rate budget there and delivers nothing again,
 * so it does not pass the rate gate. `stream` chunks are left out (a stream does not outlive its
 * connection's credit; its rows settle by their own acks). Runs a few at a time, stops when the link
 * goes, and gives up on a row quietly (the next hello tries again).
 */
import { isMeshError } from '../protocol/errors.js'
import type { FrameOf } from '../protocol/frames.js'
import type { OutboxRow, RecipientState } from './store/types.js'

/** What a recheck needs of the peer. */
export interface RecheckDeps {
  /** The `accepted` rows, oldest first. */
  accepted(): Promise<OutboxRow[]>
  /** Sends the envelope to the coordinator as a plain `send` (not `first`) and resolves with its ack. */
  send(envelope: Uint8Array, signal: AbortSignal): Promise<FrameOf<'send_ack'>>
  /** Records one recipient's final state on the row, as a `delivery_receipt` would. */
  receipt(id: string, recipientHex: string, state: RecipientState): Promise<unknown>
  /** Whether the coordinator connection is up (a recheck stops when it goes). */
  ready(): boolean
}

/** Rows re-sent at once. */
export const RECHECK_CONCURRENCY = 32

/** Re-sends the `accepted` rows and records every final recipient state the answers carry. */
export async function recheckAccepted(deps: RecheckDeps, signal: AbortSignal): Promise<number> {
  const rows = (await deps.accepted()).filter((r) => r.channel !== 'stream')
  let next = 0
  let settled = 0
  const worker = async (): Promise<void> => {
    while (next < rows.length && !signal.aborted && deps.ready()) {
      const row = rows[next++]!
      let ack: FrameOf<'send_ack'>
      try {
        ack = await deps.send(row.envelope, signal)
      } catch (err) {
        if (signal.aborted || !isMeshError(err)) return
        continue // refused (the id is gone from the dedupe window, …): left as it is
      }
      for (const [hex, state] of Object.entries(ack.recipients ?? {})) {
        if (state === 'queued') continue
        await deps.receipt(row.id, hex, state)
        settled++
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(RECHECK_CONCURRENCY, rows.length) }, worker))
  return settled
}
