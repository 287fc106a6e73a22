import { describe, expect, it } from 'vitest'
import { isMeshError, toHex, type Frame } from '../protocol/index.js'
import type { InboundSignal } from './channel.js'
import { coordinatorSignalingChannel, type CoordinatorLink } from './coordinator.js'

/** A link whose sent frames are recorded and whose inbound frames the test pushes. */
function fakeLink(self: Uint8Array) {
  const sent: Frame[] = []
  const listeners = new Set<(frame: Frame) => void>()
  const link: CoordinatorLink = {
    self,
    send: (frame) => void sent.push(frame),
    onFrame(listener) {
      listeners.add(listener)
      return () => listeners.delete(listener)
    },
  }
  const push = (frame: Frame): void => listeners.forEach((l) => l(frame))
  return { link, sent, push, listeners }
}

describe('coordinatorSignalingChannel', () => {
  // Any 32 bytes: the channel compares keys, it does not verify anything.
  const me = new Uint8Array(32).fill(1)
  const peer = new Uint8Array(32).fill(2)
  const candidate = (to: Uint8Array, from?: Uint8Array): Frame => ({
    t: 'p2p_candidate',
    sigId: 's1',
    to,
    candidate: 'candidate:1 1 udp 1 127.0.0.1 5000 typ host',
    ...(from !== undefined && { from }),
  })

  it('sends signaling frames without `from`, for the relay to stamp', () => {
    const { link, sent } = fakeLink(me)
    coordinatorSignalingChannel(link).send({ ...candidate(peer), from: me } as never)
    expect(sent).toHaveLength(1)
    expect(sent[0]).not.toHaveProperty('from')
    expect(sent[0]).toMatchObject({ t: 'p2p_candidate', sigId: 's1', to: peer })
  })

  it('hands over relayed frames addressed to us with `from`, and nothing else', () => {
    const { link, push, listeners } = fakeLink(me)
    const got: InboundSignal[] = []
    const off = coordinatorSignalingChannel(link).onFrame((f) => got.push(f))
    push(candidate(me, peer))
    push(candidate(me)) // no `from`: not from the relay
    push(candidate(peer, me)) // for another key
    push({ t: 'pong' })
    expect(got.map((f) => [f.t, toHex(f.from)])).toEqual([['p2p_candidate', toHex(peer)]])
    off()
    expect(listeners.size).toBe(0)
  })

  it("turns the relay's PEER_UNREACHABLE and SIGNAL_LIMIT error frames into channel errors", () => {
    const { link, push } = fakeLink(me)
    const errors: unknown[] = []
    coordinatorSignalingChannel(link).onError!((err) => errors.push(err))
    const details = { sigId: 's1', to: toHex(peer) }
    const error = (code: string, extra: Partial<Extract<Frame, { t: 'error' }>> = {}): Frame => ({
      t: 'error',
      code,
      message: code,
      permanent: false,
      details,
      ...extra,
    })
    push(error('MESH_ERR_PEER_UNREACHABLE'))
    push(error('MESH_ERR_SIGNAL_LIMIT'))
    push(error('MESH_ERR_PEER_UNREACHABLE', { reqId: 4 })) // answers a request, not a signal
    push(error('MESH_ERR_RATE_LIMITED')) // not the relay's
    push(error('MESH_ERR_SIGNAL_LIMIT', { details: { to: toHex(peer) } })) // no sigId
    expect(errors).toHaveLength(2)
    expect(isMeshError(errors[0], 'MESH_ERR_PEER_UNREACHABLE')).toBe(true)
    expect(isMeshError(errors[1], 'MESH_ERR_SIGNAL_LIMIT')).toBe(true)
    expect((errors[0] as { details: unknown }).details).toEqual(details)
  })
})
