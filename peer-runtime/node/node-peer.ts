/**
 * The Node wiring of `Peer`: a `ws` WebSocket (binary frames, 1 MiB max payload, no compression) and,
 * for P2P, node-datachannel through `transports/webrtc/node.ts`, whose process-wide count runs
 * libdatachannel's `cleanup()` after the last connection closes.
 */
import { WebSocket } from 'ws'
import { MAX_WS_PAYLOAD_BYTES } from '../../protocol/limits.js'
import { nodeWebrtcTransport } from '../../transports/webrtc/node.js'
import type { SocketFactory, WebSocketLike } from '../connection.js'
import { Peer, type PeerOptions, type PeerWebrtcOptions } from '../peer.js'

/** Sockets from the `ws` package, shaped as the W3C WebSocket the connection speaks. */
export const wsSocketFactory: SocketFactory = (url) =>
  new WebSocket(url, {
    maxPayload: MAX_WS_PAYLOAD_BYTES,
    perMessageDeflate: false,
  }) as unknown as WebSocketLike

/** Options of `createNodePeer`: `Peer`'s, with the socket and WebRTC supplied. */
export type NodePeerOptions = Omit<PeerOptions, 'socket' | 'webrtc'> & {
  /** P2P over node-datachannel (default true); `false` for a relay-only peer. */
  p2p?: boolean | Omit<PeerWebrtcOptions, 'transport'>
}

/** A `Peer` with Node's WebSocket and, unless `p2p: false`, node-datachannel. Call `start()` next. */
export function createNodePeer(o: NodePeerOptions): Peer {
  const { p2p, ...rest } = o
  if (p2p === false) return new Peer({ ...rest, socket: wsSocketFactory })
  const tuning = p2p === true || p2p === undefined ? {} : p2p
  return new Peer({ ...rest, socket: wsSocketFactory, webrtc: { ...tuning, transport: nodeWebrtcTransport } })
}
