/**
 * What `outbox requeue` stores for a dead row: the same message sealed anew under a fresh id. The
 * clientMessageId is sealed inside the body (the receiver refuses an envelope whose outer fields differ),
 * so the old bytes cannot be sent under another id; the sender opens its own box (crypto_box's key is
 * shared by both ends) and seals the payload again, with the same channel, recipient and meta.
 */
import { boxOpen, boxPublicKey, NONCE_BYTES } from '../../../protocol/crypto.js'
import {
  decodeEnvelope,
  encodeEnvelope,
  isDirectChannel,
  readSealedContent,
} from '../../../protocol/envelope.js'
import { MeshError } from '../../../protocol/errors.js'
import type { Identity } from '../../../protocol/keys.js'
import { sealDirect } from '../../../protocol/seal.js'
import type { NewOutboxRow, OutboxRow } from '../../../peer-runtime/store/types.js'

/** The new row for `row` (sent by `identity`), id `newId`, created `now`. */
export function resealed(row: OutboxRow, identity: Identity, newId: string, now: number): NewOutboxRow {
  const env = decodeEnvelope(row.envelope)
  if (env.channel !== 'dm' || !isDirectChannel(env.channel) || !(env.target instanceof Uint8Array)) {
    throw new MeshError(
      'MESH_ERR_INVALID_ENVELOPE',
      `message ${row.id} is a ${env.channel} message: only a direct message is requeued ` +
        '(a group message is sealed to the roster of its time: send it again)',
      { details: { id: row.id, channel: env.channel } },
    )
  }
  const body = env.body
  const opened =
    body instanceof Uint8Array && body.length > NONCE_BYTES
      ? boxOpen(
          body.subarray(NONCE_BYTES),
          body.subarray(0, NONCE_BYTES),
          boxPublicKey(env.target),
          identity.boxSecretKey,
        )
      : null
  if (opened === null) {
    throw new MeshError('MESH_ERR_UNDECRYPTABLE', `message ${row.id} does not open with this session's key`, {
      details: { id: row.id },
    })
  }
  const payload = readSealedContent(opened, env)
  const fresh = sealDirect({
    mesh: env.mesh,
    channel: env.channel,
    from: identity,
    to: env.target,
    clientMessageId: newId,
    meta: env.meta,
    payload,
  })
  return {
    id: newId,
    mesh: row.mesh,
    from: Uint8Array.from(identity.publicKey),
    target: row.target,
    channel: env.channel,
    envelope: encodeEnvelope(fresh),
    createdAt: now,
    ...(row.sessionId !== undefined && { sessionId: row.sessionId }),
  }
}
