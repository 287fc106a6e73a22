import { afterEach, beforeAll, describe, expect, it } from 'vitest'
import {
  createIdentity,
  decodeEnvelope,
  decodeFrame,
  encodeEnvelope,
  encodeFrame,
  initCrypto,
  ManualClock,
  sealDirect,
  toHex,
  ulidFactory,
  type FrameOf,
  type Identity,
} from '../../protocol/index.js'
import { waitFor } from '../../transports/emitter.js'
import { MemoryNetwork, memoryTransport, type MemoryTransport } from '../../transports/memory/index.js'
import type { TypedEmitter } from '../../transports/types.js'
import { eventually } from '../../test/support/eventually.js'
import {
  P2PManager,
  type AckStatus,
  type Delivery,
  type P2PManagerEvents,
  type P2PManagerInit,
} from './manager.js'

const MESH = 'p2p-test'
const nextId = ulidFactory()
const timeout = (): AbortSignal => AbortSignal.timeout(10_000)

/** A relay send the test answers when it chooses (or at once, when the relay is not holding). */
interface RelayCall {
  envelope: Uint8Array
  clientMessageId: string
  ack(state?: FrameOf<'send_ack'>['state']): void
}

/** One runtime: a memory transport, a scripted relay (our seam), an inbox counting what came by P2P. */
interface Side {
  identity: Identity
  pk: Uint8Array
  transport: MemoryTransport
  manager: P2PManager
  relayed: RelayCall[]
  /** Answer relay sends at once (true) or leave them to the test. */
  autoAck: boolean
  /** clientMessageId → times `inbound` was called. */
  inbox: Map<string, number>
  /** The status `inbound` answers, or `'fail'` to reject (the runtime could not store it). */
  inboundStatus: AckStatus | 'fail'
  /** Keys this side's roster vouches for. */
  vouched: Set<string>
  /** Keys this side sees as online with p2p. */
  online: Set<string>
  /** True while this side's transport drops every frame it sends. */
  dropping: boolean
}

let clock: ManualClock
let network: MemoryNetwork
let sides: Side[]

beforeAll(async () => {
  await initCrypto()
})

afterEach(async () => {
  await Promise.all(sides.map((s) => s.manager.close()))
  await Promise.all(sides.map((s) => s.transport.close()))
  expect(network.handles).toBe(0)
})

function newWorld(): void {
  clock = new ManualClock()
  network = new MemoryNetwork()
  sides = []
}

function side(
  knobs: { bufferBytes?: number; latencyMs?: number } = {},
  timings: Partial<P2PManagerInit> = {},
  identity = createIdentity('session'),
): Side {
  const s = {
    identity,
    pk: identity.publicKey,
    relayed: [] as RelayCall[],
    autoAck: true,
    inbox: new Map<string, number>(),
    inboundStatus: 'ok',
    vouched: new Set<string>(),
    online: new Set<string>(),
    dropping: false,
  } as Side
  s.transport = memoryTransport({
    network,
    // The loss knob, scripted: while `dropping`, every frame this side sends is lost on the wire.
    lossRate: 0.5,
    random: () => (s.dropping ? 0 : 0.99),
    ...knobs,
  })({ self: { mesh: MESH, pk: s.pk }, clock })
  s.manager = new P2PManager({
    self: { mesh: MESH, pk: s.pk },
    transport: s.transport,
    clock,
    relay: (envelope) =>
      new Promise((resolve) => {
        const clientMessageId = decodeEnvelope(envelope).clientMessageId
        const ack = (state: FrameOf<'send_ack'>['state'] = 'delivered'): void =>
          resolve({ t: 'send_ack', reqId: 1, clientMessageId, state })
        s.relayed.push({ envelope, clientMessageId, ack })
        if (s.autoAck) ack()
      }),
    inbound: async (envelope) => {
      const id = decodeEnvelope(envelope).clientMessageId
      if (s.inboundStatus === 'fail') throw new Error('the inbox is unavailable')
      s.inbox.set(id, (s.inbox.get(id) ?? 0) + 1)
      return s.inboundStatus
    },
    reachable: (pk) => s.online.has(toHex(pk)),
    vouch: (pk) => s.vouched.has(toHex(pk)),
    ...timings,
  })
  sides.push(s)
  return s
}

