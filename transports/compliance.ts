/**
 * The one compliance suite every `PeerTransport` adapter passes (CONVENTIONS §2, DESIGN §5): order where
 * promised, 1 B to 64 KiB frames intact, a 10,000-frame burst under backpressure, close and abort
 * semantics, nothing lost or duplicated across a clean close, no handle left open.
 *
 * An adapter's test is a few lines: `transportCompliance('memory', setup, { runner: { describe, it } })`.
 * The runner is injected because shipped folders may not import devDependencies (test/import-rules.ts),
 * and vitest is one; the suite asserts by throwing, so it needs nothing else from the runner.
 */
import { bytesEqual } from '../protocol/encoding.js'
import { isMeshError, type MeshErrorCode } from '../protocol/errors.js'
import { waitFor } from './emitter.js'
import type { PeerRef, PeerTransport, TransportSession } from './types.js'

/** One side of the fixture: a transport, and the `PeerRef` the other side dials it by. */
export interface ComplianceEndpoint {
  transport: PeerTransport
  peer: PeerRef
}

/** Two endpoints that can open sessions to each other, made fresh for every test. */
export interface ComplianceFixture {
  a: ComplianceEndpoint
  b: ComplianceEndpoint
  /** Releases everything setup made (both transports, networks, servers). */
  teardown(): Promise<void>
  /** Handles the adapter still holds (sessions, sockets, timers); must be 0 after `teardown`. */
  handles?(): number
}

export type ComplianceSetup = () => Promise<ComplianceFixture>

/** The part of vitest (or mocha) the suite registers its cases with. */
export interface ComplianceRunner {
  describe(name: string, body: () => void): void
  it(name: string, body: () => Promise<void>, timeoutMs?: number): void
}

export interface ComplianceOptions {
  runner: ComplianceRunner
  /** Whether order is promised; default `a.transport.capabilities.ordered`. */
  ordered?: boolean
  /** The largest frame; default `a.transport.capabilities.maxFrameBytes`. */
  maxFrameBytes?: number
  /**
   * Frame `i` of about `size` bytes, sent by side `sender`, for adapters whose frames must be valid
   * envelopes (from the sender's key to the other side's). Default `makeTestFrame`.
   */
  makeFrame?: (size: number, i: number, sender: 'a' | 'b') => Uint8Array
  /**
   * The accepting side learns of a session only from its first frame (no handshake, as with ws-relay):
   * the suite then sends one frame right after `open` before it waits for the accepted session. Default
   * false.
   */
  acceptsOnFirstFrame?: boolean
  /**
   * Whether closing one side closes the other (default true). Without a pipe (ws-relay) it does not: the
   * close cases then check the closer, close the other side themselves and check that it closes cleanly.
   */
  peerSeesClose?: boolean
  /** Frames in the burst (default 10,000) and their size (default 1 KiB). */
  burstFrames?: number
  burstFrameBytes?: number
  /** Budget of each case, enforced with `AbortSignal.timeout`. Default 30 s. */
  timeoutMs?: number
}

const KIB = 1024

/**
 * Deterministic pseudo-random bytes; frames of 4 bytes or more start with `i` (big-endian) so every frame
 * of a run is distinct.
 */
export function makeTestFrame(size: number, i: number): Uint8Array {
  const frame = new Uint8Array(size)
  let x = (i * 2654435761 + size + 1) >>> 0 || 1
  for (let k = 0; k < size; k++) {
    x ^= x << 13
    x ^= x >>> 17
    x ^= x << 5
    frame[k] = x & 0xff
  }
  if (size >= 4) new DataView(frame.buffer).setUint32(0, i >>> 0)
  return frame
}

