/**
 * The receiving end of `agentmesh file send` (framing in file-header.ts): every stream that comes to a
 * `Peer` is read as a file and saved under the home, at `<home>/files/<mesh>/<from>/<name>`, where
 * `<from>` is the sender's display name when the mesh vouches for one that is a safe folder name, else
 * the first 16 hex characters of its key.
 *
 * - The bytes go to a temp file (`files/<mesh>/.partial/<random>.part`, 0600) hashed as they come;
 *   only when the size and the SHA-256 match the header is it linked to its name, which never replaces
 *   a file: a taken name gets `-1`, `-2` … before its extension. A mismatch, a refused name or an
 *   aborted stream leaves no file.
 * - The sender offers the file first (`FILE_OFFER_METHOD`, rpc: a refused name is refused there) and
 *   asks for the verdict afterwards (`FILE_RECEIPT_METHOD`): the saved name, or the error's code.
 * - A temp file a crash left behind is deleted by the next receiver of the home once it is 10 min old.
 * - This claims every stream of the peer: the stream layer carries no kind, and a stream that does not
 *   start with the file magic is cancelled (`MESH_ERR_STREAM_PROTOCOL`, `details.reason: 'not_a_file'`).
 */
import { createHash, randomBytes } from 'node:crypto'
import { link, mkdir, open, readdir, stat, unlink, type FileHandle } from 'node:fs/promises'
import { extname, join } from 'node:path'
import { toHex } from '../../protocol/encoding.js'
import { isMeshError, MeshError } from '../../protocol/errors.js'
import type { Peer } from '../peer.js'
import { rpcEndpoint, type RpcContext } from '../rpc.js'
import { onStream, type IncomingStream } from '../stream.js'
import {
  badName,
  FILE_OFFER_METHOD,
  FILE_RECEIPT_METHOD,
  FileHeaderReader,
  fileNameProblem,
  type FileHeader,
  type FileReceipt,
} from './file-header.js'
import { errnoCode } from './home.js'

/** What the receiver reports, for a progress display or a log. */
export type FileEvent =
  | { kind: 'start'; transfer: FileTransferInfo }
  | { kind: 'progress'; transfer: FileTransferInfo; bytes: number }
  | { kind: 'saved'; transfer: FileTransferInfo; path: string; receipt: FileReceipt; ms: number }
  | { kind: 'failed'; transfer: FileTransferInfo | undefined; from: string; error: MeshError }

/** One incoming file, as its header and sender describe it. */
export interface FileTransferInfo {
  streamId: string
  /** The sender's key (hex). */
  from: string
  /** The sender's display name, when the mesh vouches for one. */
  fromName: string | undefined
  name: string
  size: number
  /** Hex, as the header says. */
  sha256: string
}

export interface ReceiveFilesOptions {
  /** The home the files go under (`<home>/files/<mesh>/…`). */
  home: string
  onEvent?: (event: FileEvent) => void
}

/** Verdicts kept for the sender's receipt call: enough for stragglers, bounded for a long-lived peer. */
const KEPT_VERDICTS = 200

type Verdict = { ok: FileReceipt } | { error: MeshError }

/** Saves every file streamed to `peer` (see the module comment); returns a function that stops it. */
export function receiveFiles(peer: Peer, o: ReceiveFilesOptions): () => void {
  const receiver = new FileReceiver(peer, o)
  // What a crash (kill -9) mid-transfer left behind; never a live transfer's file (see sweepStaleParts).
  void sweepStaleParts(partsDir(o.home, peer.mesh), Date.now()).catch(() => undefined)
  const stopStreams = onStream(peer, (stream) => receiver.take(stream))
  const rpc = rpcEndpoint(peer)
  const stopOffers = rpc.handle(FILE_OFFER_METHOD, (params) => offered(params))
  const stopReceipts = rpc.handle(FILE_RECEIPT_METHOD, (params, ctx) => receiver.receipt(params, ctx))
  return () => {
    stopStreams()
    stopOffers()
    stopReceipts()
  }
}

