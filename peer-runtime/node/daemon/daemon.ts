/**
 * The daemon (DESIGN.md §5): one process per home holding every mesh the home joined, a control-plane
 * `Peer` per mesh (the member key: DMs to the member arrive there) and a session `Peer` per registered
 * session (its stable key from the home), and an IPC server (`ipc-server.ts`) on `daemon.sock` and
 * `127.0.0.1` through which local agents register sessions, send and read.
 *
 * - Two daemons never share a home: `daemon.lock` holds the pid (a stale one, after `kill -9`, is taken over).
 * - Registrations persist in `daemon-sessions.json`; after a restart each session comes back with its key,
 *   its token and its outbox (whatever was stored before the crash is delivered, once).
 * - What fails to open at start (a mesh whose config or store will not open, a registration whose key or
 *   store will not) blocks nothing else: it is kept, shown as `unavailable` with its error, retried in the
 *   background (`retry-schedule.ts`), and its session's IPC calls answer `MESH_ERR_SESSION_UNAVAILABLE`.
 * - A mesh whose control plane stopped for good (the member revoked) is `stopped`: its sessions' IPC calls
 *   answer the stop's code (`MESH_ERR_REVOKED`), and the other meshes go on.
 * - `close()` (SIGTERM, `daemon down`) stops the IPC listeners, closes every peer (the outboxes keep what
 *   is undelivered), releases the lock and removes `daemon.sock` and `daemon.json`.
 */
import { readdir, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import { systemClock, type Clock } from '../../../protocol/clock.js'
import { toHex } from '../../../protocol/encoding.js'
import { MeshError } from '../../../protocol/errors.js'
import { LOCAL_ID_RE, MESH_ID_RE } from '../../../protocol/ids.js'
import { Emitter } from '../../../transports/emitter.js'
import type { RuntimeStore } from '../../store/types.js'
import { logFileEvents, receiveFiles } from '../file-receiver.js'
import { errnoCode, readMeshConfig } from '../home.js'
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
import { startIpcServer, type IpcServer } from './ipc-server.js'
import { LinkWatch } from './link-watch.js'
import { stderrLog, type DaemonLog } from './log.js'
import { openControlPlane, openSession, type PeerTuning } from './presences.js'
import { readRegistrations, registrationKey, writeRegistrations, type Registration } from './registry.js'
import type { RetryTimings } from './retry-schedule.js'
import { meshJson, meshStoppedError, sessionJson, stoppedError } from './status-json.js'
import type {
  Caller,
  DaemonEvents,
  DaemonMesh,
  DaemonSession,
  DaemonStatus,
  IpcHost,
  RegisteredSession,
} from './types.js'
import { Unopened } from './unopened.js'

export type {
  Caller,
  DaemonEvents,
  DaemonMesh,
  DaemonSession,
  DaemonStatus,
  MeshStatusJson,
  RegisteredSession,
  SessionStatusJson,
} from './types.js'

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
  /** Where log lines go (default: pino JSON lines on stderr). */
  log?: DaemonLog
  /** Background retries of meshes and registrations that failed to open (default 1 s doubling to 60 s). */
  retry?: Partial<RetryTimings>
  /**
   * Undelivered messages (pending or in flight) a session's outbox may hold before `POST /v1/send`
   * answers 429 `MESH_ERR_OUTBOX_FULL` with `retryAfterMs` and stores nothing. Default 10,000 (the
   * runtime's `OUTBOX_WATER.maxDepth`): the coordinator's per-recipient queue quota, and about 100 s of
   * sending at its default member rate (100/s), so an agent that outruns its link for that long hears
   * of it instead of filling the disk.
   */
  maxOutboxDepth?: number
}

export class Daemon extends Emitter<DaemonEvents> implements IpcHost {
  readonly paths: DaemonPaths
  readonly startedAt: number
  readonly #o: DaemonOptions
  readonly #clock: Clock
  readonly #log: DaemonLog
  readonly #lock: DaemonLock
  readonly #adminToken: string
  readonly #meshes = new Map<string, DaemonMesh>()
  readonly #opening = new Map<string, Promise<DaemonMesh>>()
  readonly #sessions = new Map<string, DaemonSession>()
  /** What did not open yet, retried in the background. */
  readonly #unopened: Unopened
  /** Token hash → session key (open or pending). */
  readonly #tokens = new Map<string, string>()
  /** Registration changes run one at a time (they rewrite the registry file). */
  #changes: Promise<unknown> = Promise.resolve()
  #ipc: IpcServer | undefined
  #closing: Promise<void> | undefined
  readonly #closedWaiters = new Set<() => void>()

