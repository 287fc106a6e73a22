/**
 * What `agentmesh demo` stands on, all in one process and one temp directory: a coordinator on the
 * embedded PGlite store (opened as `coordinator up` opens it), a mesh created by alice's home, bob's home
 * joined with alice's invite, and a session `Peer` of each opened from its home (its own sqlite store,
 * node-datachannel P2P with no ICE servers: host candidates on this machine only). `close()` undoes all
 * of it, whatever step it is called after, and removes the directory.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { buildCoordinator, type Coordinator } from '../../../coordinator/index.js'
import { openStore } from '../../../coordinator/store/index.js'
import { initCrypto } from '../../../protocol/index.js'
import { createInvite, createMesh, joinMesh } from '../../../peer-runtime/node/home-membership.js'
import { openMeshPeer, type MeshPeer } from '../../../peer-runtime/node/home-peer.js'
import { nodeWebrtcStats } from '../../../transports/webrtc/node.js'
import {
  loadOrCreateAdminToken,
  loadOrCreateCoordinatorKey,
  prepareDataDir,
  systemError,
} from '../coordinator/data-dir.js'

/** The mesh the demo creates. */
export const DEMO_MESH = 'demo'
/** The session id both peers open (a session key is kept per home, so bob comes back as himself). */
const SESSION_ID = 'demo'
/** How long closing may take before the demo stops waiting on one piece and goes on removing files. */
const CLOSE_WAIT_MS = 5_000

export type DemoName = 'alice' | 'bob'

/** The coordinator, once it listens. */
export interface DemoCoordinator {
  url: string
  driver: 'pglite' | 'postgres'
  dataDir: string
}

/** What `close()` did: each piece closed in time, or what went wrong with it. */
export interface DemoCleanup {
  /** The temp directory, now removed (unless `problems` says otherwise). */
  root: string
  /** One line per piece that did not close cleanly (empty when all did). */
  problems: string[]
}

/** See the module comment. `prepare()` it first; always `close()` it. */
export class DemoWorld {
  readonly p2p: boolean
  #root: string | undefined
  #coordinator: Coordinator | undefined
  #coordinatorUrl: string | undefined
  #adminToken: string | undefined
  readonly #peers = new Map<DemoName, MeshPeer>()
  #closed: Promise<DemoCleanup> | undefined

  constructor(o: { p2p: boolean }) {
    this.p2p = o.p2p
  }

  /** The temp directory (after `prepare`). */
  get root(): string {
    if (this.#root === undefined) throw new Error('the demo directory is not made yet')
    return this.#root
  }

  /** Makes the temp directory (`$TMPDIR/agentmesh-demo-XXXXXX`) everything else goes into. */
  async prepare(): Promise<string> {
    if (this.#root !== undefined) return this.#root
    const base = tmpdir()
    try {
      this.#root = await mkdtemp(join(base, 'agentmesh-demo-'))
    } catch (cause) {
      throw systemError(cause, `cannot make a temp directory in ${base}`)
    }
    return this.#root
  }

  home(name: DemoName): string {
    return join(this.root, name)
  }

  /** Opens the PGlite store in `<root>/coordinator`, builds the coordinator and listens on 127.0.0.1:0. */
  async startCoordinator(): Promise<DemoCoordinator> {
    const dataDir = join(this.root, 'coordinator')
    await prepareDataDir(dataDir)
    const store = await openStore({ dataDir })
    let coordinator: Coordinator | undefined
    try {
      await initCrypto()
      const identity = await loadOrCreateCoordinatorKey(dataDir)
      const admin = await loadOrCreateAdminToken(dataDir)
      coordinator = await buildCoordinator({
        store,
        ownsStore: true,
        identity,
        adminToken: admin.token,
        logger: false,
      })
      if (this.#closed !== undefined) throw new Error('the demo is closing')
      this.#coordinator = coordinator
      const url = await coordinator.listen({ port: 0, host: '127.0.0.1' })
      this.#coordinatorUrl = url
      this.#adminToken = admin.token
      return { url, driver: store.driver, dataDir }
    } catch (err) {
      if (this.#coordinator === undefined)
        await (coordinator?.close() ?? store.close()).catch(() => undefined)
      throw err
    }
  }

  /** Alice's home creates the mesh and signs an invite; bob's home joins with it. */
  async createMesh(): Promise<void> {
    const url = this.#coordinatorUrl
    const adminToken = this.#adminToken
    if (url === undefined || adminToken === undefined) throw new Error('the coordinator is not up')
    await createMesh({
      home: this.home('alice'),
      mesh: DEMO_MESH,
      coordinatorUrl: url,
      adminToken,
      displayName: 'alice',
    })
    const invite = await createInvite({
      home: this.home('alice'),
      mesh: DEMO_MESH,
      expiresAt: Date.now() + 10 * 60_000,
    })
    await joinMesh({ home: this.home('bob'), token: invite.token, displayName: 'bob' })
  }

  /** Opens and starts `name`'s session peer (again, after `closePeer`: same key, same store). */
  async openPeer(name: DemoName): Promise<MeshPeer> {
    if (this.#closed !== undefined) throw new Error('the demo is closing')
    if (this.#peers.has(name)) throw new Error(`${name} is open already`)
    const opened = await openMeshPeer(this.home(name), DEMO_MESH, {
      role: { sessionId: SESSION_ID },
      p2p: this.p2p ? { iceServers: [] } : false,
    })
    if (this.#closed !== undefined) {
      await opened.close()
      throw new Error('the demo is closing')
    }
    this.#peers.set(name, opened)
    await opened.peer.start()
    return opened
  }

  /** Closes `name`'s peer and its store: the presence goes offline (its lease keeps its queue). */
  async closePeer(name: DemoName): Promise<void> {
    const opened = this.#peers.get(name)
    this.#peers.delete(name)
    await opened?.close()
  }

  /**
   * Closes the peers, then the coordinator (and its store), waits for node-datachannel's process-wide
   * cleanup so no native thread holds the process, and removes the temp directory. Idempotent; never
   * throws (what failed is in `problems`).
   */
  close(): Promise<DemoCleanup> {
    this.#closed ??= this.#close()
    return this.#closed
  }

  async #close(): Promise<DemoCleanup> {
    const problems: string[] = []
    const attempt = async (what: string, work: (signal: AbortSignal) => Promise<unknown>): Promise<void> => {
      const signal = AbortSignal.timeout(CLOSE_WAIT_MS)
      try {
        await Promise.race([
          work(signal),
          new Promise((_resolve, reject) =>
            signal.addEventListener('abort', () => reject(new Error(`not done after ${CLOSE_WAIT_MS} ms`))),
          ),
        ])
      } catch (err) {
        problems.push(`${what}: ${err instanceof Error ? err.message : String(err)}`)
      }
    }
    const peers = [...this.#peers.entries()]
    this.#peers.clear()
    await Promise.all(peers.map(([name, opened]) => attempt(`${name}'s peer`, () => opened.close())))
    if (this.#coordinator !== undefined) await attempt('the coordinator', () => this.#coordinator!.close())
    await attempt('node-datachannel', (signal) => webrtcReleased(signal))
    const root = this.#root
    if (root !== undefined)
      await attempt(`removing ${root}`, () => rm(root, { recursive: true, force: true }))
    return { root: root ?? '', problems }
  }
}

/** Resolves once no node-datachannel connection is open and no cleanup() is pending (or `signal` aborts). */
async function webrtcReleased(signal: AbortSignal): Promise<void> {
  while (!signal.aborted) {
    const stats = nodeWebrtcStats()
    if (stats.openConnections === 0 && !stats.cleanupPending) return
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}
