/**
 * The daemon (DESIGN.md §5): one process per home holding every mesh the home joined, a control-plane
 * `Peer` per mesh (the member key: DMs to the member arrive there) and a session `Peer` per registered
 * session (its stable key from the home), and an IPC server (`ipc-server.ts`) on `daemon.sock` and
 * `127.0.0.1` through which local agents register sessions, send and read.
 *
 * - Two daemons never share a home: `daemon.lock` holds the pid (a stale one, after `kill -9`, is taken over).
 * - Registrations persist in `daemon-sessions.json`; after a restart each session comes back with its key,
 *   its token and its outbox (whatever was stored before the crash is delivered, once).
 * - `close()` (SIGTERM, `daemon down`) stops the IPC listeners, closes every peer (the outboxes keep what
 *   is undelivered), releases the lock and removes `daemon.sock` and `daemon.json`.
 */
import { unlink } from 'node:fs/promises'
import { systemClock, type Clock } from '../../../protocol/clock.js'
import { toHex } from '../../../protocol/encoding.js'
import { MeshError } from '../../../protocol/errors.js'
import { LOCAL_ID_RE } from '../../../protocol/ids.js'
import { Emitter } from '../../../transports/emitter.js'
import type { RuntimeStore } from '../../store/types.js'
import { listMeshes, readMeshConfig, type MeshConfig } from '../home.js'
import {
  daemonPaths,
  loadOrCreateAdminToken,
  lockHome,
  newToken,
  sameToken,
  tokenHash,
  writeDaemonInfo,
  type DaemonLock,
  type DaemonPaths,
} from './files.js'
import { IdempotentSender } from './ipc-send.js'
import { openControlPlane, openSession, type PeerTuning, type Presence } from './presences.js'
import { readRegistrations, registrationKey, writeRegistrations, type Registration } from './registry.js'
import { startIpcServer, type IpcServer } from './ipc-server.js'

/** Options of `startDaemon`. */
export interface DaemonOptions {
  home: string
  /** The loopback port (default 0: any free port; the chosen one is in `daemon.json`). */
  port?: number
  clock?: Clock
  /** Passed to every Peer (tests shorten reconnects and backoff; P2P is on by default). */
  peer?: PeerTuning
  /** The SSE keepalive period (default 15 s). */
  keepaliveMs?: number
  version?: string
}

/** A mesh the daemon holds. */
export interface DaemonMesh {
  config: MeshConfig
  control: Presence
}

/** A registered session. */
export interface DaemonSession {
  mesh: DaemonMesh
  registration: Registration
  presence: Presence
  sender: IdempotentSender
}

/** What `POST /v1/sessions` answers. */
export interface RegisteredSession {
  mesh: string
  sessionId: string
  /** The session's bearer token (shown once; a new registration of the same id replaces it). */
  token: string
  sessionPk: string
  memberPk: string
}

/** Who a bearer token belongs to. */
export type Caller = { kind: 'admin' } | { kind: 'session'; session: DaemonSession }

/** The daemon's events. */
export interface DaemonEvents {
  /** A session token stopped being valid (unregistered, or replaced by a new registration). */
  revoked: (tokenHash: string) => void
}

export class Daemon extends Emitter<DaemonEvents> {
  readonly paths: DaemonPaths
  readonly startedAt: number
  readonly #o: DaemonOptions
  readonly #clock: Clock
  readonly #lock: DaemonLock
  readonly #adminToken: string
  readonly #meshes = new Map<string, DaemonMesh>()
  readonly #opening = new Map<string, Promise<DaemonMesh>>()
  readonly #sessions = new Map<string, DaemonSession>()
  /** Token hash → session key. */
  readonly #tokens = new Map<string, string>()
  /** Registration changes run one at a time (they rewrite the registry file). */
  #changes: Promise<unknown> = Promise.resolve()
  #ipc: IpcServer | undefined
  #closing: Promise<void> | undefined
  readonly #closedWaiters = new Set<() => void>()

  private constructor(o: DaemonOptions, lock: DaemonLock, adminToken: string) {
    super()
    this.#o = o
    this.#clock = o.clock ?? systemClock
    this.paths = daemonPaths(o.home)
    this.#lock = lock
    this.#adminToken = adminToken
    this.startedAt = this.#clock.now()
  }

  /** Takes the home's lock, opens every mesh and registered session, and starts listening. */
  static async start(o: DaemonOptions): Promise<Daemon> {
    const lock = await lockHome(o.home)
    let daemon: Daemon | undefined
    try {
      const token = await loadOrCreateAdminToken(o.home)
      daemon = new Daemon(o, lock, token)
      await daemon.#open()
      return daemon
    } catch (err) {
      if (daemon !== undefined) await daemon.close().catch(() => undefined)
      else await lock.release()
      throw err
    }
  }

