/**
 * The daemon's `Peer`s, built from the home like `openMeshPeer` does, with one difference in storage:
 *
 * - each presence keeps its **own outbox** in its own file (`stores/<pk prefix>.db`, the file
 *   `openMeshPeer` uses too), because an `Outbox` dispatches every row of its store;
 * - every presence of one mesh writes its **inbox** into the member's store (the control plane's file),
 *   so one `readInbox({recipients: [sessionPk, memberPk]})` gives a session its own DMs and its member's
 *   messages in one arrival order, with one cursor.
 *
 * Each store is the runtime's `coalescingStore`: the dispatch outcomes (`updateOutbox`) and the inbox
 * inserts of one turn share a transaction, as the outbox's inserts of one turn already do.
 */
import { open } from 'node:fs/promises'
import { dirname } from 'node:path'
import type { Clock } from '../../../protocol/clock.js'
import { parseKeyHex } from '../../../protocol/encoding.js'
import type { Identity } from '../../../protocol/keys.js'
import type { Peer } from '../../peer.js'
import { coalescingStore } from '../../store/coalescing.js'
import type { RuntimeStore } from '../../store/types.js'
import {
  attestationSource,
  loadMemberKey,
  loadOrCreateSessionKey,
  makePrivateDir,
  storePath,
  type MeshConfig,
} from '../home.js'
import { createNodePeer, type NodePeerOptions } from '../node-peer.js'
import { sqliteStore } from '../sqlite-store.js'

/** Tuning passed through to every `Peer` the daemon opens (tests shorten timings). */
export type PeerTuning = Pick<NodePeerOptions, 'connection' | 'outbox' | 'resolveTimeoutMs' | 'p2p'>

/** A presence the daemon holds. `close()` closes the peer and the store it owns. */
export interface Presence {
  peer: Peer
  identity: Identity
  /** The store the peer runs on (for a session: its outbox, and the mesh's shared inbox). */
  store: RuntimeStore
  close(): Promise<void>
}

/** Opens `path` as a sqlite store whose file (and so its -wal and -shm) is created 0600. */
async function privateStore(path: string): Promise<RuntimeStore> {
  await makePrivateDir(dirname(path))
  await (await open(path, 'a', 0o600)).close()
  return coalescingStore(sqliteStore({ path }))
}

/**
 * A store whose outbox is `own` and whose inbox is `inbox` (shared: this one's `close` leaves it open).
 * Every method with `Inbox` in its name goes to `inbox`, everything else to `own`, so methods the store
 * interface gains later land on the right side without a change here.
 */
export function splitStore(own: RuntimeStore, inbox: RuntimeStore): RuntimeStore {
  return new Proxy(own, {
    get(target, prop) {
      const side = typeof prop === 'string' && prop.includes('Inbox') ? inbox : target
      // The side itself as receiver: a getter reading private fields (the coalescing store's
      // `durability`) throws when called on the proxy.
      const value: unknown = Reflect.get(side, prop, side)
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(side) : value
    },
  })
}

interface Common {
  home: string
  config: MeshConfig
  clock: Clock
  tuning: PeerTuning
}

/** The member's control-plane presence; its store also holds the mesh's inbox. */
export async function openControlPlane(o: Common): Promise<Presence> {
  const identity = await loadMemberKey(o.home, o.config.mesh)
  const store = await privateStore(storePath(o.home, o.config.mesh, identity.publicKey))
  return build(o, { identity, store, role: 'control-plane' }, o.config.displayName)
}

/** A session presence of the member, with its stable key; its inbox goes to `inbox`. */
export async function openSession(
  o: Common & { sessionId: string; displayName?: string; inbox: RuntimeStore },
): Promise<Presence> {
  const member = await loadMemberKey(o.home, o.config.mesh)
  const identity = await loadOrCreateSessionKey(o.home, o.config.mesh, o.sessionId)
  const own = await privateStore(storePath(o.home, o.config.mesh, identity.publicKey))
  const attestation = attestationSource({
    mesh: o.config.mesh,
    member,
    session: identity,
    sessionId: o.sessionId,
    now: () => o.clock.now(),
  })
  return build(
    o,
    { identity, store: splitStore(own, o.inbox), role: 'session', sessionId: o.sessionId, attestation },
    o.displayName ?? o.config.displayName,
  )
}

function build(
  o: Common,
  p: Pick<NodePeerOptions, 'identity' | 'store' | 'role' | 'sessionId' | 'attestation'>,
  displayName: string | undefined,
): Presence {
  let peer: Peer
  try {
    peer = createNodePeer({
      ...o.tuning,
      ...p,
      url: o.config.wsUrl,
      mesh: o.config.mesh,
      ownerPk: parseKeyHex(o.config.ownerPk),
      coordinatorPk: parseKeyHex(o.config.coordinatorPk),
      clock: o.clock,
      ...(displayName !== undefined && { displayName }),
    })
  } catch (err) {
    void p.store.close()
    throw err
  }
  let closing: Promise<void> | undefined
  return {
    peer,
    identity: p.identity,
    store: p.store,
    close: () =>
      (closing ??= (async () => {
        try {
          await peer.close()
        } finally {
          await p.store.close()
        }
      })()),
  }
}
