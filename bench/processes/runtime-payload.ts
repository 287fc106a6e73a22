/**
 * The DM the `runtime` scenario sends, through the runtime and in its floor alike: the shared agent
 * payload (`bench/payload.ts`) sized so that the sealed envelope is about 1 KiB, as the `relay` scenario's
 * pre-sealed frames are.
 */
import { encodeEnvelope, sealDirect, ulidFactory, type Identity } from '../../protocol/index.js'
import { agentPayload } from '../payload.js'

const KIB = 1024

/** A payload whose DM from `from` in `mesh` encodes to about 1 KiB. */
export function oneKibPayload(mesh: string, from: Identity): unknown {
  // The outer fields, sealed header, nonce and MAC around a payload (measured as sealed-frames.ts does).
  const probe = sealDirect({
    mesh,
    channel: 'dm',
    from,
    to: from.publicKey,
    clientMessageId: ulidFactory()(),
    payload: agentPayload(KIB / 2),
  })
  return agentPayload(KIB - (encodeEnvelope(probe).length - KIB / 2))
}
