/** Row helpers the store drivers share. */
import type { NewOutboxRow, OutboxRow } from './types.js'

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
