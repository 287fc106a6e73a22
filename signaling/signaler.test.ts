import nodeDataChannel from 'node-datachannel'
import { RTCPeerConnection } from 'node-datachannel/polyfill'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import {
  createIdentity,
  initCrypto,
  isMeshError,
  ManualClock,
  toHex,
  type Identity,
  type MeshError,
} from '../protocol/index.js'
import type { InboundSignal } from './channel.js'
import type { Handshake } from './handshake.js'
import { memorySignalingHub, type MemorySignalingHub } from './memory.js'
import { compareBytes, Signaler, type SignalerInit } from './signaler.js'

const MESH = 'signaling-test'
const pcs: RTCPeerConnection[] = []

/** A real node-datachannel connection wired to a handshake: candidates out, `connected()` on open. */
function wire(h: Handshake, pc: RTCPeerConnection): void {
  pc.onicecandidate = (e) => {
    if (e.candidate !== null) h.localCandidate(e.candidate.candidate, e.candidate.sdpMid)
  }
  pc.ondatachannel = (e) =>
    e.channel.readyState === 'open' ? h.connected() : (e.channel.onopen = () => h.connected())
  h.onTeardown(() => pc.close())
}

function newPc(): RTCPeerConnection {
  const pc = new RTCPeerConnection({ iceServers: [] })
  pcs.push(pc)
  return pc
}

interface Side {
  id: Identity
  s: Signaler
  refused: MeshError[]
  answered: Handshake[]
}

function side(hub: MemorySignalingHub, id: Identity, extra: Partial<SignalerInit> = {}): Side {
  const refused: MeshError[] = []
  const answered: Handshake[] = []
  const s = new Signaler({
    identity: id,
    mesh: MESH,
    channel: hub.channel(id.publicKey),
    vouch: () => true,
    accept: (h) => {
      answered.push(h)
      const pc = newPc()
      wire(h, pc)
      return pc
    },
    ...extra,
  })
  s.onRefused((err) => refused.push(err))
  return { id, s, refused, answered }
}

/** Starts an offer from `from` to `to` over a fresh connection with its data channel. */
function dial(from: Side, to: Side, signal = AbortSignal.timeout(10_000)): Handshake {
  const pc = newPc()
  const dc = pc.createDataChannel('t')
  const h = from.s.offer(to.id.publicKey, pc, { signal })
  wire(h, pc)
  dc.onopen = () => h.connected()
  return h
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => undefined,
    (err: unknown) => err,
  )
}

beforeAll(async () => {
  await initCrypto()
})
afterEach(() => {
  for (const pc of pcs.splice(0)) pc.close()
})
afterAll(() => {
  nodeDataChannel.cleanup()
})

