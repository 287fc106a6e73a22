import { beforeAll, describe, it } from 'vitest'
import { eventually } from '../../test/support/eventually.js'
import { createIdentity, initCrypto, toHex, type Identity } from '../../protocol/index.js'
import { memorySignalingHub } from '../../signaling/index.js'
import { transportCompliance, type ComplianceFixture } from '../compliance.js'
import { nodeWebrtcStats, nodeWebrtcTransport } from './node.js'

const MESH = 'webrtc-compliance'

beforeAll(async () => {
  await initCrypto()
})

/** Two real node-datachannel endpoints in this process, signaling through an in-memory relay. */
function setup(): Promise<ComplianceFixture> {
  const hub = memorySignalingHub()
  const ids = [createIdentity('session'), createIdentity('session')] as const
  const roster = new Set(ids.map((id) => toHex(id.publicKey)))
  const endpoint = (identity: Identity) => ({
    transport: nodeWebrtcTransport({
      identity,
      mesh: MESH,
      signaling: hub.channel(identity.publicKey),
      vouch: (pk) => roster.has(toHex(pk)),
    }),
    peer: { mesh: MESH, pk: identity.publicKey },
  })
  const [a, b] = [endpoint(ids[0]), endpoint(ids[1])]
  return Promise.resolve({
    a,
    b,
    teardown: async () => {
      await Promise.all([a.transport.close(), b.transport.close()])
      // Native handles go with node-datachannel's cleanup(), which follows the last connection's close.
      await eventually(() => a.transport.handles + b.transport.handles === 0, { what: 'handles released' })
      await eventually(() => nodeWebrtcStats().openConnections === 0 && !nodeWebrtcStats().cleanupPending, {
        what: 'node-datachannel cleanup',
      })
    },
    handles: () => a.transport.handles + b.transport.handles,
  })
}

transportCompliance('webrtc (node-datachannel)', setup, { runner: { describe, it } })
