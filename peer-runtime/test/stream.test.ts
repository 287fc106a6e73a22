import { createHash, randomBytes } from 'node:crypto'
import { createReadStream, createWriteStream } from 'node:fs'
import { join } from 'node:path'
import { once } from 'node:events'
import { afterEach, describe, expect, it } from 'vitest'
import { toHex } from '../../protocol/index.js'
import { worldsPerTest } from '../../test/support/coordinator-world.js'
import { closePeers, sessionPeer, tempDir } from '../../test/support/peer-world.js'
import { rejectionCode } from '../../test/support/rejection.js'
import type { Peer } from '../peer.js'
import {
  IncomingStream,
  onStream,
  openStream,
  STREAM_CHUNK_BYTES,
  STREAM_DEFAULT_WINDOW,
  StreamAbortedError,
  type StreamWindow,
} from '../stream.js'

const UNLIMITED_RATE = { messageBurst: 1e9, messagesPerSecond: 1e9, byteBurst: 1e12, bytesPerSecond: 1e12 }
const MB = 1024 * 1024

/** A file of `bytes` random bytes in a temp dir, and its SHA-256. */
async function randomFile(bytes: number): Promise<{ path: string; sha256: string }> {
  const path = join(tempDir('agentmesh-stream-'), 'blob.bin')
  const out = createWriteStream(path)
  const hash = createHash('sha256')
  for (let left = bytes; left > 0; left -= MB) {
    const block = randomBytes(Math.min(MB, left))
    hash.update(block)
    if (!out.write(block)) await once(out, 'drain')
  }
  out.end()
  await once(out, 'finish')
  return { path, sha256: hash.digest('hex') }
}

/** The next stream `peer` receives, read to the end: its hash, size and stats. */
function receiveOne(peer: Peer): Promise<{ sha256: string; bytes: number; stream: IncomingStream }> {
  return new Promise((resolve, reject) => {
    const stop = onStream(peer, async (stream) => {
      stop()
      try {
        const hash = createHash('sha256')
        let bytes = 0
        for await (const chunk of stream) {
          hash.update(chunk)
          bytes += chunk.length
        }
        resolve({ sha256: hash.digest('hex'), bytes, stream })
      } catch (err) {
        reject(err instanceof Error ? err : new Error(String(err)))
      }
    })
  })
}

/** An endless source of 1 KiB chunks counting up. */
async function* endless(): AsyncGenerator<Uint8Array> {
  for (let n = 0; ; n++) yield new Uint8Array(1024).fill(n % 256)
}

describe('IncomingStream (reassembly and credit, no network)', () => {
  function incoming(window = 8): { stream: IncomingStream; grants: Omit<StreamWindow, 't' | 'streamId'>[] } {
    const grants: Omit<StreamWindow, 't' | 'streamId'>[] = []
    const stream = new IncomingStream({
      from: new Uint8Array(32),
      streamId: 's1',
      window,
      idleTimeoutMs: 5_000,
      grant: (w) => grants.push(w),
      ended: () => undefined,
    })
    return { stream, grants }
  }
  const bytes = (n: number): Uint8Array => new Uint8Array([n])

  it('puts chunks back in seq order, drops copies, and ends after fin', async () => {
    const { stream, grants } = incoming()
    stream.accept()
    for (const seq of [3, 1, 0, 1, 2, 0]) stream.take(seq, bytes(seq), false, seq % 2 ? 'p2p' : 'relay')
    stream.take(4, bytes(4), true, 'relay')
    stream.take(4, bytes(4), true, 'relay')
    const got: number[] = []
    for await (const chunk of stream) got.push(chunk[0]!)
    expect(got).toEqual([0, 1, 2, 3, 4])
    expect(stream.stats).toMatchObject({ chunks: 5, duplicates: 3, outOfOrder: 3, maxBuffered: 5 })
    expect(stream.stats.via).toEqual({ p2p: 2, relay: 3 })
    // A window of 8 is the initial credit: no grant until the end says all five were read.
    expect(grants).toEqual([{ upToSeq: 7, read: 5 }])
  })

  it('grants credit as the reader reads, and refuses a chunk beyond it (MESH_ERR_STREAM_PROTOCOL)', async () => {
    const { stream, grants } = incoming(8)
    stream.accept()
    for (let seq = 0; seq < 8; seq++) stream.take(seq, bytes(seq), false, 'relay')
    const reader = stream[Symbol.asyncIterator]()
    await reader.next()
    await reader.next()
    // Two read: credit moves by a quarter window (2 chunks) to 1 + 8.
    expect(grants.at(-1)).toEqual({ upToSeq: 9, read: 2 })
    stream.take(10, bytes(10), false, 'relay')
    const refused = await reader.next().then(
      () => undefined,
      (e: unknown) => e,
    )
    expect(refused).toMatchObject({ code: 'MESH_ERR_STREAM_PROTOCOL' })
    expect(grants.at(-1)?.cancel?.code).toBe('MESH_ERR_STREAM_PROTOCOL')
  })

  it('times out when no chunk comes (MESH_ERR_STREAM_TIMEOUT)', async () => {
    const stream = new IncomingStream({
      from: new Uint8Array(32),
      streamId: 's2',
      window: 8,
      idleTimeoutMs: 50,
      grant: () => undefined,
      ended: () => undefined,
    })
    expect(await rejectionCode(stream[Symbol.asyncIterator]().next())).toBe('MESH_ERR_STREAM_TIMEOUT')
  })
})

