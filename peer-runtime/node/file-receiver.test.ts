import { createHash, randomBytes } from 'node:crypto'
import { mkdir, readdir, readFile, utimes, writeFile } from 'node:fs/promises'
import { join, relative } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { encode } from '../../protocol/codec.js'
import { toHex } from '../../protocol/encoding.js'
import { worldsPerTest, type World } from '../../test/support/coordinator-world.js'
import { closePeers, sessionPeer, tempDir, UNLIMITED_RATE } from '../../test/support/peer-world.js'
import { rejection } from '../../test/support/rejection.js'
import type { Peer } from '../peer.js'
import { rpcEndpoint } from '../rpc.js'
import { openStream, type StreamSource } from '../stream.js'
import { encodeFileHeader, FILE_MAGIC, FILE_OFFER_METHOD, FILE_RECEIPT_METHOD } from './file-header.js'
import { partsDir, receiveFiles, STALE_PART_MS, sweepStaleParts, type FileEvent } from './file-receiver.js'
import { sendFile } from './file-sender.js'

/** Every file under `dir` (relative paths), hidden temp files included. */
async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = []
  async function walk(d: string): Promise<void> {
    let entries
    try {
      entries = await readdir(d, { withFileTypes: true })
    } catch {
      return
    }
    for (const e of entries) {
      if (e.isDirectory()) await walk(join(d, e.name))
      else out.push(relative(dir, join(d, e.name)))
    }
  }
  await walk(dir)
  return out.sort()
}

/** A header as a careless or hostile sender might write it (no checks on this side). */
function rawHeader(fields: Record<string, unknown>): Uint8Array {
  const body = encode({ t: 'file', ...fields })
  const out = new Uint8Array(8 + body.length)
  out.set(FILE_MAGIC, 0)
  new DataView(out.buffer).setUint32(4, body.length)
  out.set(body, 8)
  return out
}

function concat(...parts: Uint8Array[]): Uint8Array {
  return new Uint8Array(Buffer.concat(parts))
}

const sha = (b: Uint8Array): Buffer => createHash('sha256').update(b).digest()