/** The answer to a file offer: a name this receiver would save under, else its refusal. */
function offered(params: unknown): { accept: true } {
  const name = (params as { name?: unknown } | null)?.name
  if (typeof name !== 'string') {
    throw new MeshError('MESH_ERR_MALFORMED_FRAME', 'a file offer names its file', {
      details: { path: 'name' },
    })
  }
  const problem = fileNameProblem(name)
  if (problem !== undefined) throw badName(name, problem)
  return { accept: true }
}

/** The folder files from `from` go to: its display name when that is a safe name, else its key prefix. */
export function senderFolder(home: string, mesh: string, from: string, fromName: string | undefined): string {
  const label =
    fromName !== undefined && fileNameProblem(fromName) === undefined && !fromName.startsWith('.')
      ? fromName
      : from.slice(0, 16)
  return join(home, 'files', mesh, label)
}

class FileReceiver {
  readonly #peer: Peer
  readonly #o: ReceiveFilesOptions
  readonly #verdicts = new Map<string, Verdict>()
  readonly #waiting = new Map<string, Set<() => void>>()

  constructor(peer: Peer, o: ReceiveFilesOptions) {
    this.#peer = peer
    this.#o = o
  }

  async take(stream: IncomingStream): Promise<void> {
    const from = toHex(stream.from)
    const key = `${from}:${stream.streamId}`
    let info: FileTransferInfo | undefined
    try {
      const saved = await this.#save(stream, from, (i) => {
        info = i
        this.#emit({ kind: 'start', transfer: i })
      })
      this.#settle(key, { ok: saved.receipt })
      this.#emit({
        kind: 'saved',
        transfer: saved.info,
        path: saved.path,
        receipt: saved.receipt,
        ms: saved.ms,
      })
    } catch (err) {
      const error = asMeshError(err)
      // Tell the sender why, unless it is the one that ended the stream.
      if (!stream.ended) stream.cancel({ code: error.code, message: error.message })
      this.#settle(key, { error })
      this.#emit({ kind: 'failed', transfer: info, from, error })
    }
  }

  /** The rpc: waits for the verdict of the caller's stream `streamId`. */
  async receipt(params: unknown, ctx: RpcContext): Promise<FileReceipt> {
    const streamId = (params as { streamId?: unknown } | null)?.streamId
    if (typeof streamId !== 'string') {
      throw new MeshError('MESH_ERR_MALFORMED_FRAME', 'a file receipt names its streamId', {
        details: { path: 'streamId' },
      })
    }
    // Only the sender of a stream may ask about it: the key is its own.
    const key = `${toHex(ctx.from)}:${streamId}`
    for (;;) {
      const verdict = this.#verdicts.get(key)
      if (verdict !== undefined) {
        if ('ok' in verdict) return verdict.ok
        throw verdict.error
      }
      if (ctx.signal.aborted) {
        throw new MeshError('MESH_ERR_STREAM_ABORTED', `no file stream ${streamId} from this sender`, {
          details: { streamId },
        })
      }
      let waiters = this.#waiting.get(key)
      if (waiters === undefined) this.#waiting.set(key, (waiters = new Set()))
      const those = waiters
      await new Promise<void>((resolve) => {
        const wake = (): void => {
          those.delete(wake)
          if (those.size === 0 && this.#waiting.get(key) === those) this.#waiting.delete(key)
          ctx.signal.removeEventListener('abort', wake)
          resolve()
        }
        those.add(wake)
        ctx.signal.addEventListener('abort', wake, { once: true })
      })
    }
  }

  async #save(
    stream: IncomingStream,
    from: string,
    started: (info: FileTransferInfo) => void,
  ): Promise<{ info: FileTransferInfo; path: string; receipt: FileReceipt; ms: number }> {
    const began = performance.now()
    const reader = new FileHeaderReader()
    const hash = createHash('sha256')
    let header: FileHeader | undefined
    let info: FileTransferInfo | undefined
    let file: FileHandle | undefined
    let tmp: string | undefined
    let dir: string | undefined
    let bytes = 0
    try {
      for await (const chunk of stream) {
        try {
          let data = chunk
          if (header === undefined) {
            const read = reader.push(chunk)
            if (read === undefined) continue
            header = read.header
            data = read.rest
            const fromName = await this.#nameOf(stream.from)
            info = {
              streamId: stream.streamId,
              from,
              fromName,
              name: header.name,
              size: header.size,
              sha256: toHex(header.sha256),
            }
            dir = senderFolder(this.#o.home, this.#peer.mesh, from, fromName)
            await mkdir(dir, { recursive: true, mode: 0o700 })
            const parts = partsDir(this.#o.home, this.#peer.mesh)
            await mkdir(parts, { recursive: true, mode: 0o700 })
            // A name of our own: the streamId is the sender's text, not a safe path component.
            tmp = join(parts, `${randomBytes(16).toString('hex')}.part`)
            file = await open(tmp, 'wx', 0o600)
            started(info)
          }
          if (data.length === 0) continue
          if (bytes + data.length > header.size) {
            throw fileError('size', `more bytes than the ${header.size} the header announced`)
          }
          hash.update(data)
          await file!.write(data)
          bytes += data.length
          this.#emit({ kind: 'progress', transfer: info!, bytes })
        } catch (err) {
          // Cancelled with its own reason before the loop's exit cancels it as "cancelled by the reader".
          const error = asMeshError(err)
          stream.cancel({ code: error.code, message: error.message })
          throw error
        }
      }
      if (header === undefined || info === undefined || file === undefined || tmp === undefined) {
        throw fileError('header', 'the stream ended before its file header')
      }
      if (bytes !== header.size) {
        throw fileError('size', `the stream ended after ${bytes} of ${header.size} bytes`)
      }
      const sha256 = hash.digest()
      if (!sha256.equals(header.sha256)) {
        throw fileError(
          'sha256',
          `the SHA-256 of the bytes received (${sha256.toString('hex')}) is not the header's (${info.sha256})`,
        )
      }
      await file.sync()
      await file.close()
      file = undefined
      const path = await linkFree(tmp, dir!, header.name)
      await unlink(tmp)
      tmp = undefined
      const receipt: FileReceipt = {
        savedAs: path.slice(dir!.length + 1),
        size: bytes,
        sha256: info.sha256,
        via: { ...stream.stats.via },
      }
      return { info, path, receipt, ms: performance.now() - began }
    } finally {
      await file?.close().catch(() => undefined)
      if (tmp !== undefined) await unlink(tmp).catch(() => undefined)
    }
  }

  /** The sender's display name, as the mesh vouches for it (a lookup that fails gives none). */
  async #nameOf(pk: Uint8Array): Promise<string | undefined> {
    const hex = toHex(pk)
    try {
      const peers = await this.#peer.listPeers({
        includeDaemons: true,
        includeOffline: true,
        signal: AbortSignal.timeout(5_000),
      })
      return peers.find((p) => toHex(p.pk) === hex)?.displayName
    } catch {
      return undefined
    }
  }

  #settle(key: string, verdict: Verdict): void {
    this.#verdicts.set(key, verdict)
    if (this.#verdicts.size > KEPT_VERDICTS) this.#verdicts.delete(this.#verdicts.keys().next().value!)
    for (const wake of this.#waiting.get(key) ?? []) wake()
    this.#waiting.delete(key)
  }

  #emit(event: FileEvent): void {
    try {
      this.#o.onEvent?.(event)
    } catch {
      // A display that throws must not fail the transfer.
    }
  }
}