  private constructor(o: DaemonOptions, lock: DaemonLock, adminToken: string, log: DaemonLog) {
    super()
    this.#o = o
    this.#clock = o.clock ?? systemClock
    this.#log = log
    this.#unopened = new Unopened({ clock: this.#clock, timings: o.retry, log })
    this.paths = daemonPaths(o.home)
    this.#lock = lock
    this.#adminToken = adminToken
    this.startedAt = this.#clock.now()
  }

  /** Takes the home's lock, opens every mesh and registered session it can, and starts listening. */
  static async start(o: DaemonOptions): Promise<Daemon> {
    const lock = await lockHome(o.home)
    let daemon: Daemon | undefined
    try {
      const token = await loadOrCreateAdminToken(o.home)
      daemon = new Daemon(o, lock, token, o.log ?? stderrLog())
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

  /** Where the daemon's log lines go. */
  get log(): DaemonLog {
    return this.#log
  }

  get keepaliveMs(): number {
    return this.#o.keepaliveMs ?? 15_000
  }

  /** The meshes held open, by id (a mesh that did not open yet is only in `status()`). */
  meshes(): DaemonMesh[] {
    return [...this.#meshes.values()]
  }

  /** The registered sessions that are open. */
  sessions(): DaemonSession[] {
    return [...this.#sessions.values()]
  }

  /** The caller a bearer token names, or undefined for no valid token. */
  authenticate(token: string | undefined): Caller | undefined {
    if (token === undefined || token === '') return undefined
    if (sameToken(token, this.#adminToken)) return { kind: 'admin' }
    const key = this.#tokens.get(tokenHash(token))
    if (key === undefined) return undefined
    const session = this.#sessions.get(key)
    if (session !== undefined) {
      const stopped = stoppedError(session)
      return stopped === undefined ? { kind: 'session', session } : { kind: 'unusable', error: stopped }
    }
    const unavailable = this.#unopened.unavailable(key)
    return unavailable === undefined ? undefined : { kind: 'unusable', error: unavailable }
  }

  /**
   * Registers a session (or registers it again: the same id keeps its key and its outbox, and gets a new
   * token that replaces the old one). `mesh` may be left out when the daemon holds one mesh.
   */
  register(o: { mesh?: string; sessionId: string; displayName?: string }): Promise<RegisteredSession> {
    return this.#change(async () => {
      const mesh = await this.#meshFor(o.mesh)
      if (mesh.link.state === 'stopped') throw meshStoppedError(mesh)
      if (!LOCAL_ID_RE.test(o.sessionId)) {
        throw new MeshError('MESH_ERR_MALFORMED_FRAME', 'a session id is 1–128 printable ASCII characters', {
          details: { path: 'sessionId' },
        })
      }
      const key = registrationKey(mesh.config.mesh, o.sessionId)
      const token = newToken('ams_')
      const existing = this.#sessions.get(key)
      const previous = existing?.registration ?? this.#unopened.session(key)?.registration
      const displayName = o.displayName ?? previous?.displayName
      const registration: Registration = {
        mesh: mesh.config.mesh,
        sessionId: o.sessionId,
        tokenHash: tokenHash(token),
        registeredAt: previous?.registeredAt ?? this.#clock.now(),
        ...(displayName !== undefined && { displayName }),
      }
      let session = existing
      if (
        existing !== undefined &&
        (existing.registration.displayName !== registration.displayName || existing.link.state === 'stopped')
      ) {
        // The name travels in the hello, and a kicked session says hello again: reconnect.
        this.#sessions.delete(key)
        await closeSession(existing)
        session = undefined
      }
      if (session === undefined) {
        try {
          session = await this.#openSession(mesh, registration)
        } catch (err) {
          // The previous registration (its token still valid) is kept and retried.
          if (existing !== undefined) this.#sessionFailed(existing.registration, err)
          throw err
        }
        this.#unopened.sessionDone(key, true)
      } else session.registration = registration
      if (previous !== undefined) {
        this.#tokens.delete(previous.tokenHash)
        this.emit('revoked', previous.tokenHash)
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
      const all = [...this.sessions().map((s) => s.registration), ...this.#unopened.registrations()]
      const matches = all.filter(
        (r) => r.sessionId === o.sessionId && (o.mesh === undefined || r.mesh === o.mesh),
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
            details: { meshes: matches.map((r) => r.mesh) },
          },
        )
      }
      const r = matches[0]!
      const key = registrationKey(r.mesh, r.sessionId)
      const open = this.#sessions.get(key)
      this.#sessions.delete(key)
      this.#unopened.sessionDone(key, true)
      this.#tokens.delete(r.tokenHash)
      this.emit('revoked', r.tokenHash)
      await this.#persist()
      if (open !== undefined) await closeSession(open)
    })
  }

  /** The mesh's shared inbox store (the control plane's). */
  inboxOf(session: DaemonSession): RuntimeStore {
    return session.mesh.control.store
  }

  /** A plain snapshot for `GET /v1/status` and `daemon status`. */
  status(): DaemonStatus {
    const meshes = [...this.meshes().map(meshJson), ...this.#unopened.meshesJson()].sort((a, b) =>
      a.mesh < b.mesh ? -1 : a.mesh > b.mesh ? 1 : 0,
    )
    const sessions = [...this.sessions().map(sessionJson), ...this.#unopened.sessionsJson()].sort(
      (a, b) => a.registeredAt - b.registeredAt,
    )
    return {
      pid: process.pid,
      port: this.port,
      socket: this.socketPath,
      startedAt: this.startedAt,
      meshes,
      sessions: sessions.map(({ registeredAt: _, ...s }) => s),
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
        this.#unopened.cancelAll()
        await this.#ipc?.close()
        await this.#changes.catch(() => undefined)
        await Promise.allSettled([...this.#opening.values()])
        await Promise.allSettled(this.sessions().map(closeSession))
        await Promise.allSettled(
          this.meshes().map((m) => {
            m.link.detach()
            return m.control.close()
          }),
        )
        await unlink(this.paths.info).catch(() => undefined)
        this.#log.info({}, 'daemon stopped')
      } finally {
        await this.#lock.release()
        for (const w of this.#closedWaiters) w()
      }
    })()
    return this.#closing
  }

  // ── internals ──────────────────────────────────────────────────────────────

  async #open(): Promise<void> {
    for (const mesh of await meshIds(this.#o.home)) await this.#tryMesh(mesh)
    for (const r of await readRegistrations(this.paths.sessions)) {
      this.#tokens.set(r.tokenHash, registrationKey(r.mesh, r.sessionId))
      await this.#tryOpenSession(r)
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
    this.#log.info(
      {
        port: this.#ipc.port,
        meshes: this.#meshes.size,
        sessions: this.#sessions.size,
        unavailable: this.#unopened.size,
      },
      'daemon started',
    )
  }

  /** The mesh named (opened on first use: a mesh joined after `up` is picked up then). */
  #meshFor(mesh: string | undefined): Promise<DaemonMesh> {
    if (mesh === undefined) {
      const all = [...this.#meshes.keys(), ...this.#unopened.meshIds()]
      if (all.length === 1) return this.#meshFor(all[0])
      return Promise.reject(
        new MeshError(
          'MESH_ERR_MALFORMED_FRAME',
          all.length === 0 ? 'this home has joined no mesh' : 'the daemon holds several meshes: name one',
          { details: { path: 'mesh', meshes: all.sort() } },
        ),
      )
    }
    const held = this.#meshes.get(mesh)
    if (held !== undefined) return Promise.resolve(held)
    let opening = this.#opening.get(mesh)
    if (opening === undefined) {
      opening = this.#openMesh(mesh).finally(() => this.#opening.delete(mesh))
      this.#opening.set(mesh, opening)
    }
    return opening
  }

  async #openMesh(mesh: string): Promise<DaemonMesh> {
    if (this.#closing !== undefined) throw shuttingDown()
    const config = await readMeshConfig(this.#o.home, mesh)
    const control = await openControlPlane({ ...this.#common(), config })
    const m: DaemonMesh = {
      config,
      control,
      link: new LinkWatch({
        peer: control.peer,
        clock: this.#clock,
        log: this.#log,
        fields: { mesh, role: 'control-plane' },
        onChange: (link) => {
          if (link.state === 'stopped') this.#meshStopped(m)
          for (const s of this.sessions()) if (s.mesh === m) this.emit('link', s)
        },
      }),
    }
    receiveFiles(control.peer, { home: this.#o.home, onEvent: logFileEvents(this.#log, { mesh }) })
    try {
      await control.peer.start()
    } catch (err) {
      m.link.detach()
      await control.close().catch(() => undefined)
      throw err
    }
    this.#meshes.set(mesh, m)
    this.emit('mesh', m)
    // Its registrations waited for it.
    for (const r of this.#unopened.meshOpened(mesh)) this.#retrySoon(r)
    return m
  }

  /** Opens `mesh`, or records it as pending and schedules another try. Never throws. */
  async #tryMesh(mesh: string): Promise<DaemonMesh | undefined> {
    if (this.#closing !== undefined) return undefined
    try {
      return await this.#meshFor(mesh)
    } catch (err) {
      if (this.#closing === undefined) this.#meshFailed(mesh, err)
      return undefined
    }
  }

  #meshFailed(mesh: string, err: unknown): void {
    this.#unopened.meshFailed(mesh, err, () => void this.#tryMesh(mesh))
  }

  /** The control plane stopped for good (revoked): so does every session of the mesh. */
  #meshStopped(m: DaemonMesh): void {
    const error = meshStoppedError(m)
    for (const s of this.sessions()) if (s.mesh === m) s.link.stopBecause(error)
  }

  /**
   * Opens registration `r` (at start, or when its retry falls due), or keeps it pending with its error:
   * waiting for its mesh when that did not open, else on its own schedule. Never throws.
   */
  async #tryOpenSession(r: Registration): Promise<void> {
    const key = registrationKey(r.mesh, r.sessionId)
    let mesh: DaemonMesh
    try {
      mesh = await this.#meshFor(r.mesh)
    } catch (err) {
      if (this.#closing !== undefined) return
      if (!this.#unopened.hasMesh(r.mesh)) this.#meshFailed(r.mesh, err)
      // No schedule of its own: the mesh's retry opens it, then this registration.
      this.#unopened.waitsForMesh(r, err)
      return
    }
    try {
      const session = await this.#openSession(mesh, r)
      this.#unopened.sessionDone(key)
      this.#sessions.set(key, session)
    } catch (err) {
      if (this.#closing === undefined) this.#sessionFailed(r, err)
    }
  }

  #sessionFailed(r: Registration, err: unknown): void {
    this.#unopened.sessionFailed(r, err, () => this.#retrySoon(r))
  }

  /** Tries pending registration `r` again, in turn with registration changes. */
  #retrySoon(r: Registration): void {
    const key = registrationKey(r.mesh, r.sessionId)
    this.#change(async () => {
      const p = this.#unopened.session(key)
      // Unregistered or registered anew meanwhile: nothing to retry.
      if (p === undefined || p.registration.tokenHash !== r.tokenHash) return
      await this.#tryOpenSession(p.registration)
    }).catch(() => undefined)
  }

  async #openSession(mesh: DaemonMesh, registration: Registration): Promise<DaemonSession> {
    const presence = await openSession({
      ...this.#common(),
      config: mesh.config,
      sessionId: registration.sessionId,
      inbox: mesh.control.store,
      ...(registration.displayName !== undefined && { displayName: registration.displayName }),
    })
    const session: DaemonSession = {
      mesh,
      registration,
      presence,
      sender: new IdempotentSender(presence.peer),
      link: new LinkWatch({
        peer: presence.peer,
        clock: this.#clock,
        log: this.#log,
        fields: { mesh: mesh.config.mesh, role: 'session', sessionId: registration.sessionId },
        onChange: (link) => {
          this.emit('link', session)
          if (link.state === 'stopped' && link.lastError !== undefined) {
            this.emit('stopped', session, link.lastError)
          }
        },
      }),
    }
    receiveFiles(presence.peer, {
      home: this.#o.home,
      onEvent: logFileEvents(this.#log, { mesh: mesh.config.mesh, sessionId: registration.sessionId }),
    })
    try {
      await presence.peer.start()
    } catch (err) {
      await closeSession(session)
      throw err
    }
    if (mesh.link.state === 'stopped') session.link.stopBecause(meshStoppedError(mesh))
    return session
  }

  #common(): { home: string; clock: Clock; tuning: PeerTuning } {
    const tuning = this.#o.peer ?? {}
    const maxDepth = this.#o.maxOutboxDepth
    if (maxDepth === undefined) return { home: this.#o.home, clock: this.#clock, tuning }
    return {
      home: this.#o.home,
      clock: this.#clock,
      tuning: { ...tuning, outbox: { ...tuning.outbox, maxDepth } },
    }
  }

  #persist(): Promise<void> {
    return writeRegistrations(this.paths.sessions, [
      ...this.sessions().map((s) => s.registration),
      ...this.#unopened.registrations(),
    ])
  }

  #change<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#closing !== undefined) return Promise.reject(shuttingDown())
    const run = this.#changes.then(fn, fn)
    this.#changes = run.catch(() => undefined)
    return run
  }
}

/** Starts a daemon on `home`. */
export function startDaemon(o: DaemonOptions): Promise<Daemon> {
  return Daemon.start(o)
}

/** The mesh ids under `<home>/meshes/` (whether or not their config reads). */
async function meshIds(home: string): Promise<string[]> {
  try {
    // Replaced or half-made joins carry a dot in their name, which a mesh id never has.
    return (await readdir(join(home, 'meshes'))).filter((n) => MESH_ID_RE.test(n)).sort()
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return []
    throw err
  }
}

async function closeSession(s: DaemonSession): Promise<void> {
  s.link.detach()
  await s.presence.close()
}

function shuttingDown(): MeshError {
  return new MeshError('MESH_ERR_SHUTTING_DOWN', 'the daemon is shutting down')
}
