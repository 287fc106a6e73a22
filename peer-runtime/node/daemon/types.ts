/**
 * The daemon's shared shapes: what it holds (meshes, sessions), who calls it, what `GET /v1/status`
 * answers, and `IpcHost`, the face of the daemon the IPC server and the event streams see. They live
 * here, not in `daemon.ts`, so `ipc-server.ts` and `ipc-events.ts` import no module that imports them
 * (daemon → ipc-server → ipc-events, no cycle).
 */
import type { MeshError } from '../../../protocol/errors.js'
import type { TypedEmitter } from '../../../transports/types.js'
import type { RuntimeStore } from '../../store/types.js'
import type { MeshConfig } from '../home.js'
import type { IdempotentSender } from './ipc-send.js'
import type { LinkState, LinkWatch } from './link-watch.js'
import type { DaemonLog } from './log.js'
import type { Presence } from './presences.js'
import type { Registration } from './registry.js'

/** A mesh the daemon holds open. */
export interface DaemonMesh {
  config: MeshConfig
  control: Presence
  /** The control plane's connection state (`stopped` when the member was revoked). */
  link: LinkWatch
}

/** A registered session that is open. */
export interface DaemonSession {
  mesh: DaemonMesh
  registration: Registration
  presence: Presence
  sender: IdempotentSender
  link: LinkWatch
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

/**
 * Who a bearer token belongs to. `unusable`: a registered session that is not open (retried in the
 * background: `MESH_ERR_SESSION_UNAVAILABLE`) or was stopped (revoked, kicked, replaced): its session
 * routes answer `error`.
 */
export type Caller =
  { kind: 'admin' } | { kind: 'session'; session: DaemonSession } | { kind: 'unusable'; error: MeshError }

/** The daemon's events. */
export interface DaemonEvents {
  /** A session token stopped being valid (unregistered, or replaced by a new registration). */
  revoked: (tokenHash: string) => void
  /** A session's connection, or its mesh's, changed state (`linkEventJson` describes both). */
  link: (session: DaemonSession) => void
  /** A session stopped for good (it or its mesh was revoked, kicked or replaced). */
  stopped: (session: DaemonSession, error: MeshError) => void
  /** A mesh opened: at start, or later by its background retry (so a reporter can watch it too). */
  mesh: (mesh: DaemonMesh) => void
}

/** A connection's state as `GET /v1/status` gives it. */
export interface LinkStatusJson {
  /** `connected`, `connecting`, `reconnecting`, `stopped` (for good) or `unavailable` (retried). */
  state: LinkState
  connected: boolean
  /** Unix ms of the last change of `state`. */
  since: number
  /** Why it is not connected: the last failure, or what stopped it. */
  lastError?: { code: string; message: string }
  /** For `unavailable`: failed opens so far and the Unix ms of the next try. */
  attempts?: number
  retryAt?: number
}

/** A mesh in `GET /v1/status` (`memberPk` and `coordinatorUrl` are absent when its config did not open). */
export interface MeshStatusJson extends LinkStatusJson {
  mesh: string
  memberPk?: string
  coordinatorUrl?: string
}

/** A registered session in `GET /v1/status` (`sessionPk` is absent until its key file opened). */
export interface SessionStatusJson extends LinkStatusJson {
  mesh: string
  sessionId: string
  sessionPk?: string
  displayName?: string
}

/** What `GET /v1/status` answers. */
export interface DaemonStatus {
  pid: number
  port: number
  socket: string
  startedAt: number
  meshes: MeshStatusJson[]
  sessions: SessionStatusJson[]
}

/** What the IPC server and the event streams use of the daemon. */
export interface IpcHost extends TypedEmitter<DaemonEvents> {
  /** The SSE keepalive period. */
  readonly keepaliveMs: number
  /** Where runtime errors of the IPC go. */
  readonly log: DaemonLog
  authenticate(token: string | undefined): Caller | undefined
  register(o: { mesh?: string; sessionId: string; displayName?: string }): Promise<RegisteredSession>
  unregister(o: { mesh?: string; sessionId: string }): Promise<void>
  status(): DaemonStatus
  /** The mesh's shared inbox store (the control plane's). */
  inboxOf(session: DaemonSession): RuntimeStore
  close(): Promise<void>
}
