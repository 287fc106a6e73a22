/**
 * The far end of the `runtime` scenario's floor (`runtime-floor.ts`): a bare `ws` server on 127.0.0.1 that
 * plays the coordinator's part of the frames without any of its work, so the floor process's CPU is the
 * peer's side alone.
 *
 * - `/ack`: every `send` frame is answered with a `send_ack {delivered}` (what the sender hears on the
 *   coordinator's fast path).
 * - `/push`: sends the `push` frames the `load` job gave it, 256 unacknowledged at most (the coordinator's
 *   default push window), one more for every `client_ack`.
 */
import type { AddressInfo } from 'node:net'
import { WebSocketServer, type RawData, type WebSocket } from 'ws'
import { decodeEnvelope, decodeFrame, encodeFrame, MAX_WS_PAYLOAD_BYTES } from '../../protocol/index.js'
import { serveJobs } from './jobs.js'

/** What the echo posts once listening: `ws://127.0.0.1:port`. */
export interface FloorEchoReady {
  url: string
}

const PUSH_WINDOW = 256

const wss = new WebSocketServer({
  host: '127.0.0.1',
  port: 0,
  maxPayload: MAX_WS_PAYLOAD_BYTES,
  perMessageDeflate: false,
})
await new Promise<void>((resolve) => wss.once('listening', () => resolve()))
let pushes: Uint8Array[] = []

wss.on('connection', (ws, req) => {
  ws.on('error', () => undefined)
  if (req.url === '/ack') ws.on('message', (data: RawData) => answerSend(ws, bytesOf(data)))
  else if (req.url === '/push') pushAll(ws, pushes)
})

function answerSend(ws: WebSocket, bytes: Uint8Array): void {
  const frame = decodeFrame(bytes)
  if (frame.t !== 'send') return
  const { clientMessageId } = decodeEnvelope(frame.envelope)
  ws.send(encodeFrame({ t: 'send_ack', reqId: frame.reqId, clientMessageId, state: 'delivered' }), {
    binary: true,
  })
}

function pushAll(ws: WebSocket, frames: Uint8Array[]): void {
  let next = 0
  const more = (): void => {
    if (next < frames.length) ws.send(frames[next++]!, { binary: true })
  }
  ws.on('message', (data: RawData) => {
    if (decodeFrame(bytesOf(data)).t === 'client_ack') more()
  })
  for (let i = 0; i < PUSH_WINDOW; i++) more()
}

function bytesOf(data: RawData): Uint8Array {
  if (Array.isArray(data)) return Buffer.concat(data)
  return data instanceof ArrayBuffer ? new Uint8Array(data) : data
}

const url = `ws://127.0.0.1:${(wss.address() as AddressInfo).port}`
serveJobs(
  { url } satisfies FloorEchoReady,
  {
    /** The push frames the next `/push` connection receives. */
    load: async (frames: Uint8Array[]) => {
      pushes = frames
      return { loaded: frames.length }
    },
  },
  () =>
    new Promise<void>((resolve) => {
      for (const c of wss.clients) c.terminate()
      wss.close(() => resolve())
    }),
)
