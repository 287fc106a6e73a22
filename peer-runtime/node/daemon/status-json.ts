/**
 * How the daemon describes its meshes and sessions: the state JSON of `GET /v1/status` (types.ts), and the
 * errors IPC callers of a stopped or not-yet-open session get.
 */
import { toHex } from '../../../protocol/encoding.js'
import { isMeshError, MeshError } from '../../../protocol/errors.js'
import type { LinkState, LinkWatch } from './link-watch.js'
import { errorText } from './log.js'
import type { Registration } from './registry.js'
import type { RetrySchedule } from './retry-schedule.js'
import type { DaemonMesh, DaemonSession, LinkStatusJson, MeshStatusJson, SessionStatusJson } from './types.js'

/** Why a session is refused because it (or its mesh) stopped for good, or undefined. */
export function stoppedError(s: DaemonSession): MeshError | undefined {
  if (s.mesh.link.state === 'stopped') return meshStoppedError(s.mesh, s.registration.sessionId)
  if (s.link.state !== 'stopped') return undefined
  const cause = s.link.lastError
  return new MeshError(
    cause?.code ?? 'MESH_ERR_DISCONNECTED',
    `session ${s.registration.sessionId} of mesh ${s.mesh.config.mesh} stopped: ${cause?.message ?? 'closed'}`,
    { details: { mesh: s.mesh.config.mesh, sessionId: s.registration.sessionId, state: 'stopped' } },
  )
}

export function meshStoppedError(m: DaemonMesh, sessionId?: string): MeshError {
  const cause = m.link.lastError
  return new MeshError(
    cause?.code ?? 'MESH_ERR_DISCONNECTED',
    `mesh ${m.config.mesh} stopped: ${cause?.message ?? 'closed'}; the daemon no longer serves it`,
    {
      details: { mesh: m.config.mesh, state: 'stopped', ...(sessionId !== undefined && { sessionId }) },
    },
  )
}

function errorJson(err: unknown): { code: string; message: string } | undefined {
  if (err === undefined) return undefined
  if (isMeshError(err)) return { code: err.code, message: err.message }
  return { code: 'MESH_ERR_INTERNAL', message: errorText(err) }
}

export function linkJson(link: LinkWatch): LinkStatusJson {
  const lastError = errorJson(link.lastError)
  return {
    state: link.state,
    connected: link.state === 'connected' && link.connected,
    since: link.since,
    ...(lastError !== undefined && { lastError }),
  }
}

/** A session's state: its own, unless its mesh stopped (the member was revoked). */
export function sessionLinkJson(s: DaemonSession): LinkStatusJson {
  const own = linkJson(s.link)
  if (s.mesh.link.state !== 'stopped' || own.state === 'stopped') return own
  return { ...linkJson(s.mesh.link), connected: false }
}

export function pendingJson(p: { retry: RetrySchedule; since: number }): LinkStatusJson {
  const lastError = errorJson(p.retry.lastError)
  const state: LinkState = 'unavailable'
  return {
    state,
    connected: false,
    since: p.since,
    ...(lastError !== undefined && { lastError }),
    attempts: p.retry.attempts,
    ...(p.retry.retryAt !== undefined && { retryAt: p.retry.retryAt }),
  }
}

/** `MESH_ERR_SESSION_UNAVAILABLE` for registration `r`, which did not open (`retry` says why and when next). */
export function unavailableError(r: Registration, retry: RetrySchedule): MeshError {
  const last = retry.lastError
  const why = isMeshError(last) ? `${last.code}: ${last.message}` : errorText(last)
  return new MeshError(
    'MESH_ERR_SESSION_UNAVAILABLE',
    `session ${r.sessionId} of mesh ${r.mesh} is not open (${why}); the daemon retries it in the background`,
    {
      details: {
        mesh: r.mesh,
        sessionId: r.sessionId,
        ...(isMeshError(last) && { lastError: { code: last.code, message: last.message } }),
        ...(retry.retryAt !== undefined && { retryAt: retry.retryAt }),
      },
    },
  )
}

/** An open mesh in `GET /v1/status`. */
export function meshJson(m: DaemonMesh): MeshStatusJson {
  return {
    mesh: m.config.mesh,
    memberPk: m.config.memberPk,
    coordinatorUrl: m.config.coordinatorUrl,
    ...linkJson(m.link),
  }
}

/** An open session in `GET /v1/status` (with `registeredAt`, the order they are listed in). */
export function sessionJson(s: DaemonSession): SessionStatusJson & { registeredAt: number } {
  return {
    mesh: s.mesh.config.mesh,
    sessionId: s.registration.sessionId,
    sessionPk: toHex(s.presence.identity.publicKey),
    ...(s.registration.displayName !== undefined && { displayName: s.registration.displayName }),
    ...sessionLinkJson(s),
    registeredAt: s.registration.registeredAt,
  }
}

/** What the SSE `link` event (and `ready.link`) says: the session's state and its mesh's. */
export function linkEventJson(s: DaemonSession): LinkStatusJson & { mesh: LinkStatusJson } {
  return { ...sessionLinkJson(s), mesh: linkJson(s.mesh.link) }
}
