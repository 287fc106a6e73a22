/**
 * Test ground for the daemon (used only by tests): a coordinator on 127.0.0.1 port 0 on a PGlite test
 * store, homes that create or join its meshes, and an SSE log that waits for events instead of sleeping.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pino from 'pino'
import { buildCoordinator, type Coordinator } from '../../coordinator/index.js'
import { openTestStore, type TestStore } from '../../coordinator/store/testing.js'
import { createIdentity, initCrypto, parseKeyHex, type Identity } from '../../protocol/index.js'
import { createInvite, createMesh, joinMesh } from '../../peer-runtime/node/home-membership.js'
import { openMeshPeer, type MeshPeer } from '../../peer-runtime/node/home-peer.js'
import { loadMemberKey, readMeshConfig } from '../../peer-runtime/node/home.js'
import type { DaemonClient, IpcEvent } from '../../peer-runtime/node/daemon/client.js'
import type { DaemonLog } from '../../peer-runtime/node/daemon/log.js'
import { MeshClient } from './mesh-client.js'

export const ADMIN_TOKEN = 'daemon-test-admin-token'

/** A coordinator and a temp root for homes; `close()` removes both. */
export interface DaemonWorld {
  root: string
  url: string
  coordinator: Coordinator
  store: TestStore
  identity: Identity
  /** A new home that created `mesh` (its owner); with `into`, that home creates one more mesh. */
  ownerHome(mesh: string, name: string, into?: string): Promise<string>
  /** A new home invited into `mesh` by `ownerHome`; with `into`, that home joins one more mesh. */
  memberHome(ownerHome: string, mesh: string, name: string, into?: string): Promise<string>
  /** Revokes `pk` (a member key, hex) from `mesh` with an admin request signed by `ownerHome`'s key. */
  revoke(ownerHome: string, mesh: string, pk: string): Promise<void>
  /** Kicks presence `pk` (a session key, hex) off `mesh`, signed by `ownerHome`'s key; resolves with the result. */
  kick(ownerHome: string, mesh: string, pk: string): Promise<unknown>
  /** A started control-plane peer of `home` (relay only), closed with the world. */
  peer(home: string, mesh: string): Promise<MeshPeer>
  /** Stops the coordinator (the store stays) and starts it again on the same port. */
  restartCoordinator(): Promise<void>
  stopCoordinator(): Promise<void>
  startCoordinator(): Promise<void>
  close(): Promise<void>
}

export async function daemonWorld(): Promise<DaemonWorld> {
  await initCrypto()
  const root = await mkdtemp(join(tmpdir(), 'agentmesh-daemon-'))
  const store = await openTestStore('pglite')
  const identity = createIdentity('coordinator')
  let n = 0
  const peers: MeshPeer[] = []
  const build = (): Promise<Coordinator> =>
    buildCoordinator({ store, identity, adminToken: ADMIN_TOKEN, logger: { level: 'silent' } })
  let coordinator: Coordinator | undefined = await build()
  const url = await coordinator.listen({ port: 0, host: '127.0.0.1' })
  const port = Number(new URL(url).port)
  const world: DaemonWorld = {
    root,
    url,
    get coordinator() {
      if (coordinator === undefined) throw new Error('the coordinator is stopped')
      return coordinator
    },
    store,
    identity,
    async ownerHome(mesh, name, into) {
      const home = into ?? join(root, `home-${n++}-${name}`)
      await createMesh({ home, mesh, coordinatorUrl: url, adminToken: ADMIN_TOKEN, displayName: name })
      return home
    },
    async memberHome(ownerHome, mesh, name, into) {
      const { token } = await createInvite({ home: ownerHome, mesh, expiresAt: Date.now() + 600_000 })
      const home = into ?? join(root, `home-${n++}-${name}`)
      await joinMesh({ home, token, displayName: name })
      return home
    },
    async peer(home, mesh) {
      const p = await openMeshPeer(home, mesh, {
        role: 'control-plane',
        p2p: false,
        peer: { connection: { backoffBaseMs: 50, backoffCapMs: 300 }, outbox: { backoffBaseMs: 20 } },
      })
      peers.push(p)
      await p.peer.start()
      await p.peer.whenConnected(AbortSignal.timeout(10_000))
      return p
    },
    async revoke(ownerHome, mesh, pk) {
      await adminRequest(ownerHome, mesh, 'revoke', { pk: parseKeyHex(pk) })
    },
    kick(ownerHome, mesh, pk) {
      return adminRequest(ownerHome, mesh, 'kick', { pk: parseKeyHex(pk) })
    },
    async stopCoordinator() {
      await coordinator?.close()
      coordinator = undefined
    },
    async startCoordinator() {
      coordinator = await build()
      await coordinator.listen({ port, host: '127.0.0.1' })
    },
    async restartCoordinator() {
      await world.stopCoordinator()
      await world.startCoordinator()
    },
    async close() {
      await Promise.all(peers.splice(0).map((p) => p.close().catch(() => undefined)))
      await coordinator?.close()
      await store.close()
      await rm(root, { recursive: true, force: true })
    },
  }
  return world
}

