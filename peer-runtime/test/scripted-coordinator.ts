/**
 * A coordinator that follows a script, for tests of the client side of the connection that a real
 * coordinator would not do on purpose: stop answering (a half-dead link), answer requests out of order.
 * Real `ws` on 127.0.0.1 port 0; it sends a challenge, acks any hello, and hands every later frame to
 * the test.
 */
import { WebSocketServer, type WebSocket } from 'ws'
import {
  createIdentity,
  decodeFrame,
  encodeFrame,
  errorFrame,
  MeshError,
  randomBytes,
  type MeshErrorCode,
  type Frame,
  type Identity,
} from '../../protocol/index.js'

/** One client socket as the scripted coordinator sees it. */
export interface ScriptedSocket {
  /** Frames received after the hello (pings included). */
  readonly frames: Frame[]
  send(frame: Frame): void
  /** While true, nothing is sent back: not even the pong to a ping. */
  silent: boolean
  readonly closed: Promise<void>
}

export interface ScriptedCoordinator {
  url: string
  identity: Identity
  /** Every socket that said hello, in order. */
  readonly sockets: ScriptedSocket[]
  /** Called with each frame after the hello. */
  onFrame?: (socket: ScriptedSocket, frame: Frame) => void
  close(): Promise<void>
}

export interface ScriptedOptions {
  /** The coordinator's key (default a fresh one). */
  identity?: Identity
  /** Refuse every hello: an `error` frame with this code, then a close with `close`. */
  refuseHello?: { code: MeshErrorCode; message: string; close: number }
}

export async function scriptedCoordinator(o: ScriptedOptions = {}): Promise<ScriptedCoordinator> {
  const identity = o.identity ?? createIdentity('coordinator')
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 })
  await new Promise<void>((resolve) => wss.once('listening', resolve))
  const address = wss.address()
  const port = typeof address === 'object' && address !== null ? address.port : 0
  const world: ScriptedCoordinator = {
    url: `ws://127.0.0.1:${port}/ws`,
    identity,
    sockets: [],
    close: () =>
      new Promise((resolve) => {
        for (const c of wss.clients) c.terminate()
        wss.close(() => resolve())
      }),
  }
  wss.on('connection', (ws: WebSocket) => {
    let said = false
    const socket: ScriptedSocket = {
      frames: [],
      silent: false,
      send: (frame) => ws.send(encodeFrame(frame)),
      closed: new Promise((resolve) => ws.once('close', () => resolve())),
    }
    ws.on('message', (data: Buffer) => {
      const frame = decodeFrame(new Uint8Array(data))
      if (!said) {
        if (frame.t !== 'hello') return
        if (o.refuseHello !== undefined) {
          const err = new MeshError(o.refuseHello.code, o.refuseHello.message)
          socket.send(errorFrame(err, frame.reqId))
          ws.close(o.refuseHello.close, `${err.code}: ${err.message}`)
          return
        }
        said = true
        world.sockets.push(socket)
        socket.send({
          t: 'hello_ack',
          ...(frame.reqId !== undefined && { reqId: frame.reqId }),
          proto: 1,
          features: [],
          stateVersion: 0,
          presenceId: `p-${world.sockets.length}`,
          nodeId: 'scripted',
          leaseMs: 90_000,
          limits: { maxFrameBytes: 73_728, maxEnvelopeBytes: 65_536, maxPayloadBytes: 61_440 },
        })
        return
      }
      socket.frames.push(frame)
      if (socket.silent) return
      if (frame.t === 'ping') socket.send({ t: 'pong' })
      world.onFrame?.(socket, frame)
    })
    ws.send(
      encodeFrame({
        t: 'challenge',
        nonce: randomBytes(32),
        coordinatorPk: identity.publicKey,
        nodeId: 'scripted',
      }),
    )
  })
  return world
}