describe('files over a Peer (file-header.ts framing, receiveFiles, sendFile)', () => {
  const start = worldsPerTest('pglite')
  afterEach(closePeers)

  interface Pair {
    world: World
    alice: Peer
    bob: Peer
    home: string
    events: FileEvent[]
    /** Resolves with the next `saved` or `failed` event. */
    next: () => Promise<FileEvent>
  }

  async function pair(): Promise<Pair> {
    const world = await start({ limits: { rate: UNLIMITED_RATE } })
    const alice = await sessionPeer(world, await world.member('alice'))
    const bob = await sessionPeer(world, await world.member('bob'))
    await Promise.all([alice.whenConnected(), bob.whenConnected()])
    const home = tempDir('agentmesh-files-')
    const events: FileEvent[] = []
    const waiters: ((e: FileEvent) => void)[] = []
    receiveFiles(alice, {
      home,
      onEvent: (e) => {
        events.push(e)
        if (e.kind === 'saved' || e.kind === 'failed') waiters.shift()?.(e)
      },
    })
    return { world, alice, bob, home, events, next: () => new Promise((resolve) => waiters.push(resolve)) }
  }

  it('saves a file under files/<mesh>/<sender>/ with its hash checked, never over another', async () => {
    const { world, alice, bob, home, events } = await pair()
    const dir = tempDir('agentmesh-src-')
    const path = join(dir, 'notes.txt')
    const data = randomBytes(150_000)
    await writeFile(path, data)

    const first = await sendFile(bob, alice.identity.publicKey, path)
    expect(first).toMatchObject({ name: 'notes.txt', size: data.length, sha256: sha(data).toString('hex') })
    expect(first.receipt).toMatchObject({ savedAs: 'notes.txt', size: data.length, sha256: first.sha256 })
    const second = await sendFile(bob, alice.identity.publicKey, path)
    expect(second.receipt.savedAs).toBe('notes-1.txt')

    const saved = events.filter((e): e is Extract<FileEvent, { kind: 'saved' }> => e.kind === 'saved')
    expect(saved).toHaveLength(2)
    // The sender's folder: its display name when the mesh vouches for one, else its key prefix.
    const label = saved[0]!.transfer.fromName ?? toHex(bob.identity.publicKey).slice(0, 16)
    expect(relative(home, saved[0]!.path).split('/').slice(0, 3)).toEqual(['files', world.mesh, label])
    const base = join('files', world.mesh, label)
    expect(await filesUnder(home)).toEqual([join(base, 'notes-1.txt'), join(base, 'notes.txt')])
    expect(await readFile(join(home, base, 'notes.txt'))).toEqual(data)
    expect(await readFile(join(home, base, 'notes-1.txt'))).toEqual(data)
    const progress = events.filter((e) => e.kind === 'progress')
    expect(progress.at(-1)).toMatchObject({ bytes: data.length })
  }, 60_000)

  it.each([
    ['../escape.txt', 'a parent folder'],
    ['/etc/passwd-copy', 'an absolute path'],
    ['a\u0000b', 'a NUL'],
    ['..', 'the parent itself'],
    ['sub/dir.txt', 'a path separator'],
    ['back\\slash', 'a backslash'],
  ])(
    'refuses the name %j (%s) before writing anything',
    async (name) => {
      const { alice, bob, home, next } = await pair()
      // Longer than a chunk: the refusal of the first one cancels the stream before its end.
      const body = randomBytes(200_000)
      const failed = next()
      const out = openStream(
        bob,
        alice.identity.publicKey,
        concat(rawHeader({ name, size: body.length, sha256: sha(body) }), body),
      )
      const refused = await rejection(out.done)
      expect(refused).toMatchObject({
        code: 'MESH_ERR_STREAM_ABORTED',
        details: { by: 'receiver', reason: 'MESH_ERR_STREAM_PROTOCOL' },
      })
      const event = await failed
      expect(event).toMatchObject({
        kind: 'failed',
        error: { code: 'MESH_ERR_STREAM_PROTOCOL', details: { reason: 'file_name' } },
      })
      expect(await filesUnder(home)).toEqual([])
      // The offer of such a name is refused too, before any byte would go.
      const receipt = rpcEndpoint(bob).call(
        alice.identity.publicKey,
        { streamId: out.streamId },
        { method: FILE_RECEIPT_METHOD },
      )
      expect(await rejection(receipt)).toMatchObject({ details: { reason: 'file_name' } })
      const offer = rpcEndpoint(bob).call(
        alice.identity.publicKey,
        { name, size: body.length, sha256: sha(body).toString('hex') },
        { method: FILE_OFFER_METHOD },
      )
      expect(await rejection(offer)).toMatchObject({
        code: 'MESH_ERR_STREAM_PROTOCOL',
        details: { reason: 'file_name' },
      })
      // And the sending side refuses to frame such a name at all.
      expect(() => encodeFileHeader({ name, size: 1, sha256: sha(body) })).toThrow(/refused file name/)
    },
    60_000,
  )

  it('a SHA-256 mismatch leaves no file, and the receipt says why', async () => {
    const { alice, bob, home, next } = await pair()
    const body = randomBytes(200_000)
    const failed = next()
    const out = openStream(
      bob,
      alice.identity.publicKey,
      concat(rawHeader({ name: 'x.bin', size: body.length, sha256: sha(randomBytes(8)) }), body),
    )
    await out.done // every byte was read: the verdict comes with the receipt
    const receipt = rpcEndpoint(bob).call(
      alice.identity.publicKey,
      { streamId: out.streamId },
      { method: FILE_RECEIPT_METHOD },
    )
    expect(await rejection(receipt)).toMatchObject({
      code: 'MESH_ERR_STREAM_PROTOCOL',
      details: { reason: 'sha256' },
    })
    expect(await failed).toMatchObject({ kind: 'failed', error: { details: { reason: 'sha256' } } })
    expect(await filesUnder(home)).toEqual([])
  }, 60_000)

  it('a stream the sender aborts midway, or shorter than its header says, leaves no file', async () => {
    const { alice, bob, home, next } = await pair()
    const abort = new AbortController()
    async function* slow(): AsyncGenerator<Uint8Array> {
      yield rawHeader({ name: 'big.bin', size: 10_000_000, sha256: sha(new Uint8Array(0)) })
      for (let i = 0; ; i++) {
        yield randomBytes(60_000)
        if (i === 5) abort.abort(new Error('the user pressed ^C'))
      }
    }
    const aborted = next()
    const out = openStream(bob, alice.identity.publicKey, slow() as StreamSource, { signal: abort.signal })
    await expect(out.done).rejects.toThrow(/\^C/)
    expect(await aborted).toMatchObject({ kind: 'failed', error: { code: 'MESH_ERR_STREAM_ABORTED' } })
    expect(await filesUnder(home)).toEqual([])

    const short = next()
    const body = randomBytes(5000)
    await openStream(
      bob,
      alice.identity.publicKey,
      concat(rawHeader({ name: 's.bin', size: 9000, sha256: sha(body) }), body),
    ).done
    expect(await short).toMatchObject({ kind: 'failed', error: { details: { reason: 'size' } } })
    expect(await filesUnder(home)).toEqual([])
  }, 60_000)

  it('a stream that is no file is cancelled (not_a_file)', async () => {
    const { alice, bob, home, next } = await pair()
    const failed = next()
    const refused = await rejection(openStream(bob, alice.identity.publicKey, randomBytes(70_000)).done)
    expect(refused).toMatchObject({ code: 'MESH_ERR_STREAM_ABORTED', details: { by: 'receiver' } })
    expect(await failed).toMatchObject({ kind: 'failed', error: { details: { reason: 'not_a_file' } } })
    expect(await filesUnder(home)).toEqual([])
  }, 60_000)

  it('a peer that runs no receiver is refused fast (MESH_ERR_PEER_UNREACHABLE), not after a stall', async () => {
    const world = await start({ limits: { rate: UNLIMITED_RATE } })
    const carol = await sessionPeer(world, await world.member('carol'))
    const bob = await sessionPeer(world, await world.member('bob'))
    await Promise.all([carol.whenConnected(), bob.whenConnected()])
    const path = join(tempDir('agentmesh-src-'), 'a.txt')
    await writeFile(path, 'hello')
    const began = performance.now()
    const refused = await rejection(sendFile(bob, carol.identity.publicKey, path, { offerTimeoutMs: 1_500 }))
    expect(refused).toMatchObject({
      code: 'MESH_ERR_PEER_UNREACHABLE',
      details: { reason: 'MESH_ERR_RPC_TIMEOUT' },
    })
    expect(performance.now() - began).toBeLessThan(10_000)
  }, 30_000)
})

describe('temp files a crashed receiver left', () => {
  afterEach(closePeers)

  it("are swept once 10 min old; a live transfer's file is left alone", async () => {
    const home = tempDir('agentmesh-files-')
    const dir = partsDir(home, 'team')
    await mkdir(dir, { recursive: true })
    await writeFile(join(dir, 'old.part'), 'x')
    await writeFile(join(dir, 'live.part'), 'x')
    await writeFile(join(dir, 'notes.txt'), 'x')
    const old = (Date.now() - STALE_PART_MS - 60_000) / 1000
    await utimes(join(dir, 'old.part'), old, old)
    await utimes(join(dir, 'notes.txt'), old, old)
    expect(await sweepStaleParts(dir, Date.now())).toBe(1)
    expect((await readdir(dir)).sort()).toEqual(['live.part', 'notes.txt'])
  })
})
