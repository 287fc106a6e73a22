/**
 * What every coordinator plugin shares: the store, the clock, the limits, the coordinator's key, the
 * live connections of this node, the frame handlers and the lifecycle hooks. Plugins reach it as
 * `app.mesh`.
 */
import type { Logger } from 'pino'
import type { Clock, Frame, Identity } from '../protocol/index.js'
import type { Connection, FrameHandler } from './connection.js'
import { presenceKey } from './connection.js'
import type { MeshStates } from './mesh-state.js'
import type { CoordinatorMetrics } from './metrics.js'
import type { CoordinatorLimits } from './options.js'
import type { Store } from './store/types.js'

/** The live, hello'd connections of this node. One per (mesh, key). */
export class ConnectionRegistry {
  readonly #byKey = new Map<string, Connection>()
  readonly #byMesh = new Map<string, Set<Connection>>()

  /** The live connection of a key, if it is on this node. */
  get(mesh: string, pk: Uint8Array | string): Connection | undefined {
    return this.#byKey.get(presenceKey(mesh, pk))
  }

  /** Registers `conn` as its key's live connection; returns the one it replaces. */
  set(conn: Connection): Connection | undefined {
    const p = conn.presence
    if (p === undefined) throw new Error('a connection is registered after its hello')
    const key = presenceKey(p.mesh, p.pkHex)
    const previous = this.#byKey.get(key)
    if (previous !== undefined) this.#byMesh.get(p.mesh)?.delete(previous)
    this.#byKey.set(key, conn)
    let set = this.#byMesh.get(p.mesh)
    if (set === undefined) this.#byMesh.set(p.mesh, (set = new Set()))
    set.add(conn)
    return previous
  }

  /** Removes `conn` if it is still its key's live connection; true when it was. */
  delete(conn: Connection): boolean {
    const p = conn.presence
    if (p === undefined) return false
    const key = presenceKey(p.mesh, p.pkHex)
    if (this.#byKey.get(key) !== conn) return false
    this.#byKey.delete(key)
    const set = this.#byMesh.get(p.mesh)
    set?.delete(conn)
    if (set?.size === 0) this.#byMesh.delete(p.mesh)
    return true
  }

  /** The live connections of a mesh on this node. */
  inMesh(mesh: string): Iterable<Connection> {
    return this.#byMesh.get(mesh) ?? []
  }

  all(): Iterable<Connection> {
    return this.#byKey.values()
  }

  get size(): number {
    return this.#byKey.size
  }
}

/** Lifecycle hooks plugins subscribe to; each runs in registration order and is awaited. */
export interface Hooks {
  /**
   * A hello passed and the connection is registered; runs before `hello_ack`. Resolves true when the
   * key reattached inside its lease (no `peer_joined` is due).
   */
  attach: ((conn: Connection) => Promise<boolean>)[]
  /** A hello was accepted and the connection registered (after any replaced one was closed). */
  ready: ((conn: Connection, info: { reattached: boolean }) => Promise<void>)[]
  /** A hello'd connection closed. `current` is false when a newer connection had replaced it. */
  closed: ((conn: Connection, info: { current: boolean }) => Promise<void>)[]
}

export interface CoordinatorContext {
  readonly store: Store
  readonly clock: Clock
  readonly limits: CoordinatorLimits
  readonly identity: Identity
  readonly nodeId: string
  readonly log: Logger
  readonly metrics: CoordinatorMetrics
  readonly connections: ConnectionRegistry
  /** Connections that have not said hello yet (closed on shutdown). */
  readonly pending: Set<Connection>
  readonly meshes: MeshStates
  readonly handlers: Map<Frame['t'], FrameHandler>
  readonly hooks: Hooks
  readonly adminToken: string | undefined
  readonly openRegistration: boolean
  /** Periodic sweeps, run at once by tests and by shutdown. */
  readonly sweeps: (() => Promise<void>)[]
  /** Set once close() began: new work is refused. */
  closing: boolean
  /** Registers the handler of one frame type. */
  on<T extends Frame['t']>(t: T, handler: FrameHandler<T>): void
}

declare module 'fastify' {
  interface FastifyInstance {
    mesh: CoordinatorContext
  }
}