  get port(): number {
    return this.#ipc?.port ?? 0
  }

  get socketPath(): string {
    return this.paths.socket
  }

  get keepaliveMs(): number {
    return this.#o.keepaliveMs ?? 15_000
  }

  /** The meshes held, by id. */
  meshes(): DaemonMesh[] {
    return [...this.#meshes.values()]
  }

  /** The registered sessions. */
  sessions(): DaemonSession[] {
    return [...this.#sessions.values()]
  }

  /** The caller a bearer token names, or undefined for no valid token. */
  authenticate(token: string | undefined): Caller | undefined {
    if (token === undefined || token === '') return undefined
    if (sameToken(token, this.#adminToken)) return { kind: 'admin' }
    const key = this.#tokens.get(tokenHash(token))
    const session = key === undefined ? undefined : this.#sessions.get(key)
    return session === undefined ? undefined : { kind: 'session', session }
  }

  /**
   * Registers a session (or registers it again: the same id keeps its key and its outbox, and gets a new
   * token that replaces the old one). `mesh` may be left out when the daemon holds one mesh.
   */
  register(o: { mesh?: string; sessionId: string; displayName?: string }): Promise<RegisteredSession> {
    return this.#change(async () => {
      const mesh = await this.#meshFor(o.mesh)
      if (!LOCAL_ID_RE.test(o.sessionId)) {
        throw new MeshError('MESH_ERR_MALFORMED_FRAME', 'a session id is 1–128 printable ASCII characters', {
          details: { path: 'sessionId' },
        })
      }
      const key = registrationKey(mesh.config.mesh, o.sessionId)
      const token = newToken('ams_')
      const existing = this.#sessions.get(key)
      const displayName = o.displayName ?? existing?.registration.displayName
      const registration: Registration = {
        mesh: mesh.config.mesh,
        sessionId: o.sessionId,
        tokenHash: tokenHash(token),
        registeredAt: existing?.registration.registeredAt ?? this.#clock.now(),
        ...(displayName !== undefined && { displayName }),
      }
      let session = existing
      if (existing !== undefined && existing.registration.displayName !== registration.displayName) {
        // The name travels in the hello: reconnect with the new one.
        await existing.presence.close()
        session = undefined
      }
      if (session === undefined) session = await this.#openSession(mesh, registration)
      else session.registration = registration
      if (existing !== undefined) {
        this.#tokens.delete(existing.registration.tokenHash)
        this.emit('revoked', existing.registration.tokenHash)
      }
      this.#sessions.set(key, session)
      this.#tokens.set(registration.tokenHash, key)
      await this.#persist()
      return {
        mesh: mesh.config.mesh,
        sessionId: o.sessionId,
        token,
        sessionPk: toHex(session.presence.identity.publicKey),
        memberPk: mesh.config.memberPk,
      }
    })
  }

  /** Ends a session: closes its peer (its outbox file stays for a later registration) and its token. */
  unregister(o: { mesh?: string; sessionId: string }): Promise<void> {
    return this.#change(async () => {
      const matches = this.sessions().filter(
        (s) =>
          s.registration.sessionId === o.sessionId && (o.mesh === undefined || s.mesh.config.mesh === o.mesh),
      )
      if (matches.length === 0) {
        throw new MeshError(
          'MESH_ERR_UNKNOWN_SESSION',
          `no registered session ${JSON.stringify(o.sessionId)}`,
          {
            details: { sessionId: o.sessionId, ...(o.mesh !== undefined && { mesh: o.mesh }) },
          },
        )
      }
      if (matches.length > 1) {
        throw new MeshError(
          'MESH_ERR_MALFORMED_FRAME',
          `session ${o.sessionId} is in several meshes: pass ?mesh=`,
          {
            details: { meshes: matches.map((s) => s.mesh.config.mesh) },
          },
        )
      }
      const s = matches[0]!
      this.#sessions.delete(registrationKey(s.mesh.config.mesh, s.registration.sessionId))
      this.#tokens.delete(s.registration.tokenHash)
      this.emit('revoked', s.registration.tokenHash)
      await this.#persist()
      await s.presence.close()
    })
  }

  /** The mesh's shared inbox store (the control plane's). */
  inboxOf(session: DaemonSession): RuntimeStore {
    return session.mesh.control.store
  }

  /** A plain snapshot for `GET /v1/status` and `daemon status`. */
  status(): DaemonStatus {
    return {
      pid: process.pid,
      port: this.port,
      socket: this.socketPath,
      startedAt: this.startedAt,
      meshes: this.meshes().map((m) => ({
        mesh: m.config.mesh,
        memberPk: m.config.memberPk,
        coordinatorUrl: m.config.coordinatorUrl,
        connected: m.control.peer.connected,
      })),
      sessions: this.sessions().map((s) => ({
        mesh: s.mesh.config.mesh,
        sessionId: s.registration.sessionId,
        sessionPk: toHex(s.presence.identity.publicKey),
        ...(s.registration.displayName !== undefined && { displayName: s.registration.displayName }),
        connected: s.presence.peer.connected,
      })),
    }
  }