describe('streams over a Peer', () => {
  const start = worldsPerTest('pglite')
  afterEach(closePeers)

  it('a buffer, a ReadableStream and an empty stream arrive whole over the relay', async () => {
    const world = await start()
    const alice = await sessionPeer(world, await world.member('alice'))
    const bob = await sessionPeer(world, await world.member('bob'))
    await Promise.all([alice.whenConnected(), bob.whenConnected()])
    const blob = randomBytes(3 * STREAM_CHUNK_BYTES + 17)
    const sha = createHash('sha256').update(blob).digest('hex')

    let received = receiveOne(bob)
    const sent = await openStream(alice, bob.identity.publicKey, blob).done
    expect(sent).toMatchObject({ chunks: 4, bytes: blob.length })
    expect(await received).toMatchObject({ sha256: sha, bytes: blob.length })

    received = receiveOne(bob)
    const web = new ReadableStream<Uint8Array>({
      start(c) {
        for (let at = 0; at < blob.length; at += 10_000) c.enqueue(blob.subarray(at, at + 10_000))
        c.close()
      },
    })
    await openStream(alice, bob.identity.publicKey, web).done
    expect(await received).toMatchObject({ sha256: sha })

    received = receiveOne(bob)
    expect(await openStream(alice, bob.identity.publicKey, []).done).toMatchObject({ chunks: 1, bytes: 0 })
    const empty = await received
    expect(empty.bytes).toBe(0)
    expect(toHex(empty.stream.from)).toBe(toHex(alice.identity.publicKey))
  })

  it('a reader that stops early cancels: the sender rejects with StreamAbortedError (by the receiver)', async () => {
    const world = await start()
    const alice = await sessionPeer(world, await world.member('alice'))
    const bob = await sessionPeer(world, await world.member('bob'))
    await Promise.all([alice.whenConnected(), bob.whenConnected()])
    onStream(bob, async (stream) => {
      let n = 0
      for await (const _ of stream) if (++n === 3) break
    })
    const err = await openStream(alice, bob.identity.publicKey, endless()).done.catch((e: unknown) => e)
    expect(err).toBeInstanceOf(StreamAbortedError)
    expect(err).toMatchObject({ code: 'MESH_ERR_STREAM_ABORTED', details: { by: 'receiver' } })
  })

  it('a sender that aborts ends the reader with StreamAbortedError (by the sender)', async () => {
    const world = await start()
    const alice = await sessionPeer(world, await world.member('alice'))
    const bob = await sessionPeer(world, await world.member('bob'))
    await Promise.all([alice.whenConnected(), bob.whenConnected()])
    const abort = new AbortController()
    const read = new Promise<unknown>((resolve) =>
      onStream(bob, async (stream) => {
        let n = 0
        try {
          for await (const _ of stream) if (++n === 3) abort.abort(new Error('changed my mind'))
        } catch (err) {
          resolve(err)
        }
      }),
    )
    const sent = openStream(alice, bob.identity.publicKey, endless(), { signal: abort.signal })
    expect(await sent.done.catch((e: unknown) => (e as Error).message)).toBe('changed my mind')
    expect(await read).toMatchObject({
      code: 'MESH_ERR_STREAM_ABORTED',
      details: { by: 'sender', reason: 'MESH_ERR_STREAM_ABORTED' },
    })
  })

  it('a stream that starts before the P2P session is up moves from the relay to P2P mid-stream, whole', async () => {
    const world = await start({ limits: { rate: UNLIMITED_RATE } })
    const alice = await sessionPeer(world, await world.member('alice'), { p2p: true, store: 'sqlite' })
    const bob = await sessionPeer(world, await world.member('bob'), { p2p: true, store: 'sqlite' })
    await Promise.all([alice.whenConnected(), bob.whenConnected()])
    const file = await randomFile(24 * MB)
    const received = receiveOne(bob)
    const sent = await openStream(alice, bob.identity.publicKey, createReadStream(file.path)).done
    const got = await received
    expect(got).toMatchObject({ sha256: file.sha256, bytes: 24 * MB })
    const via = got.stream.stats.via
    expect(via['relay']).toBeGreaterThan(0)
    expect(via['p2p']).toBeGreaterThan(0)
    expect((via['relay'] ?? 0) + (via['p2p'] ?? 0)).toBe(sent.chunks)
  }, 120_000)

  describe.each([
    ['P2P', true],
    ['the relay', false],
  ] as const)('a 100 MB file over %s', (label, p2p) => {
    it('arrives byte-identical, within the window', async () => {
      const world = await start({ limits: { rate: UNLIMITED_RATE } })
      const alice = await sessionPeer(world, await world.member('alice'), { p2p, store: 'sqlite' })
      const bob = await sessionPeer(world, await world.member('bob'), { p2p, store: 'sqlite' })
      await Promise.all([alice.whenConnected(), bob.whenConnected()])
      if (p2p) {
        // The first message goes by relay and starts the handshake; the stream rides the warm session.
        await alice.send(bob.identity.publicKey, { hello: true })
        await expect.poll(() => alice.p2pWarm(bob.identity.publicKey), { timeout: 10_000 }).toBe(true)
      }
      const file = await randomFile(100 * MB)

      const received = receiveOne(bob)
      const began = performance.now()
      const out = openStream(alice, bob.identity.publicKey, createReadStream(file.path))
      const [got, sent] = await Promise.all([received, out.done])
      const seconds = (performance.now() - began) / 1000

      expect(got.bytes).toBe(100 * MB)
      expect(got.sha256).toBe(file.sha256)
      expect(sent.chunks).toBe(Math.ceil((100 * MB) / STREAM_CHUNK_BYTES))
      expect(sent.maxUnread).toBeLessThanOrEqual(STREAM_DEFAULT_WINDOW)
      expect(got.stream.stats.maxBuffered).toBeLessThanOrEqual(STREAM_DEFAULT_WINDOW)
      const via = got.stream.stats.via
      // A P2P frame unacked for 3 s on a loaded machine demotes the session (its chunks go by relay): most still ride P2P.
      if (p2p) expect(via['p2p'] ?? 0).toBeGreaterThan(sent.chunks / 2)
      else expect(via).toEqual({ relay: sent.chunks })
      console.log(
        `stream 100 MB over ${label}: ${seconds.toFixed(1)} s, ${(100 / seconds).toFixed(1)} MB/s, ` +
          `via ${JSON.stringify(via)}, ${got.stream.stats.outOfOrder} out of order, ` +
          `${got.stream.stats.grants} grants, max ${got.stream.stats.maxBuffered} held`,
      )
    }, 240_000)
  })
})
