/**
 * The `webrtc` adapter in Node: node-datachannel's W3C polyfill as `RTCPeerConnection`, plus the
 * process-wide bookkeeping libdatachannel needs. Its native threads keep the process alive until
 * `cleanup()` runs, and `cleanup()` must not run while any connection is in use, so every connection made
 * here is counted and `cleanup()` follows the last one's `close()`.
 */
import nodeDataChannel from 'node-datachannel'
import { RTCPeerConnection as PolyfillPeerConnection } from 'node-datachannel/polyfill'
import { webrtcTransport, type WebrtcTransport, type WebrtcTransportInit } from './index.js'

/** How long after the last close the process-wide cleanup() waits for native closes to finish. */
const CLEANUP_GRACE_MS = 250

let openConnections = 0
let cleanups = 0
let cleanupScheduled = false

function connectionClosed(): void {
  openConnections--
  if (openConnections > 0 || cleanupScheduled) return
  cleanupScheduled = true
  // Deferred: the polyfill closes data channels on a later turn (setImmediate), libdatachannel finishes a
  // close on its own threads after that, and cleanup() over a connection still closing can deadlock or
  // abort the process; a connection opened meanwhile cancels the cleanup.
  setTimeout(() => {
    cleanupScheduled = false
    if (openConnections > 0) return
    nodeDataChannel.cleanup()
    cleanups++
  }, CLEANUP_GRACE_MS)
}

/** The polyfill's connection, counted from construction until its first `close()`. */
class CountedPeerConnection extends PolyfillPeerConnection {
  #counted = true

  constructor(config: RTCConfiguration) {
    super(config)
    openConnections++
  }

  override close(): void {
    super.close()
    if (!this.#counted) return
    this.#counted = false
    connectionClosed()
  }
}

/**
 * Counts a node-datachannel connection made outside the adapter (a benchmark's raw channel) as in use, so
 * the process-wide `cleanup()` waits for it too: running it while such a connection still closes can crash
 * the process. Call the returned function once that connection reported `closed`.
 */
export function retainNodeDataChannel(): () => void {
  openConnections++
  let released = false
  return () => {
    if (released) return
    released = true
    connectionClosed()
  }
}

/** The Node flavour of `webrtcTransport`: same options, with `RTCPeerConnection` supplied. */
export function nodeWebrtcTransport(init: Omit<WebrtcTransportInit, 'RTCPeerConnection'>): WebrtcTransport {
  // The polyfill types `ondatachannel` with its own event class (same shape as the DOM's, plus a private
  // field), so TypeScript cannot see it as the DOM constructor it is at run time.
  const RTCPeerConnection = CountedPeerConnection as unknown as WebrtcTransportInit['RTCPeerConnection']
  return webrtcTransport({ ...init, RTCPeerConnection })
}

/**
 * Process-wide counts, for tests and diagnostics: connections not yet closed, `cleanup()` calls made, and
 * whether one is about to run.
 */
export function nodeWebrtcStats(): { openConnections: number; cleanups: number; cleanupPending: boolean } {
  return { openConnections, cleanups, cleanupPending: cleanupScheduled }
}