/** An admin request signed by `ownerHome`'s key; resolves with its result. */
async function adminRequest(
  ownerHome: string,
  mesh: string,
  method: string,
  args: unknown,
): Promise<unknown> {
  const config = await readMeshConfig(ownerHome, mesh)
  const owner = await loadMemberKey(ownerHome, mesh)
  // The owner's control-plane hello: no daemon may hold the owner's home meanwhile (it would be displaced).
  const admin = await MeshClient.connect(config.wsUrl, { identity: owner, mesh, role: 'control-plane' })
  try {
    return (await admin.admin(method, args)).result
  } finally {
    await admin.close()
  }
}

/** Collects a session's SSE events; `until` waits for one that passes a test. */
export class EventLog {
  readonly events: IpcEvent[] = []
  readonly #controller = new AbortController()
  readonly #waiters = new Set<() => void>()
  readonly done: Promise<void>
  #ended = false

  constructor(client: DaemonClient, after?: number) {
    this.done = (async () => {
      try {
        for await (const e of client.events({
          signal: this.#controller.signal,
          ...(after !== undefined && { after }),
        })) {
          this.events.push(e)
          for (const w of [...this.#waiters]) w()
        }
      } finally {
        this.#ended = true
        for (const w of [...this.#waiters]) w()
      }
    })()
    this.done.catch(() => undefined)
  }

  /** Messages (the `data` of `message` events). */
  messages(): Record<string, unknown>[] {
    return this.events.filter((e) => e.event === 'message').map((e) => e.data as Record<string, unknown>)
  }

  /** Resolves with the first event passing `test` (already seen or coming). */
  until(test: (e: IpcEvent) => boolean, timeoutMs = 10_000): Promise<IpcEvent> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        const hit = this.events.find(test)
        if (hit !== undefined) finish(() => resolve(hit))
        else if (this.#ended) finish(() => reject(new Error(`the stream ended; events: ${this.dump()}`)))
      }
      const finish = (fn: () => void): void => {
        clearTimeout(timer)
        this.#waiters.delete(check)
        fn()
      }
      const timer = setTimeout(
        () => finish(() => reject(new Error(`no such event after ${timeoutMs} ms; events: ${this.dump()}`))),
        timeoutMs,
      )
      this.#waiters.add(check)
      check()
    })
  }

  /** Resolves once the stream is live (its `ready` event). */
  ready(): Promise<IpcEvent> {
    return this.until((e) => e.event === 'ready')
  }

  get ended(): boolean {
    return this.#ended
  }

  close(): Promise<void> {
    this.#controller.abort()
    return this.done.catch(() => undefined)
  }

  dump(): string {
    return JSON.stringify(this.events.map((e) => [e.event, e.data])).slice(0, 2000)
  }
}

/** A pino logger writing to memory, for a daemon's `log` option: what it logged, line by line. */
export class CapturedLog {
  readonly lines: Record<string, unknown>[] = []
  readonly text: string[] = []
  readonly log: DaemonLog = pino(
    { base: null },
    {
      write: (line: string) => {
        this.text.push(line)
        this.lines.push(JSON.parse(line) as Record<string, unknown>)
      },
    },
  )

  /** The lines whose fields include every field of `like`. */
  find(like: Record<string, unknown>): Record<string, unknown>[] {
    return this.lines.filter((l) => Object.entries(like).every(([k, v]) => l[k] === v))
  }
}
