import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { eventually } from '../../test/support/eventually.js'
import {
  createIdentity,
  initCrypto,
  isMeshError,
  toHex,
  type Identity,
  type MeshError,
} from '../../protocol/index.js'
import {
  compareBytes,
  memorySignalingHub,
  type InboundSignal,
  type MemorySignalingHub,
} from '../../signaling/index.js'
import { waitFor } from '../emitter.js'
import type { TransportSession } from '../types.js'
import type { WebrtcTransport, WebrtcTransportInit } from './index.js'
import { nodeWebrtcStats, nodeWebrtcTransport } from './node.js'

const MESH = 'webrtc-test'
const KIB = 1024
const timeout = (): AbortSignal => AbortSignal.timeout(10_000)

interface End {
  id: Identity
  t: WebrtcTransport
  accepted: TransportSession[]
  refused: MeshError[]
}

/** Every fixture's close, run after each test even when it failed. */
const open: (() => Promise<void>)[] = []
afterEach(async () => {
  await Promise.all(open.splice(0).map((close) => close()))
})

/** Two real node-datachannel endpoints in this process, signaling through an in-memory relay. */
function pair(opts: { a?: Partial<WebrtcTransportInit>; b?: Partial<WebrtcTransportInit> } = {}) {
  const hub: MemorySignalingHub = memorySignalingHub()
  const ids = [createIdentity('session'), createIdentity('session')] as const
  const roster = new Set(ids.map((id) => toHex(id.publicKey)))
  const make = (id: Identity, extra: Partial<WebrtcTransportInit> | undefined): End => {
    const t = nodeWebrtcTransport({
      identity: id,
      mesh: MESH,
      signaling: hub.channel(id.publicKey),
      vouch: (pk) => roster.has(toHex(pk)),
      ...extra,
    })
    const end: End = { id, t, accepted: [], refused: [] }
    t.onSession((s) => end.accepted.push(s))
    t.onRefused((err) => end.refused.push(err))
    return end
  }
  const a = make(ids[0], opts.a)
  const b = make(ids[1], opts.b)
  const close = async (): Promise<void> => {
    await Promise.all([a.t.close(), b.t.close()])
    await eventually(() => a.t.handles === 0 && b.t.handles === 0, { what: 'handles released' })
  }
  open.push(close)
  return { hub, a, b, close, to: (end: End) => ({ mesh: MESH, pk: end.id.publicKey }) }
}

async function expectCode(p: Promise<unknown>, code: string): Promise<MeshError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  )
  expect(isMeshError(err), `expected ${code}, got ${String(err)}`).toBe(true)
  expect((err as MeshError).code).toBe(code)
  return err as MeshError
}

/** Changes one hex digit of the SDP's first fingerprint: the DTLS certificate a relay would swap in. */
function tamper(sdp: string): string {
  return sdp.replace(/(a=fingerprint:\S+ )([0-9A-F])/i, (_m, head: string, digit: string) => {
    return head + (digit.toUpperCase() === 'A' ? 'B' : 'A')
  })
}

beforeAll(async () => {
  await initCrypto()
})

