/**
 * Pre-sealed `send` frames: real end-to-end encrypted DMs, sealed and encoded before any timing starts,
 * so that a load process only puts bytes on the wire while it is being measured.
 */
import {
  BoxKeyCache,
  encodeEnvelope,
  encodeFrame,
  MAX_PAYLOAD_BYTES,
  sealDirect,
  ulidFactory,
  type Identity,
} from '../../protocol/index.js'
import { agentPayload } from '../payload.js'

const KIB = 1024

/** A sealed DM's encoded size: ~1 KiB, or the 60 KiB class (a 59 KiB payload, under the 60 KiB cap). */
export type DmSize = '1KiB' | '60KiB'

/** Send frames, one per message, with the `reqId`s 1…n and each message's clientMessageId. */
export interface SealedBatch {
  frames: Uint8Array[]
  clientMessageIds: string[]
  /** The encoded envelope's size of the first message. */
  envelopeBytes: number
}

/**
 * Seals `count` DMs from `from`; message i goes to `to(i)`. `firstReqId` numbers the frames (a sender
 * with several batches in flight keeps them apart).
 */
export function sealSendFrames(o: {
  mesh: string
  from: Identity
  to: (i: number) => Uint8Array
  count: number
  size: DmSize
  firstReqId?: number
}): SealedBatch {
  const cache = new BoxKeyCache(o.from)
  const nextId = ulidFactory()
  const payload = agentPayload(payloadBytesFor(o.size, o.mesh, o.from))
  const frames: Uint8Array[] = []
  const clientMessageIds: string[] = []
  let envelopeBytes = 0
  for (let i = 0; i < o.count; i++) {
    const clientMessageId = nextId()
    const env = sealDirect(
      {
        mesh: o.mesh,
        channel: 'dm',
        from: o.from,
        to: o.to(i),
        clientMessageId,
        meta: { priority: 'next' },
        payload,
      },
      { cache },
    )
    const envelope = encodeEnvelope(env)
    if (i === 0) envelopeBytes = envelope.length
    // Each envelope is sent once under a fresh id, as the peer runtime's first relay send is.
    frames.push(encodeFrame({ t: 'send', reqId: (o.firstReqId ?? 1) + i, envelope, first: true }))
    clientMessageIds.push(clientMessageId)
  }
  return { frames, clientMessageIds, envelopeBytes }
}

/** The payload size that makes a `size` DM: a 1 KiB envelope in all, or a 59 KiB payload. */
function payloadBytesFor(size: DmSize, mesh: string, from: Identity): number {
  if (size === '60KiB') return Math.min(59 * KIB, MAX_PAYLOAD_BYTES - 64)
  // The outer fields, sealed header, nonce and MAC around a payload (as the codec scenario sizes it).
  const probe = sealDirect({
    mesh,
    channel: 'dm',
    from,
    to: from.publicKey,
    clientMessageId: ulidFactory()(),
    meta: { priority: 'next' },
    payload: agentPayload(KIB / 2),
  })
  return KIB - (encodeEnvelope(probe).length - KIB / 2)
}
