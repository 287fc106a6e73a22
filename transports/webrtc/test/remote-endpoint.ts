/**
 * One WebRTC endpoint in a process of its own, driven over IPC by `RemoteTransport` (remote-transport.ts)
 * so the compliance suite can run with its `b` side here: it connects a session to the coordinator with
 * the key it is handed, accepts the sessions the test's side opens, and relays their frames, drains and
 * closes both ways. Run through `child_process.fork` with `--import tsx` and `serialization: 'advanced'`.
 */
import { initCrypto, isMeshError, type Identity, type Signed } from '../../../protocol/index.js'
import { MeshClient } from '../../../test/support/mesh-client.js'
import { ListedSessions, meshClientSignaling } from '../../../test/support/mesh-client-signaling.js'
import type { TransportSession } from '../../types.js'
import { nodeWebrtcStats, nodeWebrtcTransport } from '../node.js'

/** What the driving process sends. */
export type ToEndpoint =
  | { t: 'start'; wsUrl: string; mesh: string; identity: Identity; attestation: Signed; sessionId: string }
  | { t: 'send'; id: number; frame: Uint8Array }
  | { t: 'close'; id: number; reason?: string }
  | { t: 'close-transport' }
  | { t: 'finish' }

/** What this process reports. */
export type FromEndpoint =
  | { t: 'ready'; pk: Uint8Array; maxFrameBytes: number; ordered: boolean }
  | { t: 'accepted'; id: number; peerPk: Uint8Array }
  | { t: 'message'; id: number; frame: Uint8Array }
  /** `bytes` of frames the session took from its queue: credit back to the driver. */
  | { t: 'sent'; id: number; bytes: number }
  | { t: 'close'; id: number; error?: { code?: string; message: string } }
  | { t: 'closed'; id: number }
  | { t: 'transport-closed'; handles: number }
  | { t: 'failed'; error: string }

function report(message: FromEndpoint): void {
  process.send?.(message)
}

function fail(err: unknown): void {
  report({ t: 'failed', error: err instanceof Error ? (err.stack ?? err.message) : String(err) })
  process.exitCode = 1
  process.disconnect?.()
}

/** One accepted session and the frames the driver sent that it has not taken yet. */
class Served {
  readonly queue: Uint8Array[] = []
  #waiters: (() => void)[] = []

  constructor(
    readonly id: number,
    readonly session: TransportSession,
  ) {
    session.on('drain', () => this.pump())
  }

  /** Hands queued frames to the session until it refuses one; `drain` resumes. */
  pump(): void {
    while (this.queue.length > 0 && this.session.open) {
      const frame = this.queue[0]!
      if (!this.session.send(frame)) return
      this.queue.shift()
      report({ t: 'sent', id: this.id, bytes: frame.byteLength })
    }
    for (const wake of this.#waiters.splice(0)) wake()
  }

  /** Resolves once every queued frame went to the session (or it closed). */
  flushed(): Promise<void> {
    if (this.queue.length === 0 || !this.session.open) return Promise.resolve()
    return new Promise((resolve) => this.#waiters.push(resolve))
  }
}

async function run(start: Extract<ToEndpoint, { t: 'start' }>): Promise<void> {
  await initCrypto()
  const client = await MeshClient.connect(start.wsUrl, {
    identity: start.identity,
    mesh: start.mesh,
    role: 'session',
    attestation: start.attestation,
    sessionId: start.sessionId,
    capabilities: { p2p: true, transports: ['webrtc', 'ws'] },
  })
  const listed = new ListedSessions(client)
  await listed.refresh()
  const transport = nodeWebrtcTransport({
    identity: start.identity,
    mesh: start.mesh,
    signaling: meshClientSignaling(client),
    vouch: listed.vouch,
  })
  const served = new Map<number, Served>()
  let nextId = 1
  transport.onSession((session) => {
    const s = new Served(nextId++, session)
    served.set(s.id, s)
    report({ t: 'accepted', id: s.id, peerPk: session.peer.pk })
    session.on('message', (frame) => report({ t: 'message', id: s.id, frame }))
    session.once('close', (err) => {
      s.pump() // wakes flush waiters
      report({
        t: 'close',
        id: s.id,
        ...(err !== undefined && {
          error: { message: err.message, ...(isMeshError(err) && { code: err.code }) },
        }),
      })
    })
  })

  process.on('message', (message: ToEndpoint) => {
    if (message.t === 'send') {
      const s = served.get(message.id)
      if (s === undefined) return
      s.queue.push(message.frame)
      s.pump()
    } else if (message.t === 'close') {
      const s = served.get(message.id)
      if (s === undefined) return
      s.flushed()
        .then(() => s.session.close(message.reason))
        .then(() => report({ t: 'closed', id: message.id }), fail)
    } else if (message.t === 'close-transport') {
      transport.close().then(() => report({ t: 'transport-closed', handles: transport.handles }), fail)
    } else if (message.t === 'finish') {
      const finish = async (): Promise<void> => {
        await transport.close()
        await client.close()
        if (nodeWebrtcStats().openConnections !== 0) throw new Error('a peer connection is still open')
        // Nothing else holds the process: once the IPC channel goes, it ends by itself.
        process.disconnect?.()
      }
      finish().catch(fail)
    }
  })
  report({
    t: 'ready',
    pk: start.identity.publicKey,
    maxFrameBytes: transport.capabilities.maxFrameBytes,
    ordered: transport.capabilities.ordered,
  })
}

process.once('message', (message: ToEndpoint) => {
  if (message.t === 'start') run(message).catch(fail)
  else fail(new Error(`expected start, got ${message.t}`))
})