describe('webrtc transport over node-datachannel', () => {
  it('opens a session that carries 1 B to 64 KiB frames both ways, and closes cleanly', async () => {
    const { a, b, close, to } = pair()
    const sa = await a.t.open(to(b), { signal: timeout() })
    await eventually(() => b.accepted.length === 1, { what: 'the accepted session' })
    const sb = b.accepted[0]!
    expect(sa.open && sb.open).toBe(true)
    expect(toHex(sb.peer.pk)).toBe(toHex(a.id.publicKey))
    for (const [from, into] of [
      [sa, sb],
      [sb, sa],
    ] as const) {
      for (const size of [1, 2, 100, KIB, 16 * KIB, 60 * KIB, 64 * KIB]) {
        const frame = new Uint8Array(size).map((_, i) => (i * 7 + size) & 0xff)
        const got = waitFor(into, 'message', { signal: timeout() })
        expect(from.send(frame)).toBe(true)
        expect((await got)[0]).toEqual(frame)
      }
    }
    const closed = waitFor(sb, 'close', { signal: timeout() })
    await sa.close()
    expect((await closed)[0]).toBeUndefined()
    expect(() => sa.send(new Uint8Array(1))).toThrow(
      expect.objectContaining({ code: 'MESH_ERR_TRANSPORT_CLOSED' }),
    )
    await close()
  })

  it('refuses an offer whose SDP fingerprint was tampered with, and never connects', async () => {
    const { hub, a, b, close, to } = pair()
    hub.intercept = (f) => (f.t === 'p2p_offer' ? { ...f, sdp: tamper(f.sdp) } : f)
    const err = await expectCode(a.t.open(to(b), { signal: timeout() }), 'MESH_ERR_P2P_REJECTED')
    expect(err.details).toMatchObject({ reason: 'invalid' })
    expect(b.refused.map((e) => e.code)).toEqual(['MESH_ERR_FIELD_MISMATCH'])
    expect(hub.relayed.p2p_answer).toBe(0)
    expect(b.accepted).toHaveLength(0)
    await close()
  })

  it('refuses an answer whose SDP fingerprint was tampered with', async () => {
    const { hub, a, b, close, to } = pair()
    hub.intercept = (f) => (f.t === 'p2p_answer' ? { ...f, sdp: tamper(f.sdp) } : f)
    await expectCode(a.t.open(to(b), { signal: timeout() }), 'MESH_ERR_FIELD_MISMATCH')
    expect(a.refused.map((e) => e.code)).toEqual(['MESH_ERR_FIELD_MISMATCH'])
    await eventually(() => b.t.activeSessions === 0, { what: 'the answerer told to stop' })
    expect(b.accepted).toHaveLength(0)
    await close()
  })

  it('refuses an offer signed by a key the roster does not vouch for', async () => {
    const { a, b, close, to } = pair({ b: { vouch: () => false } })
    const err = await expectCode(a.t.open(to(b), { signal: timeout() }), 'MESH_ERR_P2P_REJECTED')
    expect(err.details).toMatchObject({ reason: 'invalid' })
    expect(b.refused.map((e) => e.code)).toEqual(['MESH_ERR_UNKNOWN_KEY'])
    expect(b.accepted).toHaveLength(0)
    await close()
  })

  it('resolves glare to one session: the lower key’s offer wins', async () => {
    const { hub, a, b, close, to } = pair()
    // Hold both offers until each side has sent its own, so they cross in flight.
    const held: InboundSignal[] = []
    hub.intercept = (f) => {
      if (f.t !== 'p2p_offer') return f
      held.push(f)
      if (held.length === 2) queueMicrotask(() => held.forEach((o) => hub.inject(o)))
      return null
    }
    const [sa, sb] = await Promise.all([
      a.t.open(to(b), { signal: timeout() }),
      b.t.open(to(a), { signal: timeout() }),
    ])
    expect(hub.relayed.p2p_offer).toBe(2)
    expect(hub.relayed.p2p_answer).toBe(1)
    expect(a.t.activeSessions).toBe(1)
    expect(b.t.activeSessions).toBe(1)
    expect(a.accepted.length + b.accepted.length).toBe(0)
    const got = waitFor(sb, 'message', { signal: timeout() })
    sa.send(Uint8Array.of(1, 2, 3))
    expect((await got)[0]).toEqual(Uint8Array.of(1, 2, 3))
    // The one session is the lower key's offer; the higher key answered it.
    const lower = compareBytes(a.id.publicKey, b.id.publicKey) < 0 ? a : b
    expect(lower.accepted).toHaveLength(0)
    await close()
  })

  it('answers the 33rd concurrent offer with p2p_reject{busy}', async () => {
    const { hub, a, b, close, to } = pair({ a: { maxSessions: 64 } })
    const sessions = await Promise.all(
      Array.from({ length: 32 }, () => a.t.open(to(b), { signal: timeout() })),
    )
    expect(sessions.every((s) => s.open)).toBe(true)
    expect(b.t.activeSessions).toBe(32)
    const err = await expectCode(a.t.open(to(b), { signal: timeout() }), 'MESH_ERR_P2P_REJECTED')
    expect(err.details).toMatchObject({ reason: 'busy' })
    expect(hub.relayed.p2p_reject).toBe(1)
    await close()
  })

  it('fails a handshake over its budget with MESH_ERR_SIGNAL_TIMEOUT and tears both sides down', async () => {
    const { hub, a, b, close, to } = pair({ a: { handshakeBudgetMs: 500 }, b: { handshakeBudgetMs: 500 } })
    hub.intercept = (f) => (f.t === 'p2p_candidate' ? null : f)
    const started = Date.now()
    await expectCode(a.t.open(to(b), { signal: timeout() }), 'MESH_ERR_SIGNAL_TIMEOUT')
    expect(Date.now() - started).toBeLessThan(2_000)
    await eventually(() => a.t.handles === 0 && b.t.handles === 0 && b.t.activeSessions === 0, {
      what: 'both sides torn down',
    })
    expect(b.accepted).toHaveLength(0)
    await close()
  })
})

afterAll(async () => {
  // Every connection closed, node-datachannel's cleanup() ran: nothing native keeps the process alive.
  await eventually(() => nodeWebrtcStats().openConnections === 0 && nodeWebrtcStats().cleanups > 0, {
    what: 'node-datachannel cleanup',
  })
})