/** A temp file untouched this long belongs to no live transfer (their idle timeout is 2 min). */
export const STALE_PART_MS = 10 * 60_000

/**
 * Where files being received are written (`<home>/files/<mesh>/.partial/`), beside the sender folders
 * (on the same file system, so the finished file is linked, not copied; no sender folder starts with a
 * dot, so none is this one).
 */
export function partsDir(home: string, mesh: string): string {
  return join(home, 'files', mesh, '.partial')
}

/**
 * Deletes the temp files in `dir` (a `partsDir`) that were not written for `STALE_PART_MS`: left by a
 * receiver that died mid-transfer. Returns how many it deleted.
 */
export async function sweepStaleParts(dir: string, now: number): Promise<number> {
  let names: string[]
  try {
    names = await readdir(dir)
  } catch {
    return 0
  }
  let deleted = 0
  for (const name of names) {
    if (!name.endsWith('.part')) continue
    const path = join(dir, name)
    const info = await stat(path).catch(() => undefined)
    if (info === undefined || now - info.mtimeMs < STALE_PART_MS) continue
    await unlink(path).then(
      () => deleted++,
      () => undefined,
    )
  }
  return deleted
}

/**
 * Links `tmp` to `name` in `dir`, or to `name-1`, `name-2` … (before the extension) when taken: `link`
 * never replaces an existing file, so two transfers of one name cannot overwrite each other.
 */
