/**
 * Signaling over the tests' MeshClient: the `CoordinatorLink` that `coordinatorSignalingChannel` needs, and
 * a roster that vouches for the keys the coordinator's `list_peers` shows as live sessions of members. The
 * runtime's coordinator client will stand where MeshClient stands here (issue 5).
 */
import { toHex, type Frame, type PeerRecord } from '../../protocol/index.js'
import {
  coordinatorSignalingChannel,
  type CoordinatorLink,
  type SignalingChannel,
} from '../../signaling/index.js'
import type { MeshClient } from './mesh-client.js'

/** The link of a client that has said hello. */
export function meshClientLink(client: MeshClient): CoordinatorLink {
  return {
    send: (frame: Frame) => client.send(frame),
    onFrame(listener) {
      client.on('frame', listener)
      return () => client.off('frame', listener)
    },
    self: client.identity.publicKey,
  }
}

/** The signaling channel over a client that has said hello. */
export function meshClientSignaling(client: MeshClient): SignalingChannel {
  return coordinatorSignalingChannel(meshClientLink(client))
}

/**
 * The keys the coordinator lists as online sessions of members, from `list_peers` and kept current by
 * `presence` frames: a simple `vouch` for tests (a runtime checks attestations against its roster).
 */
export class ListedSessions {
  readonly #client: MeshClient
  readonly #live = new Set<string>()

  constructor(client: MeshClient) {
    this.#client = client
    client.on('frame', (frame) => {
      if (frame.t !== 'presence') return
      if (frame.event === 'left') this.#live.delete(toHex(frame.peer.pk))
      else this.#note(frame.peer)
    })
  }

  /** Asks the coordinator for its current list. */
  async refresh(): Promise<void> {
    const { peers } = await this.#client.request({ t: 'list_peers' })
    this.#live.clear()
    for (const peer of peers) this.#note(peer)
  }

  /** True when the key was last listed as an online session. */
  readonly vouch = (pk: Uint8Array): boolean => this.#live.has(toHex(pk))

  #note(peer: PeerRecord): void {
    if (peer.role === 'session' && peer.online) this.#live.add(toHex(peer.pk))
    else this.#live.delete(toHex(peer.pk))
  }
}