/** Registers the compliance cases for one adapter under `describe(name)`. */
export function transportCompliance(name: string, setup: ComplianceSetup, options: ComplianceOptions): void {
  const { runner } = options
  const makeFrame = options.makeFrame ?? makeTestFrame
  const peerSeesClose = options.peerSeesClose ?? true
  const timeoutMs = options.timeoutMs ?? 30_000
  const burstFrames = options.burstFrames ?? 10_000
  const burstFrameBytes = options.burstFrameBytes ?? KIB

  /** Runs `body` on a fresh fixture with a deadline, then tears down and checks nothing is left. */
  const test = (
    title: string,
    body: (ctx: Context) => Promise<void>,
    { processHandles = false } = {},
  ): void => {
    runner.it(
      title,
      async () => {
        const before = processHandles ? activeResources() : undefined
        const fixture = await setup()
        const signal = AbortSignal.timeout(timeoutMs)
        const caps = fixture.a.transport.capabilities
        const ctx: Context = {
          ...fixture,
          signal,
          ordered: options.ordered ?? caps.ordered,
          maxFrameBytes: options.maxFrameBytes ?? caps.maxFrameBytes,
          accepted: acceptQueue(fixture.b.transport),
          primer: options.acceptsOnFirstFrame === true ? () => makeFrame(16, 0x7fff_ffff, 'a') : undefined,
        }
        try {
          await body(ctx)
        } finally {
          await fixture.teardown()
        }
        const left = fixture.handles?.()
        check(left === undefined || left === 0, `${left} handle(s) left open after teardown`)
        const after = activeResources()
        if (before === undefined || after === undefined) return // not Node: handles() is the check
        for (const [kind, count] of after) {
          const was = before.get(kind) ?? 0
          check(count <= was, `${count - was} more ${kind} active after teardown than before setup`)
        }
      },
      timeoutMs + 5_000,
    )
  }

  /**
   * Listens for `session`'s close now; the returned function awaits it. Where the peer does not see a
   * close, that function first closes `session` itself (once the caller is done with it), so the same
   * checks (a clean close, nothing lost) apply.
   */
  const waitForClose = (session: TransportSession, ctx: Context): (() => Promise<[err?: Error]>) => {
    const closed = waitFor(session, 'close', { signal: ctx.signal })
    if (peerSeesClose) return () => closed
    return async () => {
      await session.close()
      return closed
    }
  }

  runner.describe(`transport compliance: ${name}`, () => {
    test('opens a session both ways; the accepting side knows who dialed', async (ctx) => {
      const { sa, sb } = await connect(ctx)
      check(bytesEqual(sb.peer.pk, ctx.a.peer.pk), "the accepted session's peer is not the dialer")
      check(bytesEqual(sa.peer.pk, ctx.b.peer.pk), "the opened session's peer is not the one dialed")
      check(sa.open && sb.open, 'a fresh session is not open')
      await exchange(sa, sb, [makeFrame(16, 1, 'a')], ctx)
      await exchange(sb, sa, [makeFrame(16, 2, 'b')], ctx)
    })

    test('keeps order where promised, and delivers every frame exactly once', async (ctx) => {
      const { sa, sb } = await connect(ctx)
      // Mixed sizes, so an adapter that reorders by size (or by chunking) is caught.
      const sizes = [1, 700, 16 * KIB, 3, 60 * KIB, 128]
      const frames = Array.from({ length: 600 }, (_, i) =>
        makeFrame(Math.min(sizes[i % sizes.length] ?? 1, ctx.maxFrameBytes), i, 'a'),
      )
      await exchange(sa, sb, frames, ctx)
    })

    for (const [label, size] of [
      ['1 B', 1],
      ['1 KiB', KIB],
      ['60 KiB', 60 * KIB],
      ['64 KiB (or maxFrameBytes)', 64 * KIB],
    ] as const) {
      test(`carries a ${label} frame intact both ways`, async (ctx) => {
        const { sa, sb } = await connect(ctx)
        const bytes = Math.min(size, ctx.maxFrameBytes)
        await exchange(sa, sb, [makeFrame(bytes, 1, 'a')], ctx)
        await exchange(sb, sa, [makeFrame(bytes, 2, 'b')], ctx)
      })
    }

    test(`takes a ${burstFrames}-frame burst under backpressure, each frame once`, async (ctx) => {
      const { sa, sb } = await connect(ctx)
      const frames = Array.from({ length: burstFrames }, (_, i) => makeFrame(burstFrameBytes, i, 'a'))
      await exchange(sa, sb, frames, ctx)
    })

    test('a clean close delivers everything sent before it; both sides see close without error', async (ctx) => {
      const { sa, sb } = await connect(ctx)
      const frames = Array.from({ length: 2_000 }, (_, i) => makeFrame(2 * KIB, i, 'a'))
      const received = receive(sb, frames.length, ctx.signal)
      const peerClosed = waitForClose(sb, ctx)
      const selfClosed = waitFor(sa, 'close', { signal: ctx.signal })
      await sendAll(sa, frames, ctx.signal)
      const closing = sa.close('done')
      check(!sa.open, 'open is still true after close()')
      await closing
      await sa.close() // idempotent
      checkSameFrames(frames, await received, ctx.ordered)
      const [peerErr] = await peerClosed()
      const [selfErr] = await selfClosed
      check(peerErr === undefined, `the peer saw close with an error: ${String(peerErr)}`)
      check(selfErr === undefined, `the closer saw close with an error: ${String(selfErr)}`)
      check(!sb.open, "the peer's session is still open after a clean close")
    })

    test('the accepting side can close too', async (ctx) => {
      const { sa, sb } = await connect(ctx)
      const frames = Array.from({ length: 50 }, (_, i) => makeFrame(KIB, i, 'b'))
      const received = receive(sa, frames.length, ctx.signal)
      const peerClosed = waitForClose(sa, ctx)
      await sendAll(sb, frames, ctx.signal)
      await sb.close()
      checkSameFrames(frames, await received, ctx.ordered)
      const [err] = await peerClosed()
      check(err === undefined, `the dialer saw close with an error: ${String(err)}`)
    })

    test('send after close throws MESH_ERR_TRANSPORT_CLOSED on both sides', async (ctx) => {
      const { sa, sb } = await connect(ctx)
      const peerClosed = waitForClose(sb, ctx)
      await sa.close()
      await peerClosed()
      checkThrows(() => sa.send(makeFrame(8, 1, 'a')), 'MESH_ERR_TRANSPORT_CLOSED')
      checkThrows(() => sb.send(makeFrame(8, 2, 'b')), 'MESH_ERR_TRANSPORT_CLOSED')
    })

    test('an oversize send throws MESH_ERR_FRAME_TOO_LARGE and the session stays usable', async (ctx) => {
      const { sa, sb } = await connect(ctx)
      checkThrows(() => sa.send(new Uint8Array(ctx.maxFrameBytes + 1)), 'MESH_ERR_FRAME_TOO_LARGE')
      check(sa.open, 'an oversize send closed the session')
      await exchange(sa, sb, [makeFrame(32, 1, 'a')], ctx)
    })

    test('open with an already-aborted signal rejects with its reason and opens nothing', async (ctx) => {
      const reason = new Error('aborted before open')
      const controller = new AbortController()
      controller.abort(reason)
      await checkRejectsWith(ctx.a.transport.open(ctx.b.peer, { signal: controller.signal }), reason)
      await checkOnlyGoodSessionSurvives(ctx, makeFrame(1, 0x6d, 'a'))
    })

    test('open aborted mid-way rejects with the reason and leaves nothing open', async (ctx) => {
      const reason = new Error('aborted during open')
      const controller = new AbortController()
      const opening = ctx.a.transport.open(ctx.b.peer, { signal: controller.signal })
      controller.abort(reason)
      await checkRejectsWith(opening, reason)
      await checkOnlyGoodSessionSurvives(ctx, makeFrame(1, 0x6d, 'a'))
    })

    test('closing a transport closes its sessions; the peer sees close, new opens fail', async (ctx) => {
      const { sa, sb } = await connect(ctx)
      const selfClosed = waitFor(sa, 'close', { signal: ctx.signal })
      const peerClosed = peerSeesClose ? waitFor(sb, 'close', { signal: ctx.signal }) : undefined
      await ctx.a.transport.close()
      await Promise.all([peerClosed, selfClosed])
      check(!sa.open, 'a session is still open after its transport closed')
      check(!peerSeesClose || !sb.open, "the peer's session is still open after the transport closed")
      const code = await rejectionCode(ctx.a.transport.open(ctx.b.peer, { signal: ctx.signal }))
      check(code === 'MESH_ERR_TRANSPORT_CLOSED', `open after close rejected with ${code}`)
    })

    test(
      'leaves no process handle behind (Node: active resources before setup and after teardown)',
      async (ctx) => {
        const { sa, sb } = await connect(ctx)
        await exchange(sa, sb, [makeFrame(KIB, 1, 'a')], ctx)
        await sa.close()
      },
      { processHandles: true },
    )
  })
}