describe('Signaler', () => {
  it('runs offer → answer → trickled candidates to connected on both sides', async () => {
    const hub = memorySignalingHub()
    const a = side(hub, createIdentity('session'))
    const b = side(hub, createIdentity('session'))
    const h = dial(a, b)
    expect(h.state).toBe('offering')
    expect(await h.result).toBe(h)
    expect(h.state).toBe('connected')
    await b.answered[0]!.result
    expect(b.answered[0]!.state).toBe('connected')
    expect(hub.relayed.p2p_candidate).toBeGreaterThan(0)
    expect([a.s.active, b.s.active]).toEqual([1, 1])
    h.release()
    expect(a.s.active).toBe(0)
  })

  it('glare: the higher key drops its offer and answers the lower key’s', async () => {
    const hub = memorySignalingHub()
    const held: InboundSignal[] = []
    hub.intercept = (f) => {
      if (f.t !== 'p2p_offer') return f
      held.push(f)
      if (held.length === 2) queueMicrotask(() => held.forEach((o) => hub.inject(o)))
      return null
    }
    const [x, y] = [side(hub, createIdentity('session')), side(hub, createIdentity('session'))]
    const [lower, higher] = compareBytes(x.id.publicKey, y.id.publicKey) < 0 ? [x, y] : [y, x]
    const hl = dial(lower, higher)
    const hh = dial(higher, lower)
    expect(await hl.result).toBe(hl)
    const won = await hh.result
    expect(won.role).toBe('answerer')
    expect(won.sigId).toBe(hl.sigId)
    expect(won.claimed).toBe(true)
    expect(hh.state).toBe('failed')
    expect(lower.answered).toHaveLength(0)
    expect([lower.s.active, higher.s.active]).toEqual([1, 1])
  })

  it('answers offers past maxSessions with p2p_reject{busy}', async () => {
    const hub = memorySignalingHub()
    const a = side(hub, createIdentity('session'))
    const b = side(hub, createIdentity('session'), { maxSessions: 1 })
    await dial(a, b).result
    const err = await rejection(dial(a, b).result)
    expect(isMeshError(err, 'MESH_ERR_P2P_REJECTED')).toBe(true)
    expect((err as MeshError).details).toMatchObject({ reason: 'busy' })
    expect(b.refused.map((e) => e.details?.reason)).toEqual(['busy'])
  })

  it('refuses its own offer past maxSessions without sending it', () => {
    const hub = memorySignalingHub()
    const a = side(hub, createIdentity('session'), { maxSessions: 0 })
    const b = side(hub, createIdentity('session'))
    expect(() => dial(a, b)).toThrow(expect.objectContaining({ code: 'MESH_ERR_P2P_REJECTED' }))
  })

  it('fails with MESH_ERR_SIGNAL_TIMEOUT when the budget runs out, and tells the peer', async () => {
    const hub = memorySignalingHub()
    const clock = new ManualClock(Date.now())
    hub.intercept = (f) => (f.t === 'p2p_candidate' ? null : f)
    const a = side(hub, createIdentity('session'), { clock, budgetMs: 2_000 })
    const b = side(hub, createIdentity('session'), { clock, budgetMs: 60_000 })
    const h = dial(a, b)
    await clock.advance(1_999)
    expect(h.state).toBe('offering')
    await clock.advance(1)
    expect(isMeshError(await rejection(h.result), 'MESH_ERR_SIGNAL_TIMEOUT')).toBe(true)
    await clock.advance(0)
    expect(hub.relayed.p2p_reject).toBe(1)
    expect(b.s.active).toBe(0)
  })

  it('rejects with the abort reason and sends p2p_reject{declined}', async () => {
    const hub = memorySignalingHub()
    const a = side(hub, createIdentity('session'))
    const b = side(hub, createIdentity('session'))
    const controller = new AbortController()
    const h = dial(a, b, controller.signal)
    const reason = new Error('changed my mind')
    controller.abort(reason)
    expect(await rejection(h.result)).toBe(reason)
    expect(a.s.active).toBe(0)
  })

  it('fails with MESH_ERR_PEER_UNREACHABLE when the relay cannot reach the peer', async () => {
    const hub = memorySignalingHub()
    const a = side(hub, createIdentity('session'))
    const nobody = { id: createIdentity('session') } as Side
    const err = await rejection(dial(a, nobody).result)
    expect(isMeshError(err, 'MESH_ERR_PEER_UNREACHABLE')).toBe(true)
  })

  it('refuses an offer signed for another mesh, and one from an unvouched key', async () => {
    const hub = memorySignalingHub()
    const a = side(hub, createIdentity('session'), { mesh: 'other-mesh' })
    const b = side(hub, createIdentity('session'))
    expect(isMeshError(await rejection(dial(a, b).result), 'MESH_ERR_P2P_REJECTED')).toBe(true)
    expect(b.refused.map((e) => e.code)).toEqual(['MESH_ERR_WRONG_MESH'])
    const c = side(hub, createIdentity('session'))
    const d = side(hub, createIdentity('session'), { vouch: (pk) => toHex(pk) !== toHex(c.id.publicKey) })
    expect(isMeshError(await rejection(dial(c, d).result), 'MESH_ERR_P2P_REJECTED')).toBe(true)
    expect(d.refused.map((e) => e.code)).toEqual(['MESH_ERR_UNKNOWN_KEY'])
    expect(d.answered).toHaveLength(0)
  })
})
