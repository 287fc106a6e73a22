/**
 * The test's handle on a WebRTC endpoint in another process (remote-endpoint.ts): a `PeerTransport` that
 * only accepts, whose sessions forward `send` and `close` over IPC and replay the remote session's
 * messages and closes. Backpressure is the IPC path's: `send` refuses past `highWaterMark` bytes the
 * remote session has not taken yet, and `drain` follows its credit.
 */
import { fork, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { MeshError, type Identity, type Signed } from '../../../protocol/index.js'
import { Emitter } from '../../emitter.js'
import type {
  PeerRef,
  PeerTransport,
  TransportCapabilities,
  TransportSession,
  TransportSessionEvents,
} from '../../types.js'
import type { FromEndpoint, ToEndpoint } from './remote-endpoint.js'

const HIGH_WATER_MARK = 256 * 1024
const LOW_WATER_MARK = 64 * 1024

/** What the remote endpoint needs to say hello to the coordinator. */
export interface RemoteStart {
  wsUrl: string
  mesh: string
  identity: Identity
  attestation: Signed
  sessionId: string
}

class RemoteSession extends Emitter<TransportSessionEvents> implements TransportSession {
  readonly kind = 'webrtc' as const
  readonly #owner: RemoteTransport
  readonly #id: number
  readonly #maxFrameBytes: number
  #buffered = 0
  #refused = false
  #open = true
  #closing: Promise<void> | undefined
  #closedByRemote: (() => void) | undefined

  constructor(
    owner: RemoteTransport,
    id: number,
    readonly peer: PeerRef,
    maxFrameBytes: number,
  ) {
    super()
    this.#owner = owner
    this.#id = id
    this.#maxFrameBytes = maxFrameBytes
  }

  get open(): boolean {
    return this.#open
  }

  get bufferedAmount(): number {
    return this.#buffered
  }

  send(frame: Uint8Array): boolean {
    if (!this.#open) throw new MeshError('MESH_ERR_TRANSPORT_CLOSED', 'the remote session is closed')
    if (frame.byteLength > this.#maxFrameBytes) {
      throw new MeshError(
        'MESH_ERR_FRAME_TOO_LARGE',
        `${frame.byteLength} B is over ${this.#maxFrameBytes} B`,
      )
    }
    if (this.#buffered >= HIGH_WATER_MARK) {
      this.#refused = true
      return false
    }
    this.#buffered += frame.byteLength
    this.#owner.post({ t: 'send', id: this.#id, frame })
    return true
  }

  close(reason?: string): Promise<void> {
    if (this.#closing !== undefined) return this.#closing
    const wasOpen = this.#open
    this.#open = false
    this.#closing = wasOpen
      ? new Promise<void>((resolve) => {
          this.#closedByRemote = resolve
          this.#owner.post({ t: 'close', id: this.#id, ...(reason !== undefined && { reason }) })
        })
      : Promise.resolve()
    return this.#closing
  }

  /** The remote session took `bytes` more. */
  credit(bytes: number): void {
    this.#buffered -= bytes
    if (this.#refused && this.#buffered <= LOW_WATER_MARK) {
      this.#refused = false
      this.emit('drain')
    }
  }

  /** The remote session closed. */
  ended(error: { code?: string; message: string } | undefined): void {
    this.#open = false
    this.#closing ??= Promise.resolve()
    this.#closedByRemote?.()
    // The remote error's code and message, as `MeshError.fromWire` reads an error frame.
    const err =
      error === undefined
        ? undefined
        : MeshError.fromWire({
            code: error.code ?? 'MESH_ERR_TRANSPORT_CLOSED',
            message: error.message,
            permanent: false,
          })
    this.emit('close', err)
    this.removeAllListeners()
  }

  delivered(frame: Uint8Array): void {
    this.emit('message', frame)
  }
}

/** See the module comment. Start it with `RemoteTransport.start`. */
export class RemoteTransport implements PeerTransport {
  readonly kind = 'webrtc' as const
  capabilities: TransportCapabilities = { p2p: true, ordered: true, maxFrameBytes: 0 }
  /** The remote endpoint's presence key. */
  pk: Uint8Array = new Uint8Array(0)
  /** Handles the remote transport reported still held when it closed. */
  handles = 0
  readonly #child: ChildProcess
  readonly #sessions = new Map<number, RemoteSession>()
  readonly #listeners = new Set<(session: TransportSession) => void>()
  readonly #waiters = new Map<FromEndpoint['t'], ((m: FromEndpoint) => void)[]>()
  readonly #gone: Promise<void>
  #failure: Error | undefined
  #mesh = ''

  private constructor() {
    const file = fileURLToPath(new URL('./remote-endpoint.ts', import.meta.url))
    this.#child = fork(file, [], {
      execArgv: ['--import', 'tsx'],
      serialization: 'advanced',
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    })
    this.#gone = new Promise((resolve) => this.#child.once('close', () => resolve()))
    this.#child.on('message', (m: FromEndpoint) => this.#onMessage(m))
  }

  /** Forks the endpoint and waits until it said hello and listed the peers online. */
  static async start(init: RemoteStart): Promise<RemoteTransport> {
    const remote = new RemoteTransport()
    remote.#mesh = init.mesh
    remote.post({ t: 'start', ...init })
    const ready = (await remote.#next('ready')) as Extract<FromEndpoint, { t: 'ready' }>
    remote.pk = ready.pk
    remote.capabilities = { p2p: true, ordered: ready.ordered, maxFrameBytes: ready.maxFrameBytes }
    return remote
  }

  post(message: ToEndpoint): void {
    if (this.#child.connected) this.#child.send(message)
  }

  open(): Promise<TransportSession> {
    return Promise.reject(new Error('the remote endpoint only accepts'))
  }

  onSession(listener: (session: TransportSession) => void): void {
    this.#listeners.add(listener)
  }

  async close(): Promise<void> {
    if (!this.#child.connected) return
    this.post({ t: 'close-transport' })
    const closed = (await this.#next('transport-closed')) as Extract<FromEndpoint, { t: 'transport-closed' }>
    this.handles = closed.handles
  }

  /** Closes the endpoint's transport and connection; resolves once the process ended by itself. */
  async finish(): Promise<number | null> {
    this.post({ t: 'finish' })
    await this.#gone
    if (this.#failure !== undefined) throw this.#failure
    return this.#child.exitCode
  }

  #onMessage(m: FromEndpoint): void {
    if (m.t === 'accepted') {
      const session = new RemoteSession(
        this,
        m.id,
        { mesh: this.#mesh, pk: m.peerPk },
        this.capabilities.maxFrameBytes,
      )
      this.#sessions.set(m.id, session)
      for (const listener of this.#listeners) listener(session)
    } else if (m.t === 'message') {
      this.#sessions.get(m.id)?.delivered(m.frame)
    } else if (m.t === 'sent') {
      this.#sessions.get(m.id)?.credit(m.bytes)
    } else if (m.t === 'close') {
      this.#sessions.get(m.id)?.ended(m.error)
      this.#sessions.delete(m.id)
    } else if (m.t === 'failed') {
      this.#failure = new Error(`the remote endpoint failed: ${m.error}`)
    }
    const waiter = this.#waiters.get(m.t)?.shift()
    waiter?.(m)
  }

  #next(t: FromEndpoint['t']): Promise<FromEndpoint> {
    return new Promise((resolve, reject) => {
      const list = this.#waiters.get(t) ?? []
      this.#waiters.set(t, list)
      list.push(resolve)
      void this.#gone.then(() => reject(this.#failure ?? new Error(`the remote endpoint exited before ${t}`)))
    })
  }
}
