/**
 * What a `stream` envelope carries (docs/PROTOCOL.md §6.1), shared by the sending and the receiving end:
 * chunk sizes, the credit a sender starts with, the `stream_window` and `stream_abort` payloads, and the
 * stream errors.
 */
import { MeshError, type MeshErrorCode } from '../protocol/errors.js'
import { MAX_PAYLOAD_BYTES } from '../protocol/limits.js'

/** Bytes of data in one chunk: a `bin` payload (5 bytes of header) stays within the 60 KiB payload limit. */
export const STREAM_CHUNK_BYTES = MAX_PAYLOAD_BYTES - 64
/** Chunks a sender may send before any `stream_window`: seq 0 to 7. */
export const STREAM_INITIAL_CREDIT = 8
/** The receiver's window unless told otherwise: 64 chunks (about 3.7 MiB) unread at most. */
export const STREAM_DEFAULT_WINDOW = 64
/** How long either end waits without progress (a chunk, or credit) before `MESH_ERR_STREAM_TIMEOUT`. */
export const STREAM_IDLE_TIMEOUT_MS = 120_000

/**
 * Credit from the receiver, sealed as the payload of a `stream` envelope back to the sender (meta
 * `{streamId, seq: upToSeq}`): the sender may send every seq up to `upToSeq`; `read` counts the chunks
 * the reader took in order (`read = fin + 1` means it has the whole stream); `cancel` ends it.
 */
export interface StreamWindow {
  t: 'stream_window'
  streamId: string
  upToSeq: number
  read: number
  cancel?: { code: string; message: string }
}

/** The sender gave up: the payload of its last chunk (meta `fin: true`) instead of bytes. */
export interface StreamAbort {
  t: 'stream_abort'
  code: string
  message: string
}

export function isStreamWindow(v: unknown): v is StreamWindow {
  if (!isObject(v) || v['t'] !== 'stream_window') return false
  return typeof v['streamId'] === 'string' && isUint(v['upToSeq']) && isUint(v['read'])
}

export function isStreamAbort(v: unknown): v is StreamAbort {
  return isObject(v) && v['t'] === 'stream_abort' && typeof v['code'] === 'string'
}

/** The other end ended the stream early (`details.by`: `sender` or `receiver`; `details.reason`: its code). */
export class StreamAbortedError extends MeshError {
  override readonly name = 'StreamAbortedError'
  constructor(streamId: string, by: 'sender' | 'receiver', reason: { code: string; message: string }) {
    super('MESH_ERR_STREAM_ABORTED', `the ${by} ended stream ${streamId}: ${reason.message}`, {
      details: { streamId, by, reason: reason.code },
    })
  }
}

/** A stream error of this end (`MESH_ERR_STREAM_PROTOCOL`, `MESH_ERR_STREAM_TIMEOUT`). */
export function streamError(code: MeshErrorCode, streamId: string, message: string): MeshError {
  return new MeshError(code, message, { details: { streamId } })
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !(v instanceof Uint8Array) && !Array.isArray(v)
}

function isUint(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0
}