/** Two sides that vouch for each other and see each other online. */
function pair(timings: Partial<P2PManagerInit> = {}, knobs: { bufferBytes?: number } = {}): [Side, Side] {
  const a = side(knobs, timings)
  const b = side(knobs, timings)
  for (const [x, y] of [
    [a, b],
    [b, a],
  ] as const) {
    x.vouched.add(toHex(y.pk))
    x.online.add(toHex(y.pk))
  }
  return [a, b]
}

/** A sealed DM from `from` to `to`, as the runtime hands it to the manager. */
function dm(from: Side | Identity, to: Side, payload: unknown = 'hi'): { id: string; bytes: Uint8Array } {
  const id = nextId()
  const identity = 'manager' in from ? from.identity : from
  const env = sealDirect({
    mesh: MESH,
    channel: 'dm',
    from: identity,
    to: to.pk,
    clientMessageId: id,
    payload,
  })
  return { id, bytes: encodeEnvelope(env) }
}

function send(
  from: Side,
  to: Side,
  payload?: unknown,
): { id: string; bytes: Uint8Array; outcome: Promise<Delivery> } {
  const m = dm(from, to, payload)
  return { ...m, outcome: from.manager.deliver(to.pk, m.id, m.bytes, timeout()) }
}

/** The manager as the typed emitter `waitFor` infers its events from. */
const events = (s: Side): TypedEmitter<P2PManagerEvents> => s.manager

/** Delivers one message from `a` and waits until `a` holds a warm session to `b`. */
async function warmUp(a: Side, b: Side): Promise<void> {
  const up = waitFor(events(a), 'session', { signal: timeout() })
  await send(a, b).outcome
  await up
  expect(a.manager.warm(b.pk)).toBe(true)
}

