import { describe, expect, it } from 'vitest'
import { ManualClock } from '../../protocol/clock.js'
import { isMeshError } from '../../protocol/errors.js'
import { transportCompliance, type ComplianceFixture } from '../compliance.js'
import { waitFor } from '../emitter.js'
import type { PeerRef, TransportSession } from '../types.js'
import { MemoryNetwork, memoryTransport, type MemorySession, type MemoryTransportInit } from './index.js'

const ref = (n: number): PeerRef => ({ mesh: 'mesh-test', pk: new Uint8Array(32).fill(n) })

async function setup(
  knobs: Omit<MemoryTransportInit, 'network'> = {},
  clock?: ManualClock,
): Promise<ComplianceFixture & { network: MemoryNetwork }> {
  const network = new MemoryNetwork()
  const a = { transport: memoryTransport({ network, ...knobs })({ self: ref(1), clock }), peer: ref(1) }
  const b = { transport: memoryTransport({ network, ...knobs })({ self: ref(2), clock }), peer: ref(2) }
  return {
    network,
    a,
    b,
    teardown: async () => {
      await Promise.all([a.transport.close(), b.transport.close()])
    },
    handles: () => network.handles,
  }
}

const runner = { describe, it }
transportCompliance('memory', () => setup(), { runner })
transportCompliance(
  'memory, 2 ms latency and a 64 KiB buffer',
  () => setup({ latencyMs: 2, bufferBytes: 64 * 1024 }),
  {
    runner,
  },
)

/** Opens A→B and returns both ends. */
async function pair(
  fixture: ComplianceFixture,
  signal: AbortSignal,
): Promise<{ sa: TransportSession; sb: TransportSession }> {
  const accepted = new Promise<TransportSession>((resolve) => fixture.b.transport.onSession(resolve))
  const sa = await fixture.a.transport.open(fixture.b.peer, { signal })
  return { sa, sb: await accepted }
}

describe('memory transport knobs', () => {
  it('refuses frames past bufferBytes, takes none of them, and drains on a later macrotask', async () => {
    const fixture = await setup({ bufferBytes: 4096 })
    const { sa, sb } = await pair(fixture, AbortSignal.timeout(5_000))
    const got: number[] = []
    sb.on('message', (frame) => got.push(frame[0] ?? -1))
    const results = Array.from({ length: 6 }, (_, i) => sa.send(new Uint8Array(1024).fill(i)))
    expect(results).toEqual([true, true, true, true, false, false])
    expect(sa.bufferedAmount).toBe(4096)
    await waitFor(sa, 'drain', { signal: AbortSignal.timeout(5_000) })
    expect(sa.bufferedAmount).toBe(0)
    expect(got).toEqual([0, 1, 2, 3]) // the refused frames were not taken
    await fixture.teardown()
    expect(fixture.network.handles).toBe(0)
  })

  it('copies frames, so a sender may reuse its array after send', async () => {
    const fixture = await setup()
    const { sa, sb } = await pair(fixture, AbortSignal.timeout(5_000))
    const frame = new Uint8Array([1, 2, 3])
    const arrived = waitFor(sb, 'message', { signal: AbortSignal.timeout(5_000) })
    sa.send(frame)
    frame.fill(9)
    expect([...(await arrived)[0]]).toEqual([1, 2, 3])
    await fixture.teardown()
  })

  it('delays opens by a round trip and frames by latencyMs on the injected clock', async () => {
    const clock = new ManualClock()
    const fixture = await setup({ latencyMs: 10 }, clock)
    const signal = AbortSignal.timeout(5_000)
    let opened = false
    const accepted = new Promise<TransportSession>((resolve) => fixture.b.transport.onSession(resolve))
    const opening = fixture.a.transport.open(fixture.b.peer, { signal }).then((s) => {
      opened = true
      return s
    })
    await clock.advance(19)
    expect(opened).toBe(false)
    await clock.advance(1)
    const sa = await opening
    const sb = await accepted
    const got: number[] = []
    sb.on('message', (frame) => got.push(frame[0] ?? -1))
    sa.send(new Uint8Array([7]))
    await clock.advance(9)
    expect(got).toEqual([])
    await clock.advance(1)
    expect(got).toEqual([7])
    // A clean close is a round trip too: fin out, fin back.
    const closing = sa.close()
    await clock.advance(20)
    await closing
    expect(sb.open).toBe(false)
    await fixture.teardown()
    expect(fixture.network.handles).toBe(0)
  })

  it('drops frames at lossRate, keeps the order of the rest, never loses the close, and stops promising order', async () => {
    let seed = 42
    const random = (): number => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31
    const fixture = await setup({ lossRate: 0.3, random })
    expect(fixture.a.transport.capabilities).toMatchObject({ p2p: true, ordered: false })
    const signal = AbortSignal.timeout(5_000)
    const { sa, sb } = await pair(fixture, signal)
    const got: number[] = []
    sb.on('message', (frame) => got.push(new DataView(frame.buffer, frame.byteOffset).getUint16(0)))
    const closed = waitFor(sb, 'close', { signal })
    for (let i = 0; i < 1000; i++) {
      const frame = new Uint8Array(2)
      new DataView(frame.buffer).setUint16(0, i)
      expect(sa.send(frame)).toBe(true)
    }
    await sa.close()
    expect(await closed).toEqual([undefined])
    expect(got.length).toBeGreaterThan(600)
    expect(got.length).toBeLessThan(800)
    expect(got).toEqual([...got].sort((x, y) => x - y))
    await fixture.teardown()
  })

  it('rejects an open to a key no endpoint holds with MESH_ERR_PEER_UNREACHABLE', async () => {
    const fixture = await setup()
    const err = await fixture.a.transport
      .open(ref(9), { signal: AbortSignal.timeout(5_000) })
      .catch((e: unknown) => e)
    expect(isMeshError(err, 'MESH_ERR_PEER_UNREACHABLE')).toBe(true)
    await fixture.teardown()
    expect(fixture.network.handles).toBe(0)
  })

  it('holds one endpoint per key', async () => {
    const fixture = await setup()
    expect(() => memoryTransport({ network: fixture.network })({ self: ref(1) })).toThrow(/already in use/)
    await fixture.teardown()
  })

  it('destroy ends both sides at once with the error, dropping what was in flight', async () => {
    const fixture = await setup({ latencyMs: 5 })
    const signal = AbortSignal.timeout(5_000)
    const { sa, sb } = await pair(fixture, signal)
    const got: Uint8Array[] = []
    sb.on('message', (frame) => got.push(frame))
    const peerClosed = waitFor(sb, 'close', { signal })
    sa.send(new Uint8Array([1]))
    const failure = new Error('link cut')
    ;(sa as MemorySession).destroy(failure)
    expect(await peerClosed).toEqual([failure])
    expect(got).toEqual([])
    expect(sa.open || sb.open).toBe(false)
    await fixture.teardown()
    expect(fixture.network.handles).toBe(0)
  })
})
