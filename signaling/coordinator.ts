/**
 * A `SignalingChannel` over a connection to the coordinator, whose relay (coordinator/plugins/signaling.ts)
 * stamps `from` on every `p2p_*` frame it forwards and answers a frame it cannot relay with an `error`
 * frame without `reqId`: `MESH_ERR_PEER_UNREACHABLE` or `MESH_ERR_SIGNAL_LIMIT`, `details: {sigId, to}`.
 *
 * The connection is a small interface (`CoordinatorLink`) rather than the runtime's client, so any client
 * that sends and hears frames can carry signaling: the runtime's, or the tests' MeshClient.
 */
import { bytesEqual, MeshError, type Frame, type FrameOf } from '../protocol/index.js'
import type { InboundSignal, SignalingChannel } from './channel.js'

/** What signaling needs from a coordinator connection that has said hello. */
export interface CoordinatorLink {
  /** Sends one frame; may throw when the connection is gone. */
  send(frame: Frame): void
  /** Listens to every frame the coordinator sends; returns the function that stops listening. */
  onFrame(listener: (frame: Frame) => void): () => void
  /** The presence key the connection said hello with: relayed frames name it as `to`. */
  readonly self: Uint8Array
}

/** The relay's error codes about a signaling frame we sent. */
const RELAY_ERRORS: ReadonlySet<string> = new Set(['MESH_ERR_PEER_UNREACHABLE', 'MESH_ERR_SIGNAL_LIMIT'])

const SIGNAL_TYPES: ReadonlySet<Frame['t']> = new Set([
  'p2p_offer',
  'p2p_answer',
  'p2p_candidate',
  'p2p_reject',
])

/** The signaling channel of one coordinator connection; see the module comment. */
export function coordinatorSignalingChannel(link: CoordinatorLink): SignalingChannel {
  return {
    send(frame) {
      // `from` is the relay's to stamp; whatever a caller put there would be replaced anyway.
      const { from: _from, ...rest } = frame
      link.send(rest)
    },
    onFrame(listener) {
      return link.onFrame((frame) => {
        const signal = asInboundSignal(frame, link.self)
        if (signal !== undefined) listener(signal)
      })
    },
    onError(listener) {
      return link.onFrame((frame) => {
        if (frame.t !== 'error' || frame.reqId !== undefined || !RELAY_ERRORS.has(frame.code)) return
        if (typeof frame.details?.['sigId'] !== 'string') return
        listener(MeshError.fromWire(frame))
      })
    },
  }
}

/** A relayed signaling frame addressed to `self` with `from` stamped, or undefined for anything else. */
function asInboundSignal(frame: Frame, self: Uint8Array): InboundSignal | undefined {
  if (!SIGNAL_TYPES.has(frame.t)) return undefined
  const signal = frame as FrameOf<'p2p_offer' | 'p2p_answer' | 'p2p_candidate' | 'p2p_reject'>
  // The relay always stamps `from`; a frame without it, or for another key, did not come through it.
  if (signal.from === undefined || !bytesEqual(signal.to, self)) return undefined
  return signal as InboundSignal
}
