/**
 * The baseline relay: a bare `ws` server on 127.0.0.1 that forwards each binary message from the socket
 * on `/send` to the socket on `/recv`, and each message from `/recv` back to `/send`. No decoding, no
 * checks, no store: what a relay costs when it does nothing but move bytes between two sockets.
 */
import type { AddressInfo } from 'node:net'
import { WebSocketServer, type RawData, type WebSocket } from 'ws'
import { MAX_WS_PAYLOAD_BYTES } from '../../protocol/index.js'
import { serveJobs } from './jobs.js'

/** What the relay posts once listening. */
export interface RawRelayReady {
  /** `ws://127.0.0.1:port`; the peers connect to `${url}/send` and `${url}/recv`. */
  url: string
}

const wss = new WebSocketServer({
  host: '127.0.0.1',
  port: 0,
  maxPayload: MAX_WS_PAYLOAD_BYTES,
  perMessageDeflate: false,
})
await new Promise<void>((resolve) => wss.once('listening', () => resolve()))
let sender: WebSocket | undefined
let receiver: WebSocket | undefined
let forwarded = 0

wss.on('connection', (ws, req) => {
  const toReceiver = req.url === '/send'
  if (toReceiver) sender = ws
  else receiver = ws
  ws.on('message', (data: RawData, isBinary) => {
    const to = toReceiver ? receiver : sender
    to?.send(data, { binary: isBinary })
    forwarded++
  })
  ws.on('error', () => undefined)
})

const url = `ws://127.0.0.1:${(wss.address() as AddressInfo).port}`
process.stdout.write(JSON.stringify({ url, pid: process.pid }) + '\n')
serveJobs(
  { url } satisfies RawRelayReady,
  { stats: async () => ({ forwarded }) },
  () =>
    new Promise<void>((resolve) => {
      for (const c of wss.clients) c.terminate()
      wss.close(() => resolve())
    }),
)