async function linkFree(tmp: string, dir: string, name: string): Promise<string> {
  const ext = extname(name)
  const stem = ext === '' || ext === name ? name : name.slice(0, -ext.length)
  const suffix = ext === name ? '' : ext
  for (let n = 0; ; n++) {
    const candidate = join(dir, n === 0 ? name : `${stem}-${n}${suffix}`)
    try {
      await link(tmp, candidate)
      return candidate
    } catch (err) {
      if (errnoCode(err) !== 'EEXIST' || n >= 10_000) throw err
    }
  }
}

function fileError(reason: string, message: string): MeshError {
  return new MeshError('MESH_ERR_STREAM_PROTOCOL', message, { details: { reason } })
}

function asMeshError(err: unknown): MeshError {
  if (isMeshError(err)) return err
  const code = errnoCode(err)
  const message = err instanceof Error ? err.message : String(err)
  // A disk that is full or a folder we may not write: the sender hears why, the temp file is gone.
  return new MeshError('MESH_ERR_INTERNAL', `could not save the file: ${message}`, {
    details: code === undefined ? {} : { errno: code },
    cause: err,
  })
}

/** A log to write file events to (the daemon's pino logger fits). */
export interface FileEventLog {
  info(fields: object, msg: string): void
  warn(fields: object, msg: string): void
}

/**
 * File events as log lines (metadata only): one when a file starts, at every quarter, when it is saved
 * (with its path and SHA-256) and when it fails (with the code).
 */
export function logFileEvents(log: FileEventLog, fields: object = {}): (event: FileEvent) => void {
  const quarters = new Map<string, number>()
  return (event) => {
    const t = event.transfer
    const about =
      t === undefined
        ? { ...fields, from: event.kind === 'failed' ? event.from : undefined }
        : { ...fields, from: t.from, fromName: t.fromName, file: t.name, size: t.size, streamId: t.streamId }
    switch (event.kind) {
      case 'start':
        quarters.set(t!.streamId, 0)
        return log.info(about, 'file transfer started')
      case 'progress': {
        const quarter = t!.size === 0 ? 4 : Math.floor((event.bytes / t!.size) * 4)
        if (quarter <= (quarters.get(t!.streamId) ?? 0) || quarter >= 4) return
        quarters.set(t!.streamId, quarter)
        return log.info({ ...about, bytes: event.bytes, percent: quarter * 25 }, 'file transfer progress')
      }
      case 'saved':
        quarters.delete(t!.streamId)
        return log.info(
          {
            ...about,
            path: event.path,
            sha256: event.receipt.sha256,
            ms: Math.round(event.ms),
            via: event.receipt.via,
          },
          'file received',
        )
      case 'failed':
        if (t !== undefined) quarters.delete(t.streamId)
        return log.warn(
          { ...about, code: event.error.code, err: event.error.message },
          'file transfer failed',
        )
    }
  }
}
