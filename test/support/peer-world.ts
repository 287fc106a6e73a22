/**
 * Runtime peers on a coordinator `World`: session peers of joined members, each with its own store, so a
 * test reads like the user's story ("alice's session sends bob's session a DM"). Peers made here are
 * closed by `closePeers()` (call it in `afterEach`, before the world closes).
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  createIdentity,
  mintSessionAttestation,
  randomBytes,
  systemClock,
  toHex,
  type Clock,
  type Identity,
  type Signed,
} from '../../protocol/index.js'
import { createNodePeer, type NodePeerOptions } from '../../peer-runtime/node/node-peer.js'
import { sqliteStore } from '../../peer-runtime/node/sqlite-store.js'
import type { DownInfo } from '../../peer-runtime/connection.js'
import type { InboundMessage } from '../../peer-runtime/inbox.js'
import type { Peer } from '../../peer-runtime/peer.js'
import { memoryStore } from '../../peer-runtime/store/memory.js'
import type { RuntimeStore } from '../../peer-runtime/store/types.js'
import type { World } from './coordinator-world.js'

const open: { peer: Peer; store: RuntimeStore; ownsStore: boolean }[] = []
const dirs: string[] = []

/** Options of `sessionPeer`. */
export interface SessionPeerOptions {
  sessionId?: string
  /** `memory` (default), `sqlite` (a file in a fresh temp dir), or a store the test keeps. */
  store?: 'memory' | 'sqlite' | RuntimeStore
  /** P2P off by default: most tests are about the relay path. */
  p2p?: NodePeerOptions['p2p']
  clock?: Clock
  /** A coordinator URL other than the world's (a test that restarts it on a fixed port). */
  url?: string
  /** Fast reconnects for tests (default: 50 ms doubling to 500 ms). */
  connection?: NodePeerOptions['connection']
  outbox?: NodePeerOptions['outbox']
  /** A known session key (a relaunch). */
  identity?: Identity
  /** Pin another coordinator key than the world's (a test of the pin). */
  coordinatorPk?: Uint8Array
  /** Who signs the session attestation (default the member: another key forges one). */
  attestedBy?: Identity
  /** The attestation source (default: one attestation minted now, by `attestedBy`). */
  attestation?: () => Signed
  /** Listens to `failed` before the peer starts, so the first attempt is seen too. */
  onFailed?: (info: DownInfo) => void
}

/** A temp dir removed by `closePeers`. */
export function tempDir(prefix = 'agentmesh-peer-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  dirs.push(dir)
  return dir
}

/** A started session peer of `member` on `world`'s mesh. */
export async function sessionPeer(world: World, member: Identity, o: SessionPeerOptions = {}): Promise<Peer> {
  const sessionId = o.sessionId ?? `s-${toHex(randomBytes(4))}`
  const identity = o.identity ?? createIdentity('session')
  const attestation = mintSessionAttestation({
    mesh: world.mesh,
    member: o.attestedBy ?? member,
    sessionPk: identity.publicKey,
    sessionId,
    now: world.clock.now(),
  })
  return startPeer(
    world,
    { identity, role: 'session', sessionId, attestation: o.attestation ?? (() => attestation) },
    o,
  )
}

/** A started control-plane peer holding `member`'s own key (what a daemon runs per mesh). */
export function memberPeer(
  world: World,
  member: Identity,
  o: Omit<SessionPeerOptions, 'sessionId' | 'identity' | 'attestedBy' | 'attestation'> = {},
): Promise<Peer> {
  return startPeer(world, { identity: member, role: 'control-plane' }, o)
}

async function startPeer(
  world: World,
  who: Pick<NodePeerOptions, 'identity' | 'role' | 'sessionId' | 'attestation'>,
  o: SessionPeerOptions,
): Promise<Peer> {
  const store =
    o.store === undefined || o.store === 'memory'
      ? memoryStore()
      : o.store === 'sqlite'
        ? sqliteStore({ path: join(tempDir(), 'runtime.db') })
        : o.store
  const peer = createNodePeer({
    ...who,
    url: o.url ?? world.wsUrl,
    mesh: world.mesh,
    ownerPk: world.owner.publicKey,
    coordinatorPk: o.coordinatorPk ?? world.coordinatorIdentity.publicKey,
    store,
    p2p: o.p2p ?? false,
    // The world's ManualClock moves only when a test says so; a peer's reconnects need real time.
    clock: o.clock ?? systemClock,
    connection: o.connection ?? { backoffBaseMs: 50, backoffCapMs: 500 },
    ...(o.outbox !== undefined && { outbox: o.outbox }),
  })
  open.push({ peer, store, ownsStore: typeof o.store !== 'object' })
  if (o.onFailed !== undefined) peer.on('failed', o.onFailed)
  await peer.start()
  return peer
}

/** The next `n` messages of `peer`'s inbox, consumed as read; throws when fewer come within `timeoutMs`. */
export async function nextMessages(peer: Peer, n: number, timeoutMs = 20_000): Promise<InboundMessage[]> {
  const got: InboundMessage[] = []
  for await (const m of peer.messages({ signal: AbortSignal.timeout(timeoutMs) })) {
    got.push(m)
    if (got.length === n) break
  }
  if (got.length < n) throw new Error(`got ${got.length} of ${n} messages in ${timeoutMs} ms`)
  return got
}

/**
 * Coordinator rate limits lifted, for bulk tests (DESIGN.md §5: only the rate-limit test keeps them). The
 * test world's coordinator runs on a ManualClock, so its buckets would never refill.
 */
export const UNLIMITED_RATE = {
  messageBurst: 1e9,
  messagesPerSecond: 1e9,
  byteBurst: 1e12,
  bytesPerSecond: 1e12,
}

/** Closes every peer made by `sessionPeer` (and the stores it made), then removes temp dirs. */
export async function closePeers(): Promise<void> {
  for (const { peer, store, ownsStore } of open.splice(0).reverse()) {
    await peer.close().catch(() => undefined)
    if (ownsStore) await store.close().catch(() => undefined)
  }
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true })
}
