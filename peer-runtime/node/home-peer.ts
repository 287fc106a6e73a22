/**
 * Opening a `Peer` from a home: the member key as the control-plane presence (DMs to the member key
 * arrive there), or a stable session key with a member-signed attestation, re-minted at half its TTL.
 * Each presence key gets its own sqlite store (`stores/<pk prefix>.db`), so a session's outbox survives
 * its restarts and never mixes with another presence's. One process opens a store at a time: while the
 * daemon holds the member's store, opening the control plane here throws `MESH_ERR_STORE_LOCKED`.
 */
import { dirname } from 'node:path'
import { systemClock, type Clock } from '../../protocol/clock.js'
import { parseKeyHex } from '../../protocol/encoding.js'
import type { Identity } from '../../protocol/keys.js'
import type { Peer } from '../peer.js'
import type { RuntimeStore } from '../store/types.js'
import {
  attestationSource,
  loadMemberKey,
  loadOrCreateSessionKey,
  makePrivateDir,
  readMeshConfig,
  storePath,
  type MeshConfig,
} from './home.js'
import { coordinatorUrls } from './home-membership.js'
import { createNodePeer, type NodePeerOptions } from './node-peer.js'
import { sqliteStore } from './sqlite-store.js'

/** Which presence to open: the member's control plane, or a session of that member. */
export type MeshPresence = 'control-plane' | { sessionId: string }

/** Options of `openMeshPeer`. */
export interface OpenMeshPeer {
  role: MeshPresence
  /** Defaults to the display name this home joined with. */
  displayName?: string
  /** Another address for the same coordinator (its key stays pinned). */
  coordinatorUrl?: string
  /** P2P over node-datachannel (default true). */
  p2p?: NodePeerOptions['p2p']
  clock?: Clock
  /** Passed through to the `Peer` (tests shorten timings). */
  peer?: Pick<NodePeerOptions, 'connection' | 'outbox' | 'resolveTimeoutMs'>
}

/** A `Peer` opened from a home, with the store it owns. Call `peer.start()`; `close()` closes both. */
export interface MeshPeer {
  peer: Peer
  config: MeshConfig
  /** The presence key (the member key for control-plane). */
  identity: Identity
  storePath: string
  close(): Promise<void>
}

/** Builds (does not start) the `Peer` of `presence` in `mesh` from this home's keys and config. */
export async function openMeshPeer(home: string, mesh: string, o: OpenMeshPeer): Promise<MeshPeer> {
  const config = await readMeshConfig(home, mesh)
  const member = await loadMemberKey(home, mesh)
  const clock = o.clock ?? systemClock
  const session =
    o.role === 'control-plane'
      ? undefined
      : { id: o.role.sessionId, key: await loadOrCreateSessionKey(home, mesh, o.role.sessionId) }
  const identity = session?.key ?? member
  const path = storePath(home, mesh, identity.publicKey)
  await makePrivateDir(dirname(path))
  // The store makes its file 0600 itself, under its lock (`MESH_ERR_STORE_LOCKED` while another process,
  // such as the daemon, has it open): creating it here, before the lock, raced a concurrent opener.
  const store: RuntimeStore = sqliteStore({ path })
  const displayName = o.displayName ?? config.displayName
  const url = o.coordinatorUrl === undefined ? config.wsUrl : coordinatorUrls(o.coordinatorUrl).ws
  let peer: Peer
  try {
    peer = createNodePeer({
      ...o.peer,
      url,
      mesh,
      ownerPk: parseKeyHex(config.ownerPk),
      coordinatorPk: parseKeyHex(config.coordinatorPk),
      identity,
      clock,
      store,
      ...(o.p2p !== undefined && { p2p: o.p2p }),
      ...(displayName !== undefined && { displayName }),
      ...(session === undefined
        ? { role: 'control-plane' as const }
        : {
            role: 'session' as const,
            sessionId: session.id,
            attestation: attestationSource({
              mesh,
              member,
              session: session.key,
              sessionId: session.id,
              now: () => clock.now(),
            }),
          }),
    })
  } catch (err) {
    await store.close()
    throw err
  }
  let closing: Promise<void> | undefined
  return {
    peer,
    config,
    identity,
    storePath: path,
    close: () =>
      (closing ??= (async () => {
        try {
          await peer.close()
        } finally {
          await store.close()
        }
      })()),
  }
}