interface Context extends ComplianceFixture {
  signal: AbortSignal
  ordered: boolean
  maxFrameBytes: number
  accepted: AcceptQueue
  /** The frame `connect` sends first when the accepting side learns of sessions from a frame. */
  primer: (() => Uint8Array) | undefined
}

interface AcceptQueue {
  /** Every session B accepted so far. */
  readonly all: TransportSession[]
  /** The next accepted session not yet handed out. */
  next(signal: AbortSignal): Promise<TransportSession>
  /** The first accepted session to receive a frame. */
  firstHeard(signal: AbortSignal): Promise<TransportSession>
}

/** Collects the sessions a transport accepts (onSession has no `off`, so one listener per fixture). */
function acceptQueue(transport: PeerTransport): AcceptQueue {
  const all: TransportSession[] = []
  const accepted = new Waiters<TransportSession>()
  const heard = new Waiters<TransportSession>()
  transport.onSession((session) => {
    all.push(session)
    accepted.put(session)
    session.once('message', () => heard.put(session))
  })
  return { all, next: (signal) => accepted.take(signal), firstHeard: (signal) => heard.take(signal) }
}

/** A queue of values and of takers waiting for one. */
class Waiters<T> {
  #values: T[] = []
  #takers: ((value: T) => void)[] = []