describe('P2PManager over the memory transport', () => {
  it('sends the first message by relay and starts a handshake; P2P only once relay sends are acked', async () => {
    newWorld()
    const [a, b] = pair()
    a.autoAck = false
    const accepted = waitFor(events(b), 'session', { signal: timeout() })
    const dialed = waitFor(events(a), 'session', { signal: timeout() })
    const first = send(a, b)
    expect(a.relayed.map((r) => r.clientMessageId)).toEqual([first.id])
    expect(a.manager.counters).toMatchObject({ relaySent: 1, relayedCouldHaveBeenP2P: 1, p2pSent: 0 })
    expect(await dialed).toEqual([b.pk, true])
    expect(await accepted).toEqual([a.pk, false])

    // The session is warm, but the first relay send is not acked yet: the second waits for that ack
    // (never joining the relay, so a busy pair still switches), then goes P2P behind it.
    expect(a.manager.warm(b.pk)).toBe(true)
    const second = send(a, b)
    const third = send(a, b)
    await clock.advance(0)
    expect(a.relayed.map((r) => r.clientMessageId)).toEqual([first.id])
    expect(b.inbox.get(second.id)).toBeUndefined()
    a.relayed[0]!.ack()
    expect(await first.outcome).toMatchObject({ via: 'relay', ack: { state: 'delivered' } })
    expect(await second.outcome).toEqual({ via: 'p2p', status: 'ok' })
    expect(await third.outcome).toEqual({ via: 'p2p', status: 'ok' })
    expect(b.inbox.get(second.id)).toBe(1)
    expect(a.relayed).toHaveLength(1)
    expect(a.manager.counters).toEqual({
      p2pSent: 2,
      relaySent: 1,
      relayedCouldHaveBeenP2P: 1,
      demotions: 0,
      handshakesFailed: 0,
    })
  })

  it('replies go over the session the peer opened', async () => {
    newWorld()
    const [a, b] = pair()
    await warmUp(a, b)
    expect(b.manager.warm(a.pk)).toBe(true)
    const reply = send(b, a)
    expect(await reply.outcome).toEqual({ via: 'p2p', status: 'ok' })
    expect(b.relayed).toEqual([])
    expect(a.inbox.get(reply.id)).toBe(1)
    expect(b.manager.counters.relayedCouldHaveBeenP2P).toBe(0)
  })

  it('does not dial a peer that is not reachable, and counts nothing as could-have-been-P2P', async () => {
    newWorld()
    const [a, b] = pair()
    a.online.clear()
    expect(await send(a, b).outcome).toMatchObject({ via: 'relay' })
    expect(a.manager.sessions(b.pk)).toBe(0)
    expect(a.manager.counters).toMatchObject({ relaySent: 1, relayedCouldHaveBeenP2P: 0 })
    expect(b.transport.sessionCount).toBe(0)
  })

  it('demotes a session whose frame is unacked after 3 s: the same bytes go by relay', async () => {
    newWorld()
    const [a, b] = pair()
    await warmUp(a, b)
    a.dropping = true
    const lost = send(a, b)
    const demoted = waitFor(events(a), 'demoted', { signal: timeout() })
    await clock.advance(2_999)
    expect(a.relayed).toHaveLength(1) // only the warm-up message
    expect(a.manager.sessions(b.pk)).toBe(1)
    await clock.advance(1)
    expect(await demoted).toEqual([b.pk, 'ack-timeout', 1])
    expect(await lost.outcome).toMatchObject({ via: 'relay', ack: { clientMessageId: lost.id } })
    expect(a.relayed[1]!.envelope).toEqual(lost.bytes)
    expect(b.inbox.has(lost.id)).toBe(false)
    expect(a.manager.sessions(b.pk)).toBe(0)
    expect(a.manager.counters).toMatchObject({ demotions: 1, p2pSent: 1, relaySent: 2 })
    await eventually(() => b.manager.sessions(a.pk) === 0, { what: "the peer's end closed" })
  })

  it('stays on the relay for retryHandshakeAfterMs after a demotion, then dials again', async () => {
    newWorld()
    const [a, b] = pair()
    await warmUp(a, b)
    a.dropping = true
    const lost = send(a, b)
    await clock.advance(3_000)
    await lost.outcome
    a.dropping = false
    await send(a, b).outcome
    expect(a.manager.sessions(b.pk)).toBe(0)
    await clock.advance(29_999)
    await send(a, b).outcome
    expect(a.manager.sessions(b.pk)).toBe(0)
    await clock.advance(1)
    const up = waitFor(events(a), 'session', { signal: timeout() })
    expect(await send(a, b).outcome).toMatchObject({ via: 'relay' })
    await up
    expect(await send(a, b).outcome).toEqual({ via: 'p2p', status: 'ok' })
  })

  it('counts a failed handshake and waits before the next one', async () => {
    newWorld()
    const [a, b] = pair()
    await b.transport.close() // nobody holds b's key on the network: open fails at once
    const failed = waitFor(events(a), 'handshakeFailed', { signal: timeout() })
    expect(await send(a, b).outcome).toMatchObject({ via: 'relay' })
    const [pk, error] = await failed
    expect(pk).toEqual(b.pk)
    expect(error).toMatchObject({ code: 'MESH_ERR_PEER_UNREACHABLE' })
    await send(a, b).outcome
    expect(a.manager.counters).toMatchObject({
      handshakesFailed: 1,
      relaySent: 2,
      relayedCouldHaveBeenP2P: 2,
    })
    await clock.advance(30_000)
    const again = waitFor(events(a), 'handshakeFailed', { signal: timeout() })
    await send(a, b).outcome
    await again
    expect(a.manager.counters.handshakesFailed).toBe(2)
  })

  it('fails a handshake that takes longer than its budget', async () => {
    newWorld()
    // 5 s of simulated latency each way: the memory open takes 10 s, and the 2 s budget runs out first.
    const a = side({ latencyMs: 5_000 }, { handshakeBudgetMs: 2_000 })
    const b = side()
    a.vouched.add(toHex(b.pk))
    a.online.add(toHex(b.pk))
    const failed = waitFor(events(a), 'handshakeFailed', { signal: timeout() })
    expect(await send(a, b).outcome).toMatchObject({ via: 'relay' })
    await clock.advance(1_999)
    expect(a.manager.counters.handshakesFailed).toBe(0)
    await clock.advance(1)
    const [, error] = await failed
    expect(error).toMatchObject({ code: 'MESH_ERR_SIGNAL_TIMEOUT' })
    expect(a.manager.counters.handshakesFailed).toBe(1)
    expect(b.transport.sessionCount).toBe(0)
  })

  it('closes a session after idleMs without traffic, on both ends', async () => {
    newWorld()
    const [a, b] = pair()
    await warmUp(a, b)
    await send(a, b).outcome // P2P: the last traffic
    await clock.advance(299_999)
    expect(a.manager.sessions(b.pk)).toBe(1)
    const closed = waitFor(events(a), 'sessionClosed', { signal: timeout() })
    await clock.advance(1)
    await closed
    await eventually(() => b.manager.sessions(a.pk) === 0, { what: "the peer's end closed" })
    expect(a.manager.counters.demotions).toBe(0)
    // The next message goes by relay and warms a new session.
    const up = waitFor(events(a), 'session', { signal: timeout() })
    expect(await send(a, b).outcome).toMatchObject({ via: 'relay' })
    await up
  })

  it('replaces a session by a fresh handshake after 1 h; the old one drains and closes', async () => {
    newWorld()
    const [a, b] = pair({ idleMs: 7_200_000 })
    await warmUp(a, b)
    await clock.advance(3_599_999)
    const replaced = waitFor(events(a), 'session', { signal: timeout() })
    const reaccepted = waitFor(events(b), 'session', { signal: timeout() })
    const oldClosed = waitFor(events(a), 'sessionClosed', { signal: timeout() })
    const inFlight = send(a, b) // on the old session, unacked when it ages
    await clock.advance(1)
    expect(await replaced).toEqual([b.pk, true])
    expect(await reaccepted).toEqual([a.pk, false])
    await oldClosed
    expect(await inFlight.outcome).toEqual({ via: 'p2p', status: 'ok' })
    expect(a.manager.sessions(b.pk)).toBe(1)
    await eventually(() => b.manager.sessions(a.pk) === 1, { what: 'the old session closed on the peer too' })
    const after = send(a, b)
    expect(await after.outcome).toEqual({ via: 'p2p', status: 'ok' })
    expect(b.inbox.get(after.id)).toBe(1)
    expect(a.relayed).toHaveLength(1)
    expect(a.manager.counters).toMatchObject({ demotions: 0, handshakesFailed: 0 })
  })

  it('retires a session the peer opened at 1 h plus the budget when the peer does not replace it', async () => {
    newWorld()
    // a (the dialer) would keep its session for 10 h; b enforces its own hour.
    const a = side({}, { idleMs: 7_200_000, rehandshakeMs: 36_000_000 })
    const b = side({}, { idleMs: 7_200_000 })
    a.vouched.add(toHex(b.pk))
    a.online.add(toHex(b.pk))
    b.vouched.add(toHex(a.pk))
    await warmUp(a, b)
    await clock.advance(3_600_000 + 1_999)
    expect(b.manager.sessions(a.pk)).toBe(1)
    const closedOnB = waitFor(events(b), 'sessionClosed', { signal: timeout() })
    const closedOnA = waitFor(events(a), 'sessionClosed', { signal: timeout() })
    await clock.advance(1)
    await Promise.all([closedOnB, closedOnA])
    expect(b.manager.counters.demotions).toBe(0)
  })

  it('acks an envelope whose from is not the session peer as rejected, without storing it', async () => {
    newWorld()
    const [a, b] = pair()
    await warmUp(a, b)
    const mallory = createIdentity('session')
    const forged = dm(mallory, b)
    const outcome = await a.manager.deliver(b.pk, forged.id, forged.bytes, timeout())
    expect(outcome).toEqual({ via: 'p2p', status: 'rejected' })
    expect(b.inbox.has(forged.id)).toBe(false)
    // The session carries on.
    expect(await send(a, b).outcome).toEqual({ via: 'p2p', status: 'ok' })
  })

  it('passes the runtime’s ack status through (duplicate, undecryptable)', async () => {
    newWorld()
    const [a, b] = pair()
    await warmUp(a, b)
    b.inboundStatus = 'duplicate'
    expect(await send(a, b).outcome).toEqual({ via: 'p2p', status: 'duplicate' })
    b.inboundStatus = 'undecryptable'
    expect(await send(a, b).outcome).toEqual({ via: 'p2p', status: 'undecryptable' })
  })

  it('leaves an envelope the runtime could not store unacked: the sender resends it by relay', async () => {
    newWorld()
    const [a, b] = pair()
    await warmUp(a, b)
    b.inboundStatus = 'fail'
    const m = send(a, b)
    const demoted = waitFor(events(a), 'demoted', { signal: timeout() })
    await clock.advance(3_000)
    expect(await demoted).toEqual([b.pk, 'ack-timeout', 1])
    expect(await m.outcome).toMatchObject({ via: 'relay' })
    expect(a.relayed.at(-1)!.envelope).toEqual(m.bytes)
  })

  it('closes the session on the next frame from a peer the roster stopped vouching for', async () => {
    newWorld()
    const [a, b] = pair()
    await warmUp(a, b)
    b.vouched.clear() // a was revoked
    const closedOnB = waitFor(events(b), 'sessionClosed', { signal: timeout() })
    const m = send(a, b)
    await closedOnB
    expect(b.inbox.has(m.id)).toBe(false)
    // a's frame was never acked: it went by relay, where the coordinator enforces revocation.
    expect(await m.outcome).toMatchObject({ via: 'relay' })
    expect(a.relayed.at(-1)!.envelope).toEqual(m.bytes)
    expect(b.manager.sessions(a.pk)).toBe(0)
    expect(a.manager.sessions(b.pk)).toBe(0)
    // Revoked peers' sessions are refused when they come back.
    expect(b.manager.warm(a.pk)).toBe(false)
  })

  it('refuses a session from a peer the roster does not vouch for', async () => {
    newWorld()
    const [a, b] = pair()
    b.vouched.clear()
    const closed = waitFor(events(a), 'sessionClosed', { signal: timeout() })
    await send(a, b).outcome
    await closed
    expect(b.manager.sessions(a.pk)).toBe(0)
  })

  it('drops a malformed frame and serves the next one on the same session', async () => {
    newWorld()
    const b = side()
    const raw = createIdentity('session')
    const rawTransport = memoryTransport({ network })({ self: { mesh: MESH, pk: raw.publicKey }, clock })
    b.vouched.add(toHex(raw.publicKey))
    try {
      const session = await rawTransport.open({ mesh: MESH, pk: b.pk }, { signal: timeout() })
      session.send(new Uint8Array([0xc1, 0xff, 0x00])) // not msgpack
      session.send(encodeFrame({ t: 'ping' })) // a frame, but not one a P2P session speaks
      session.send(encodeFrame({ t: 'p2p_env', envelope: new Uint8Array([1, 2, 3]) })) // not an envelope
      const m = dm(raw, b)
      const ack = waitFor(session, 'message', { signal: timeout() })
      session.send(encodeFrame({ t: 'p2p_env', envelope: m.bytes }))
      const [frame] = await ack
      expect(decodeFrame(frame)).toEqual({ t: 'p2p_ack', clientMessageId: m.id, status: 'ok' })
      expect(b.inbox.get(m.id)).toBe(1)
      expect(session.open).toBe(true)
    } finally {
      await rawTransport.close()
    }
  })

  it('honours backpressure: a burst through a small buffer arrives whole, each acked once', async () => {
    newWorld()
    const [a, b] = pair({}, { bufferBytes: 4 * 1024 })
    await warmUp(a, b)
    const burst = Array.from({ length: 200 }, (_, i) => send(a, b, 'x'.repeat(1024 + i)))
    const outcomes = await Promise.all(burst.map((m) => m.outcome))
    expect(outcomes.every((o) => o.via === 'p2p' && o.status === 'ok')).toBe(true)
    expect(burst.every((m) => b.inbox.get(m.id) === 1)).toBe(true)
    expect(a.manager.counters).toMatchObject({ p2pSent: 200, demotions: 0 })
  })

  it('resends what was unacked when the session closes under it, and nothing is lost', async () => {
    newWorld()
    const [a, b] = pair()
    await warmUp(a, b)
    // b stores but its acks are lost: a's frames stay unacked until b's end goes away.
    b.dropping = true
    const burst = Array.from({ length: 20 }, () => send(a, b))
    await eventually(() => burst.every((m) => b.inbox.get(m.id) === 1), { what: 'b stored the burst' })
    const demoted = waitFor(events(a), 'demoted', { signal: timeout() })
    await b.transport.close()
    expect(await demoted).toEqual([b.pk, 'session-closed', 20])
    const outcomes = await Promise.all(burst.map((m) => m.outcome))
    expect(outcomes.every((o) => o.via === 'relay')).toBe(true)
    const resent = a.relayed.slice(1).map((r) => toHex(r.envelope))
    expect(resent.sort()).toEqual(burst.map((m) => toHex(m.bytes)).sort())
  })

  it('a retry of an envelope already on a session waits for that one rather than sending twice', async () => {
    newWorld()
    const [a, b] = pair()
    await warmUp(a, b)
    const m = dm(a, b)
    const one = a.manager.deliver(b.pk, m.id, m.bytes, timeout())
    const two = a.manager.deliver(b.pk, m.id, m.bytes, timeout())
    expect(await one).toEqual({ via: 'p2p', status: 'ok' })
    expect(await two).toEqual({ via: 'p2p', status: 'ok' })
    expect(b.inbox.get(m.id)).toBe(1)
    expect(a.manager.counters.p2pSent).toBe(1)
  })

  it('survives glare: both ends dial at once, messages flow both ways, each acked once', async () => {
    newWorld()
    const [a, b] = pair()
    const upA = waitFor(events(a), 'session', { signal: timeout(), filter: (_pk, dialed) => dialed })
    const upB = waitFor(events(b), 'session', { signal: timeout(), filter: (_pk, dialed) => dialed })
    await Promise.all([send(a, b).outcome, send(b, a).outcome])
    await Promise.all([upA, upB])
    // The memory transport does not resolve glare (webrtc does): each end holds two sessions.
    expect(a.manager.sessions(b.pk)).toBe(2)
    const ab = Array.from({ length: 10 }, () => send(a, b))
    const ba = Array.from({ length: 10 }, () => send(b, a))
    const outcomes = await Promise.all([...ab, ...ba].map((m) => m.outcome))
    expect(outcomes.every((o) => o.via === 'p2p' && o.status === 'ok')).toBe(true)
    expect(ab.every((m) => b.inbox.get(m.id) === 1)).toBe(true)
    expect(ba.every((m) => a.inbox.get(m.id) === 1)).toBe(true)
  })

  it('close() drains sessions cleanly, stops every timer, and refuses later deliveries', async () => {
    newWorld()
    const [a, b] = pair()
    await warmUp(a, b)
    const last = send(a, b)
    await a.manager.close()
    expect(await last.outcome).toEqual({ via: 'p2p', status: 'ok' })
    expect(a.manager.sessions(b.pk)).toBe(0)
    await eventually(() => b.manager.sessions(a.pk) === 0, { what: "the peer's end closed" })
    await b.manager.close()
    expect(clock.pending).toBe(0)
    await expect(send(a, b).outcome).rejects.toMatchObject({ code: 'MESH_ERR_TRANSPORT_CLOSED' })
    expect(a.manager.counters.demotions).toBe(0)
  })

  it('an aborted deliver rejects with the reason; the envelope still gets its ack', async () => {
    newWorld()
    const [a, b] = pair()
    await warmUp(a, b)
    const m = dm(a, b)
    const controller = new AbortController()
    const outcome = a.manager.deliver(b.pk, m.id, m.bytes, controller.signal)
    controller.abort(new Error('caller gave up'))
    await expect(outcome).rejects.toThrow('caller gave up')
    await eventually(() => b.inbox.get(m.id) === 1, { what: 'b stored it' })
    expect(a.relayed).toHaveLength(1)
  })
})