  /** Resolves once the daemon closed (by `close()`, a signal, or `POST /v1/shutdown`). */
  closed(): Promise<void> {
    if (this.#closing !== undefined) return this.#closing
    return new Promise((resolve) => this.#closedWaiters.add(resolve))
  }

  /** Stops listening, closes every peer and store, releases the home. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      try {
        await this.#ipc?.close()
        await this.#changes.catch(() => undefined)
        await Promise.allSettled(this.sessions().map((s) => s.presence.close()))
        await Promise.allSettled(this.meshes().map((m) => m.control.close()))
        await unlink(this.paths.info).catch(() => undefined)
      } finally {
        await this.#lock.release()
        for (const w of this.#closedWaiters) w()
      }
    })()
    return this.#closing
  }

  // ── internals ──────────────────────────────────────────────────────────────

  async #open(): Promise<void> {
    for (const config of await listMeshes(this.#o.home)) await this.#meshFor(config.mesh)
    for (const r of await readRegistrations(this.paths.sessions)) {
      const mesh = await this.#meshFor(r.mesh).catch(() => undefined)
      if (mesh === undefined) continue // the home left that mesh: the registration lapses
      const session = await this.#openSession(mesh, r)
      const key = registrationKey(r.mesh, r.sessionId)
      this.#sessions.set(key, session)
      this.#tokens.set(r.tokenHash, key)
    }
    this.#ipc = await startIpcServer(this, {
      socketPath: this.paths.socket,
      port: this.#o.port ?? 0,
    })
    await writeDaemonInfo(this.#o.home, {
      pid: process.pid,
      port: this.#ipc.port,
      socket: this.paths.socket,
      startedAt: this.startedAt,
      version: this.#o.version ?? '0',
    })
  }

  /** The mesh named (opened on first use: a mesh joined after `up` is picked up then). */
  #meshFor(mesh: string | undefined): Promise<DaemonMesh> {
    if (mesh === undefined) {
      const all = this.meshes()
      if (all.length === 1) return Promise.resolve(all[0]!)
      return Promise.reject(
        new MeshError(
          'MESH_ERR_MALFORMED_FRAME',
          all.length === 0 ? 'this home has joined no mesh' : 'the daemon holds several meshes: name one',
          { details: { path: 'mesh', meshes: all.map((m) => m.config.mesh) } },
        ),
      )
    }
    const held = this.#meshes.get(mesh)
    if (held !== undefined) return Promise.resolve(held)
    let opening = this.#opening.get(mesh)
    if (opening === undefined) {
      opening = (async () => {
        const config = await readMeshConfig(this.#o.home, mesh)
        const control = await openControlPlane({ ...this.#common(), config })
        await control.peer.start()
        const m = { config, control }
        this.#meshes.set(mesh, m)
        return m
      })().finally(() => this.#opening.delete(mesh))
      this.#opening.set(mesh, opening)
    }
    return opening
  }

  async #openSession(mesh: DaemonMesh, registration: Registration): Promise<DaemonSession> {
    const presence = await openSession({
      ...this.#common(),
      config: mesh.config,
      sessionId: registration.sessionId,
      inbox: mesh.control.store,
      ...(registration.displayName !== undefined && { displayName: registration.displayName }),
    })
    try {
      await presence.peer.start()
    } catch (err) {
      await presence.close()
      throw err
    }
    return { mesh, registration, presence, sender: new IdempotentSender(presence.peer) }
  }

  #common(): { home: string; clock: Clock; tuning: PeerTuning } {
    return { home: this.#o.home, clock: this.#clock, tuning: this.#o.peer ?? {} }
  }

  #persist(): Promise<void> {
    return writeRegistrations(
      this.paths.sessions,
      this.sessions().map((s) => s.registration),
    )
  }

  #change<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#closing !== undefined) {
      return Promise.reject(new MeshError('MESH_ERR_SHUTTING_DOWN', 'the daemon is shutting down'))
    }
    const run = this.#changes.then(fn, fn)
    this.#changes = run.catch(() => undefined)
    return run
  }
}

/** What `GET /v1/status` answers. */
export interface DaemonStatus {
  pid: number
  port: number
  socket: string
  startedAt: number
  meshes: { mesh: string; memberPk: string; coordinatorUrl: string; connected: boolean }[]
  sessions: { mesh: string; sessionId: string; sessionPk: string; displayName?: string; connected: boolean }[]
}

/** Starts a daemon on `home`. */
export function startDaemon(o: DaemonOptions): Promise<Daemon> {
  return Daemon.start(o)
}
