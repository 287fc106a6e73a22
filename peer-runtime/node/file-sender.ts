/**
 * The sending end of `agentmesh file send` (framing in file-header.ts): hashes the file, offers it to the
 * receiver, streams the header and the file, then asks it for its verdict (`FILE_RECEIPT_METHOD`), so the
 * caller knows the file was saved with a matching SHA-256, under which name, and what carried it.
 */
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { stat } from 'node:fs/promises'
import { basename } from 'node:path'
import { toHex } from '../../protocol/encoding.js'
import { isMeshError, MeshError } from '../../protocol/errors.js'
import type { Peer } from '../peer.js'
import { rpcEndpoint } from '../rpc.js'
import { openStream, streamEndpoint } from '../stream.js'
import { encodeFileHeader, FILE_OFFER_METHOD, FILE_RECEIPT_METHOD, type FileReceipt } from './file-header.js'

export interface SendFileOptions {
  /** The name the receiver saves it as (default: the path's base name). */
  name?: string
  signal?: AbortSignal
  /** Called as bytes of the file go out (given to the outbox; at most a window ahead of the receiver). */
  onProgress?: (sent: number, size: number) => void
  /** How long to wait for the receiver to accept the offer (default 15 s). */
  offerTimeoutMs?: number
  /** How long to wait for a P2P session to come up before streaming (default 3 s; 0: not at all). */
  p2pWaitMs?: number
  /** How long to wait for the receiver's verdict after the stream (default 30 s). */
  receiptTimeoutMs?: number
  /**
   * How long either end of the stream may wait for progress (default: the stream's 2 min). Takes effect
   * only on the peer's first stream (one endpoint per peer).
   */
  idleTimeoutMs?: number
}

/** What a sent file came to. */
export interface SentFile {
  name: string
  size: number
  /** Hex. */
  sha256: string
  streamId: string
  /** From the header's first byte out to the receiver's verdict. */
  ms: number
  receipt: FileReceipt
}

/** Streams the file at `path` to `to` and resolves once the receiver saved it with a matching hash. */
export async function sendFile(
  peer: Peer,
  to: Uint8Array,
  path: string,
  o: SendFileOptions = {},
): Promise<SentFile> {
  const name = o.name ?? basename(path)
  const { size } = await stat(path)
  const sha256 = await fileSha256(path, o.signal)
  const header = encodeFileHeader({ name, size, sha256 })
  await offer(peer, to, { name, size, sha256: toHex(sha256) }, o)
  // The offer went by relay and started a P2P handshake: give it a moment, so the bulk rides P2P.
  await untilP2pWarm(peer, to, o.p2pWaitMs ?? 3_000)
  if (o.idleTimeoutMs !== undefined) streamEndpoint(peer, { idleTimeoutMs: o.idleTimeoutMs })
  const began = performance.now()
  const out = openStream(
    peer,
    to,
    withHeader(header, path),
    o.signal === undefined ? {} : { signal: o.signal },
  )
  const ticker =
    o.onProgress === undefined
      ? undefined
      : setInterval(() => o.onProgress?.(Math.max(0, out.stats.bytes - header.length), size), 100)
  try {
    await out.done
  } finally {
    if (ticker !== undefined) clearInterval(ticker)
  }
  o.onProgress?.(size, size)
  const receiptTimeoutMs = o.receiptTimeoutMs ?? 30_000
  let receipt: FileReceipt
  try {
    receipt = (await rpcEndpoint(peer).call(
      to,
      { streamId: out.streamId },
      {
        method: FILE_RECEIPT_METHOD,
        timeoutMs: receiptTimeoutMs,
        ...(o.signal !== undefined && { signal: o.signal }),
      },
    )) as FileReceipt
  } catch (err) {
    if (!isMeshError(err) || err.code !== 'MESH_ERR_RPC_TIMEOUT') throw err
    throw new MeshError(
      'MESH_ERR_RPC_TIMEOUT',
      `the receiver read the whole file but did not confirm it within ${receiptTimeoutMs} ms ` +
        '(it may have saved it, or stopped before)',
      { details: { ...err.details, streamId: out.streamId }, cause: err },
    )
  }
  if (receipt?.sha256 !== toHex(sha256) || receipt.size !== size) {
    throw new MeshError('MESH_ERR_STREAM_PROTOCOL', "the receiver's receipt does not match the file sent", {
      details: { reason: 'receipt', streamId: out.streamId },
    })
  }
  return { name, size, sha256: toHex(sha256), streamId: out.streamId, ms: performance.now() - began, receipt }
}

/**
 * Offers the file to the receiver (`FILE_OFFER_METHOD`): resolves once it accepted. A peer that runs no
 * receiver, or does not answer within `offerTimeoutMs`, is `MESH_ERR_PEER_UNREACHABLE`; a refusal (a
 * name it will not take) keeps the receiver's code.
 */
async function offer(
  peer: Peer,
  to: Uint8Array,
  file: { name: string; size: number; sha256: string },
  o: SendFileOptions,
): Promise<void> {
  const timeoutMs = o.offerTimeoutMs ?? 15_000
  try {
    await rpcEndpoint(peer).call(to, file, {
      method: FILE_OFFER_METHOD,
      timeoutMs,
      ...(o.signal !== undefined && { signal: o.signal }),
    })
  } catch (err) {
    if (!isMeshError(err)) throw err
    if (err.code === 'MESH_ERR_RPC_TIMEOUT' || err.code === 'MESH_ERR_RPC_NO_HANDLER') {
      const why =
        err.code === 'MESH_ERR_RPC_TIMEOUT'
          ? `did not answer the offer within ${timeoutMs} ms`
          : 'takes no files'
      throw new MeshError(
        'MESH_ERR_PEER_UNREACHABLE',
        `the receiver ${why} (files go to a running daemon or \`agentmesh listen\`)`,
        { details: { to: toHex(to), reason: err.code }, cause: err },
      )
    }
    throw err
  }
}

/** Resolves once a P2P session to `to` is warm, after `waitMs`, or at once for a relay-only peer. */
async function untilP2pWarm(peer: Peer, to: Uint8Array, waitMs: number): Promise<void> {
  if (peer.p2pCounters === undefined || peer.p2pWarm(to) || waitMs <= 0) return
  const hex = toHex(to)
  await new Promise<void>((resolve) => {
    const timer = setTimeout(done, waitMs)
    function onP2p(event: string, pk: Uint8Array): void {
      if (event === 'session' && toHex(pk) === hex) done()
    }
    function done(): void {
      clearTimeout(timer)
      peer.off('p2p', onP2p)
      resolve()
    }
    peer.on('p2p', onP2p)
  })
}

/** The SHA-256 of the file at `path`. */
export async function fileSha256(path: string, signal?: AbortSignal): Promise<Uint8Array> {
  const hash = createHash('sha256')
  for await (const piece of createReadStream(path, signal === undefined ? {} : { signal })) {
    hash.update(piece as Buffer)
  }
  return hash.digest()
}

async function* withHeader(header: Uint8Array, path: string): AsyncGenerator<Uint8Array> {
  yield header
  for await (const piece of createReadStream(path)) yield piece as Buffer
}