  put(value: T): void {
    const taker = this.#takers.shift()
    if (taker !== undefined) taker(value)
    else this.#values.push(value)
  }

  take(signal: AbortSignal): Promise<T> {
    if (this.#values.length > 0) return Promise.resolve(this.#values.shift() as T)
    return new Promise((resolve, reject) => {
      const taker = (value: T): void => {
        signal.removeEventListener('abort', onAbort)
        resolve(value)
      }
      const onAbort = (): void => {
        this.#takers = this.#takers.filter((t) => t !== taker)
        reject(signal.reason as Error)
      }
      signal.addEventListener('abort', onAbort, { once: true })
      this.#takers.push(taker)
    })
  }
}

async function connect(ctx: Context): Promise<{ sa: TransportSession; sb: TransportSession }> {
  const accepted = ctx.accepted.next(ctx.signal)
  const sa = await ctx.a.transport.open(ctx.b.peer, { signal: ctx.signal })
  if (ctx.primer !== undefined) {
    check(sa.send(ctx.primer()), 'a fresh session refused its first frame')
    const sb = await accepted
    // The primer is heard in the same turn as the accept, before any test listens for frames.
    return { sa, sb }
  }
  return { sa, sb: await accepted }
}

/** Sends `frames` from `from`, receives them on `to`, and checks they arrived whole and once. */
async function exchange(
  from: TransportSession,
  to: TransportSession,
  frames: Uint8Array[],
  ctx: Context,
): Promise<void> {
  const received = receive(to, frames.length, ctx.signal)
  await sendAll(from, frames, ctx.signal)
  checkSameFrames(frames, await received, ctx.ordered)
}

/** Sends every frame, honouring `send() === false` by waiting for `drain` before trying that frame again. */
async function sendAll(
  session: TransportSession,
  frames: Uint8Array[],
  signal: AbortSignal,
): Promise<number> {
  let refusals = 0
  for (const frame of frames) {
    while (!session.send(frame)) {
      refusals++
      await waitFor(session, 'drain', { signal })
    }
  }
  return refusals
}

/**
 * The next `count` frames on `session`. Rejects if the session closes first or the signal aborts, saying
 * how many arrived; a duplicate beyond `count` fails later, in `checkSameFrames`' count of what arrived.
 */
function receive(session: TransportSession, count: number, signal: AbortSignal): Promise<Uint8Array[]> {
  const frames: Uint8Array[] = []
  return new Promise((resolve, reject) => {
    const cleanup = (): void => {
      session.off('message', onMessage)
      session.off('close', onClose)
      signal.removeEventListener('abort', onAbort)
    }
    const onMessage = (frame: Uint8Array): void => {
      frames.push(frame)
      if (frames.length === count) {
        cleanup()
        resolve(frames)
      }
    }
    const onClose = (err?: Error): void => {
      cleanup()
      reject(new Error(`session closed after ${frames.length} of ${count} frames (${String(err)})`))
    }
    const onAbort = (): void => {
      cleanup()
      reject(new Error(`timed out after ${frames.length} of ${count} frames`, { cause: signal.reason }))
    }
    if (count === 0) return resolve(frames)
    session.on('message', onMessage)
    session.on('close', onClose)
    signal.addEventListener('abort', onAbort, { once: true })
  })
}

/** Each sent frame arrived exactly once, byte-identical, in order when the adapter promises order. */
function checkSameFrames(sent: Uint8Array[], got: Uint8Array[], ordered: boolean): void {
  check(got.length === sent.length, `sent ${sent.length} frames, received ${got.length}`)
  if (ordered) {
    for (let i = 0; i < sent.length; i++) {
      const a = sent[i]
      const b = got[i]
      check(a !== undefined && b !== undefined && bytesEqual(a, b), `frame ${i} differs or is out of order`)
    }
    return
  }
  const counts = new Map<string, number>()
  for (const frame of sent) counts.set(frameKey(frame), (counts.get(frameKey(frame)) ?? 0) + 1)
  for (const frame of got) {
    const key = frameKey(frame)
    const left = counts.get(key) ?? 0
    check(left > 0, `received a frame (${frame.byteLength} B) that was not sent, or twice`)
    counts.set(key, left - 1)
  }
}

/** Length and FNV-1a of the bytes: enough to tell test frames apart. */
function frameKey(frame: Uint8Array): string {
  let hash = 0x811c9dc5
  for (const byte of frame) hash = Math.imul(hash ^ byte, 0x01000193)
  return `${frame.byteLength}:${hash >>> 0}`
}

/**
 * After a failed open: a good session still opens, and any session B accepted besides it (from the
 * aborted attempt) is closed or closes before the deadline.
 */
async function checkOnlyGoodSessionSurvives(ctx: Context, marker: Uint8Array): Promise<void> {
  const sa = await ctx.a.transport.open(ctx.b.peer, { signal: ctx.signal })
  // B's side of the good session is the one that hears the marker.
  const good = ctx.accepted.firstHeard(ctx.signal)
  check(sa.send(marker), 'a fresh session refused a 1-byte frame')
  const goodB = await good
  for (const session of ctx.accepted.all) {
    if (session !== goodB && session.open) await waitFor(session, 'close', { signal: ctx.signal })
  }
}

function activeResources(): Map<string, number> | undefined {
  const proc = (globalThis as { process?: { getActiveResourcesInfo?: () => string[] } }).process
  const info = proc?.getActiveResourcesInfo?.()
  if (info === undefined) return undefined
  const counts = new Map<string, number>()
  for (const kind of info) counts.set(kind, (counts.get(kind) ?? 0) + 1)
  return counts
}

function check(condition: boolean, message: string): asserts condition {
  if (!condition) throw new Error(`transport compliance: ${message}`)
}

function checkThrows(fn: () => unknown, code: MeshErrorCode): void {
  try {
    fn()
  } catch (err) {
    check(isMeshError(err, code), `threw ${String(err)}, expected ${code}`)
    return
  }
  check(false, `did not throw ${code}`)
}

async function checkRejectsWith(promise: Promise<unknown>, reason: unknown): Promise<void> {
  try {
    await promise
  } catch (err) {
    check(err === reason, `rejected with ${String(err)}, not the signal's reason`)
    return
  }
  check(false, 'resolved despite the aborted signal')
}

async function rejectionCode(promise: Promise<unknown>): Promise<string> {
  try {
    await promise
  } catch (err) {
    return isMeshError(err) ? err.code : String(err)
  }
  return 'no rejection'
}
