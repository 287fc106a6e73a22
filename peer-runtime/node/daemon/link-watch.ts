/**
 * Follows one presence's coordinator connection for the daemon: its state for `daemon status` and IPC
 * callers, and one log line per change (connected, down, failed, refused hello, reconnected, stopped).
 *
 * A hello refused with `MESH_ERR_REVOKED` counts as stopped, like a 4002 close: the member was revoked
 * while the daemon was away, and no retry can fix it.
 */
import type { Clock } from '../../../protocol/clock.js'
import { MeshError } from '../../../protocol/errors.js'
import type { DownInfo } from '../../connection.js'
import type { Peer, PeerEvents } from '../../peer.js'
import { errorFields, type DaemonLog } from './log.js'

/** Where a presence (or a mesh) is. `unavailable`: it could not be opened yet and is retried. */
export type LinkState = 'unavailable' | 'connecting' | 'connected' | 'reconnecting' | 'stopped'

/** Who a watch speaks for, in its log lines. */
export interface LinkFields {
  mesh: string
  role: 'control-plane' | 'session'
  sessionId?: string
}

/** Hello refusals that no retry fixes: the presence is stopped (the connection may stop on its own too). */
const FINAL_REFUSALS = new Set<string>(['MESH_ERR_REVOKED'])

/** A presence's connection state, kept from its `Peer`'s events. */
export class LinkWatch {
  state: LinkState = 'connecting'
  /** Unix ms of the last change. */
  since: number
  /** Why it is not connected (the last failure, or what stopped it). */
  lastError: MeshError | undefined
  readonly #peer: Peer
  readonly #clock: Clock
  readonly #log: DaemonLog
  readonly #fields: LinkFields
  readonly #onChange: (watch: LinkWatch) => void
  #everConnected = false
  readonly #off: (() => void)[] = []

  constructor(o: {
    peer: Peer
    clock: Clock
    log: DaemonLog
    fields: LinkFields
    /** Called after every change of `state` (and when the peer must be closed: `state` is `stopped`). */
    onChange: (watch: LinkWatch) => void
  }) {
    this.#peer = o.peer
    this.#clock = o.clock
    this.#log = o.log
    this.#fields = o.fields
    this.#onChange = o.onChange
    this.since = o.clock.now()
    const on = <K extends keyof PeerEvents>(event: K, fn: PeerEvents[K]): void => {
      o.peer.on(event, fn)
      this.#off.push(() => o.peer.off(event, fn))
    }
    on('connected', () => {
      this.#log.info(this.#fields, this.#everConnected ? 'reconnected' : 'connected')
      this.#everConnected = true
      this.lastError = undefined
      this.#set('connected')
    })
    on('disconnected', (info: DownInfo) => {
      if (this.state === 'stopped') return
      const error = info.error ?? downError(info)
      this.#log.warn({ ...this.#fields, closeCode: info.code, ...errorFields(error) }, 'connection down')
      this.lastError = error
      this.#set('reconnecting')
    })
    on('failed', (info: DownInfo) => {
      // Stopped already: a connection that still re-dials (a hello refused by an error frame) logs once.
      if (this.state === 'stopped') return
      const error = info.error ?? downError(info)
      const refused = isRefusal(info, error)
      this.#log.warn(
        { ...this.#fields, closeCode: info.code, ...errorFields(error) },
        refused ? 'hello refused' : 'connect failed',
      )
      this.lastError = error
      if (refused && FINAL_REFUSALS.has(error.code)) this.#stop(error)
      else this.#set(this.#everConnected ? 'reconnecting' : 'connecting')
    })
    on('stopped', (err?: MeshError) => {
      // undefined: our own close(); stopped already: by its mesh, or by a final refusal.
      if (err === undefined || this.state === 'stopped') return
      this.#stop(err)
    })
    on('error', (err: unknown) => this.#log.error({ ...this.#fields, ...errorFields(err) }, 'runtime error'))
  }

  get connected(): boolean {
    return this.#peer.connected
  }

  /** Marks it stopped by its mesh (the member was revoked): callers are refused with `error`. */
  stopBecause(error: MeshError): void {
    if (this.state !== 'stopped') this.#stop(error)
  }

  /** Stops following the peer (before it is closed, so our own close logs nothing). */
  detach(): void {
    for (const off of this.#off.splice(0)) off()
  }

  #stop(error: MeshError): void {
    this.lastError = error
    this.#log.error({ ...this.#fields, ...errorFields(error) }, 'stopped')
    this.#set('stopped')
  }

  #set(state: LinkState): void {
    if (state === this.state && state !== 'stopped') return
    this.state = state
    this.since = this.#clock.now()
    this.#onChange(this)
  }
}

/** Failures that are no answer at all (nothing listens, silence, someone else's coordinator). */
const NO_ANSWER = new Set<string>([
  'MESH_ERR_DISCONNECTED',
  'MESH_ERR_HELLO_TIMEOUT',
  'MESH_ERR_COORDINATOR_MISMATCH',
])

/** Whether the coordinator refused the hello (an error frame, or a close with a code saying why). */
function isRefusal(info: DownInfo, error: MeshError): boolean {
  return (
    info.reason === 'hello refused' || info.code === 1008 || (info.code > 4000 && !NO_ANSWER.has(error.code))
  )
}

function downError(info: DownInfo): MeshError {
  return new MeshError('MESH_ERR_DISCONNECTED', `the coordinator connection closed (${info.code})`, {
    details: { code: info.code, reason: info.reason },
  })
}
