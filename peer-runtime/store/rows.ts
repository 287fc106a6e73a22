/** Row helpers the store drivers share. */
import type { InboxRow, NewInboxRow, NewOutboxRow, OutboxRow } from './types.js'

/** The `pending` row an insert of `input` stores (keys and bytes copied): one shape for every driver. */
export function newOutboxRow(input: NewOutboxRow): OutboxRow {
  const row: OutboxRow = {
    id: input.id,
    mesh: input.mesh,
    from: input.from.slice(),
    target: input.target,
    channel: input.channel,
    envelope: input.envelope.slice(),
    state: 'pending',
    attempts: 0,
    createdAt: input.createdAt,
    updatedAt: input.createdAt,
    nextAttemptAt: input.nextAttemptAt ?? input.createdAt,
  }
  if (input.lastError !== undefined) row.lastError = { ...input.lastError }
  if (input.recipients !== undefined) row.recipients = { ...input.recipients }
  if (input.fingerprint !== undefined) row.fingerprint = input.fingerprint.slice()
  if (input.sessionId !== undefined) row.sessionId = input.sessionId
  return row
}

/** The inbox row an insert of `input` stores at `seq` (keys and bytes copied). */
export function newInboxRow(input: NewInboxRow, seq: number): InboxRow {
  const row: InboxRow = {
    seq,
    mesh: input.mesh,
    recipient: input.recipient.slice(),
    from: input.from.slice(),
    clientMessageId: input.clientMessageId,
    channel: input.channel,
    via: input.via,
    envelope: input.envelope.slice(),
    status: input.status,
    receivedAt: input.receivedAt,
  }
  if (input.deliveryId !== undefined) row.deliveryId = input.deliveryId
  if (input.payload !== undefined) row.payload = input.payload.slice()
  return row
}
