/**
 * What the daemon could not open yet: meshes (their `mesh.json` or store) and registrations (their key
 * file or store, or their mesh). Each keeps its retry schedule and last error, for `GET /v1/status` and
 * for the error its session's callers get; the daemon decides what a retry does.
 */
import type { Clock } from '../../../protocol/clock.js'
import type { MeshError } from '../../../protocol/errors.js'
import { errorFields, type DaemonLog } from './log.js'
import { registrationKey, type Registration } from './registry.js'
import { RetrySchedule, type RetryTimings } from './retry-schedule.js'
import { pendingJson, unavailableError } from './status-json.js'
import type { MeshStatusJson, SessionStatusJson } from './types.js'

/** A mesh that did not open. */
export interface PendingMesh {
  retry: RetrySchedule
  since: number
}

/** A registration that did not open (or whose mesh did not). */
export interface PendingSession {
  registration: Registration
  retry: RetrySchedule
  since: number
}

export class Unopened {
  readonly #meshes = new Map<string, PendingMesh>()
  readonly #sessions = new Map<string, PendingSession>()
  readonly #clock: Clock
  readonly #timings: Partial<RetryTimings> | undefined
  readonly #log: DaemonLog

  constructor(o: { clock: Clock; timings: Partial<RetryTimings> | undefined; log: DaemonLog }) {
    this.#clock = o.clock
    this.#timings = o.timings
    this.#log = o.log
  }

  get size(): number {
    return this.#meshes.size + this.#sessions.size
  }

  hasMesh(mesh: string): boolean {
    return this.#meshes.has(mesh)
  }

  meshIds(): string[] {
    return [...this.#meshes.keys()]
  }

  /** Records that `mesh` failed to open and schedules `retry`. */
  meshFailed(mesh: string, err: unknown, retry: () => void): void {
    let p = this.#meshes.get(mesh)
    if (p === undefined) {
      p = { retry: this.#schedule(), since: this.#clock.now() }
      this.#meshes.set(mesh, p)
    }
    const delay = p.retry.failed(err, retry)
    this.#log.warn(
      { mesh, role: 'control-plane', attempts: p.retry.attempts, retryInMs: delay, ...errorFields(err) },
      'mesh open failed',
    )
  }

  /** `mesh` opened: forgets it and answers its registrations that waited for it. */
  meshOpened(mesh: string): Registration[] {
    const p = this.#meshes.get(mesh)
    if (p === undefined) return []
    p.retry.cancel()
    this.#meshes.delete(mesh)
    this.#log.info({ mesh, role: 'control-plane', attempts: p.retry.attempts }, 'mesh opened')
    return [...this.#sessions.values()].filter((s) => s.registration.mesh === mesh).map((s) => s.registration)
  }

  /** The pending registration under `key`. */
  session(key: string): PendingSession | undefined {
    return this.#sessions.get(key)
  }

  /** Records `r` as waiting for its mesh (which failed with `err`): no schedule of its own. */
  waitsForMesh(r: Registration, err: unknown): void {
    const p = this.#pending(r)
    p.retry.cancel()
    p.retry.lastError = err
  }

  /** Records that `r` failed to open and schedules `retry`. */
  sessionFailed(r: Registration, err: unknown, retry: () => void): void {
    const p = this.#pending(r)
    const delay = p.retry.failed(err, retry)
    this.#log.warn(
      {
        mesh: r.mesh,
        role: 'session',
        sessionId: r.sessionId,
        attempts: p.retry.attempts,
        retryInMs: delay,
        ...errorFields(err),
      },
      'session open failed',
    )
  }

  /** The registration under `key` opened (or was unregistered, `quiet`): forgets it. */
  sessionDone(key: string, quiet = false): void {
    const p = this.#sessions.get(key)
    if (p === undefined) return
    p.retry.cancel()
    this.#sessions.delete(key)
    if (quiet) return
    const r = p.registration
    this.#log.info(
      { mesh: r.mesh, role: 'session', sessionId: r.sessionId, attempts: p.retry.attempts },
      'session opened',
    )
  }

  /** `MESH_ERR_SESSION_UNAVAILABLE` for the registration under `key`, or undefined if it is not pending. */
  unavailable(key: string): MeshError | undefined {
    const p = this.#sessions.get(key)
    return p === undefined ? undefined : unavailableError(p.registration, p.retry)
  }

  registrations(): Registration[] {
    return [...this.#sessions.values()].map((p) => p.registration)
  }

  meshesJson(): MeshStatusJson[] {
    return [...this.#meshes].map(([mesh, p]) => ({ mesh, ...pendingJson(p) }))
  }

  sessionsJson(): (SessionStatusJson & { registeredAt: number })[] {
    return [...this.#sessions.values()].map((p) => ({
      mesh: p.registration.mesh,
      sessionId: p.registration.sessionId,
      ...(p.registration.displayName !== undefined && { displayName: p.registration.displayName }),
      ...pendingJson(p),
      registeredAt: p.registration.registeredAt,
    }))
  }

  /** Stops every scheduled retry (the daemon is closing). */
  cancelAll(): void {
    for (const p of [...this.#meshes.values(), ...this.#sessions.values()]) p.retry.cancel()
  }

  #pending(r: Registration): PendingSession {
    const key = registrationKey(r.mesh, r.sessionId)
    let p = this.#sessions.get(key)
    if (p === undefined) {
      p = { registration: r, retry: this.#schedule(), since: this.#clock.now() }
      this.#sessions.set(key, p)
    }
    p.registration = r
    return p
  }

  #schedule(): RetrySchedule {
    return new RetrySchedule(this.#clock, this.#timings)
  }
}
