/**
 * The signaling seam: how offers, answers, candidates and rejects reach the peer. In production the frames
 * go over the coordinator's WebSocket, which stamps `from` (coordinator/plugins/signaling.ts); in tests an
 * in-memory hub (`memorySignalingHub`) does the same in one process.
 */
import type { FrameOf, MeshError } from '../protocol/index.js'

/** The four frames the coordinator relays between peers (PROTOCOL.md §6). */
export type SignalFrame =
  FrameOf<'p2p_offer'> | FrameOf<'p2p_answer'> | FrameOf<'p2p_candidate'> | FrameOf<'p2p_reject'>

/** A relayed signaling frame: `from` is the key the relay authenticated the sender with. */
export type InboundSignal = SignalFrame & { from: Uint8Array }

/** Why a peer refused an offer (`p2p_reject.reason`). */
export type RejectReason = FrameOf<'p2p_reject'>['reason']

/** Sends signaling frames to the relay and hands over the ones relayed to us. */
export interface SignalingChannel {
  /** Sends one frame; `from` is left out (the relay stamps it). May throw when the relay is gone. */
  send(frame: SignalFrame): void
  /** Listens to relayed frames; returns the function that stops listening. */
  onFrame(listener: (frame: InboundSignal) => void): () => void
  /**
   * Listens to relay errors about frames we sent (`MESH_ERR_PEER_UNREACHABLE`, `MESH_ERR_SIGNAL_LIMIT`),
   * whose `details.sigId` names the handshake; returns the function that stops listening.
   */
  onError?(listener: (err: MeshError) => void): () => void
}
