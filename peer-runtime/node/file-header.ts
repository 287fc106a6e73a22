/**
 * How a file travels on a stream (`agentmesh file send`): the stream's bytes are a header, then the
 * file. The header is `AMF1` (4 bytes), its length (uint32 big-endian, at most 4 KiB), then the msgpack
 * map `{t: 'file', name, size, sha256}` (`sha256`: 32 bytes); exactly `size` bytes of file follow. The
 * receiver checks the name before it writes anything and the SHA-256 before the file gets its name.
 * Before the stream the sender offers the file (`FILE_OFFER_METHOD`, rpc); after it, it asks
 * `FILE_RECEIPT_METHOD` (rpc, `{streamId}`) for the receiver's verdict.
 */
import { decode, encode } from '../../protocol/codec.js'
import { MeshError } from '../../protocol/errors.js'

/** The first bytes of a file stream: a stream that starts otherwise is not a file. */
export const FILE_MAGIC = new Uint8Array([0x41, 0x4d, 0x46, 0x31]) // "AMF1"
/** The most bytes a header's msgpack part may take. */
export const MAX_FILE_HEADER_BYTES = 4096
/** The most UTF-8 bytes of a file name (what most file systems allow). */
export const MAX_FILE_NAME_BYTES = 255
/**
 * The rpc method the sender calls before the stream, with the header's fields (`sha256` as hex): the
 * receiver answers `{accept: true}`, or refuses the name before a byte is sent. A peer that runs no
 * receiver answers `MESH_ERR_RPC_NO_HANDLER` (or nothing), so the sender fails fast instead of stalling.
 */
export const FILE_OFFER_METHOD = 'agentmesh.file.offer'
/** The rpc method the sender calls after the stream: the receiver answers with a `FileReceipt`. */
export const FILE_RECEIPT_METHOD = 'agentmesh.file.receipt'

/** What the header says about the file. */
export interface FileHeader {
  name: string
  size: number
  sha256: Uint8Array
}

/** The receiver's answer to `FILE_RECEIPT_METHOD`: the file is saved, and the hash matched. */
export interface FileReceipt {
  /** The name it was saved under (the sent name, or with `-1`, `-2` … when that was taken). */
  savedAs: string
  size: number
  /** Hex. */
  sha256: string
  /** Chunks by the transport that carried them to the receiver (`p2p`, `relay`). */
  via: Record<string, number>
}

/**
 * Why `name` cannot be a file name here (undefined when it can): a single path component, neither `.`
 * nor `..`, with no `/`, `\`, NUL or other control character, at most 255 bytes of UTF-8.
 */
export function fileNameProblem(name: string): string | undefined {
  if (name.length === 0) return 'the name is empty'
  if (name === '.' || name === '..') return `${JSON.stringify(name)} is not a file name`
  if (name.includes('/') || name.includes('\\')) return 'the name holds a path separator'
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(name)) return 'the name holds a NUL or another control character'
  if (Buffer.byteLength(name, 'utf8') > MAX_FILE_NAME_BYTES) {
    return `the name is longer than ${MAX_FILE_NAME_BYTES} bytes`
  }
  return undefined
}

/** The header's bytes (magic, length, msgpack). Throws on a name `fileNameProblem` refuses. */
export function encodeFileHeader(h: FileHeader): Uint8Array {
  const problem = fileNameProblem(h.name)
  if (problem !== undefined) throw badName(h.name, problem)
  const body = encode({ t: 'file', name: h.name, size: h.size, sha256: h.sha256 })
  const out = new Uint8Array(8 + body.length)
  out.set(FILE_MAGIC, 0)
  new DataView(out.buffer).setUint32(4, body.length)
  out.set(body, 8)
  return out
}

/** The error of a refused file name (`MESH_ERR_STREAM_PROTOCOL`, `details.reason: 'file_name'`). */
export function badName(name: string, problem: string): MeshError {
  return new MeshError('MESH_ERR_STREAM_PROTOCOL', `refused file name ${JSON.stringify(name)}: ${problem}`, {
    details: { reason: 'file_name', name },
  })
}

/**
 * Reads a header off the front of a stream's chunks: `push` each chunk until it returns the header and
 * the bytes after it. Throws `MESH_ERR_STREAM_PROTOCOL` (`details.reason`) on a stream that is no file
 * stream, a malformed header or a refused name.
 */
export class FileHeaderReader {
  #buf = new Uint8Array(0)

  push(chunk: Uint8Array): { header: FileHeader; rest: Uint8Array } | undefined {
    const joined = new Uint8Array(this.#buf.length + chunk.length)
    joined.set(this.#buf, 0)
    joined.set(chunk, this.#buf.length)
    this.#buf = joined
    if (joined.length < 8) return undefined
    if (!FILE_MAGIC.every((b, i) => joined[i] === b)) throw malformed('not_a_file', 'the stream is no file')
    const length = new DataView(joined.buffer, joined.byteOffset).getUint32(4)
    if (length > MAX_FILE_HEADER_BYTES) throw malformed('header', `a file header of ${length} bytes`)
    if (joined.length < 8 + length) return undefined
    let value: unknown
    try {
      value = decode(joined.subarray(8, 8 + length))
    } catch (err) {
      throw malformed('header', 'the file header does not decode', err)
    }
    const header = readHeader(value)
    return { header, rest: joined.subarray(8 + length) }
  }
}

function readHeader(v: unknown): FileHeader {
  if (typeof v !== 'object' || v === null || (v as { t?: unknown }).t !== 'file') {
    throw malformed('header', 'the file header is not a file header')
  }
  const { name, size, sha256 } = v as Record<string, unknown>
  if (typeof name !== 'string') throw malformed('header', 'the file header has no name')
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) {
    throw malformed('header', 'the file header has no valid size')
  }
  if (!(sha256 instanceof Uint8Array) || sha256.length !== 32) {
    throw malformed('header', 'the file header has no SHA-256')
  }
  const problem = fileNameProblem(name)
  if (problem !== undefined) throw badName(name, problem)
  return { name, size, sha256 }
}

function malformed(reason: string, message: string, cause?: unknown): MeshError {
  return new MeshError('MESH_ERR_STREAM_PROTOCOL', message, {
    details: { reason },
    ...(cause !== undefined && { cause }),
  })
}
