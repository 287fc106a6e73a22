/**
 * A lean peer connection for load: one WebSocket to the coordinator that answers the challenge with a
 * control-plane hello, then hands every later frame to a callback. Unlike the tests' MeshClient it keeps
 * no log, decodes no envelope and queues nothing, so what a bench measures is the coordinator's work, not
 * the client's bookkeeping. Also `openRawSocket`, the same socket options on a plain relay.
 */
import { WebSocket, type RawData } from 'ws'
import {
  decodeFrame,
  encodeFrame,
  MAX_WS_PAYLOAD_BYTES,
  MeshError,
  PROTOCOL_VERSION,
  randomBytes,
  signHello,
  toHex,
  type Capabilities,
  type Frame,
  type Identity,
} from '../../protocol/index.js'

export interface PeerSocketOptions {
  identity: Identity
  mesh: string
  /** Every frame after `hello_ack` (pings are answered here and not passed on). */
  onFrame: (frame: Frame) => void
  timeoutMs?: number
  /** What the hello advertises; default no `p2p`, `ws` only (the relay scenarios). */
  capabilities?: Capabilities
}

/** A member's control-plane connection, past its hello. */
export class PeerSocket {
  readonly #ws: WebSocket
  readonly closed: Promise<void>

  private constructor(ws: WebSocket) {
    this.#ws = ws
    this.closed = new Promise((resolve) => ws.once('close', () => resolve()))
  }

  static async connect(wsUrl: string, o: PeerSocketOptions): Promise<PeerSocket> {
    const ws = new WebSocket(wsUrl, { maxPayload: MAX_WS_PAYLOAD_BYTES, perMessageDeflate: false })
    const socket = new PeerSocket(ws)
    let onHandshake: ((frame: Frame) => void) | undefined
    ws.on('message', (data: RawData) => {
      const frame = decodeFrame(toBytes(data))
      if (frame.t === 'ping') ws.send(encodeFrame({ t: 'pong' }))
      else if (onHandshake !== undefined) onHandshake(frame)
      else o.onFrame(frame)
    })
    ws.on('error', () => undefined)
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('hello timed out')), o.timeoutMs ?? 20_000)
        void socket.closed.then(() => reject(new Error('closed during hello')))
        onHandshake = (frame) => {
          if (frame.t === 'challenge') {
            const body = signHello({
              identity: o.identity,
              mesh: o.mesh,
              role: 'control-plane',
              challengeNonce: frame.nonce,
              capabilities: o.capabilities ?? { p2p: false, transports: ['ws'] },
              instanceId: `bench-${toHex(randomBytes(6))}`,
            })
            ws.send(encodeFrame({ t: 'hello', proto: { ...PROTOCOL_VERSION }, features: [], ...body }))
          } else if (frame.t === 'hello_ack') {
            clearTimeout(timer)
            onHandshake = undefined
            resolve()
          } else if (frame.t === 'error') {
            clearTimeout(timer)
            reject(MeshError.fromWire(frame))
          }
        }
      })
    } catch (err) {
      ws.terminate()
      throw err
    }
    return socket
  }

  /** Sends encoded bytes as one binary message. */
  send(bytes: Uint8Array): void {
    this.#ws.send(bytes, { binary: true })
  }

  /** Bytes queued in the socket, not yet written. */
  get bufferedAmount(): number {
    return this.#ws.bufferedAmount
  }

  close(): Promise<void> {
    this.#ws.close(1000)
    return this.closed
  }
}

/** A plain binary WebSocket with the peer socket's options; `onMessage` gets each message's bytes. */
export async function openRawSocket(url: string, onMessage: (bytes: Uint8Array) => void): Promise<WebSocket> {
  const ws = new WebSocket(url, { maxPayload: MAX_WS_PAYLOAD_BYTES, perMessageDeflate: false })
  ws.on('message', (data: RawData) => onMessage(toBytes(data)))
  ws.on('error', () => undefined)
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve())
    ws.once('close', () => reject(new Error(`${url} closed before it opened`)))
  })
  return ws
}

function toBytes(data: RawData): Uint8Array {
  if (Array.isArray(data)) return Buffer.concat(data)
  return data instanceof ArrayBuffer ? new Uint8Array(data) : data
}
