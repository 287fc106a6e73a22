/**
 * An in-process signaling relay with the coordinator's observable behaviour: it stamps `from`, passes
 * every frame through the frame codec (so a frame our schemas would refuse fails here too), delivers in
 * order on a later microtask, and reports `MESH_ERR_PEER_UNREACHABLE` for a peer that is not attached.
 */
import { decodeFrame, encodeFrame, MeshError, toHex } from '../protocol/index.js'
import type { InboundSignal, SignalFrame, SignalingChannel } from './channel.js'

/** Rewrites or drops (returns `null`) a frame in transit: the tests' man in the middle. */
export type SignalIntercept = (frame: InboundSignal) => InboundSignal | null

/** A relay between any number of keys in one process. */
export interface MemorySignalingHub {
  /** The channel of `pk`; attaching a key twice replaces the earlier channel. */
  channel(pk: Uint8Array): SignalingChannel
  /** When set, every relayed frame passes through it. */
  intercept: SignalIntercept | undefined
  /** Delivers a relayed frame as is (a test re-injecting frames its `intercept` held back). */
  inject(frame: InboundSignal): void
  /** Frames relayed so far, by type (after `intercept`). */
  readonly relayed: Record<SignalFrame['t'], number>
}

interface Endpoint {
  frames: Set<(frame: InboundSignal) => void>
  errors: Set<(err: MeshError) => void>
}

/** Creates an empty in-memory relay. */
export function memorySignalingHub(): MemorySignalingHub {
  const endpoints = new Map<string, Endpoint>()
  const relayed = { p2p_offer: 0, p2p_answer: 0, p2p_candidate: 0, p2p_reject: 0 }
  const hub: MemorySignalingHub = {
    intercept: undefined,
    relayed,
    inject(frame) {
      relayed[frame.t]++
      for (const listener of endpoints.get(toHex(frame.to))?.frames ?? []) listener(frame)
    },
    channel(pk) {
      const self: Endpoint = { frames: new Set(), errors: new Set() }
      endpoints.set(toHex(pk), self)
      const deliver = (frame: SignalFrame): void => {
        // The codec round trip is what the coordinator's parser would do to the frame.
        const wire = decodeFrame(encodeFrame({ ...frame, from: pk })) as InboundSignal
        const target = endpoints.get(toHex(frame.to))
        if (target === undefined) {
          const err = new MeshError('MESH_ERR_PEER_UNREACHABLE', `${frame.t} not relayed: peer offline`, {
            details: { sigId: frame.sigId, to: toHex(frame.to) },
          })
          for (const listener of self.errors) listener(err)
          return
        }
        const passed = hub.intercept === undefined ? wire : hub.intercept(wire)
        if (passed === null) return
        relayed[passed.t]++
        for (const listener of target.frames) listener(passed)
      }
      return {
        send(frame) {
          // A later microtask, in order: no handler runs inside the sender's call stack.
          queueMicrotask(() => deliver(frame))
        },
        onFrame(listener) {
          self.frames.add(listener)
          return () => self.frames.delete(listener)
        },
        onError(listener) {
          self.errors.add(listener)
          return () => self.errors.delete(listener)
        },
      }
    },
  }
  return hub
}
