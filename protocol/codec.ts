/**
 * The one msgpack codec. Only this file imports msgpackr, with its options pinned, so every frame on every
 * transport is encoded the same way:
 * - `useRecords: false`: plain msgpack maps that any other msgpack library reads;
 * - `undefined` properties are dropped (never encoded as nil or as an extension);
 * - 64-bit integers decode as numbers when safe, else as bigint, which schemas then refuse;
 * - no extension type is accepted on decode: PROTOCOL.md lists none, so msgpackr's built-in ones
 *   (timestamps, records, errors, bigints) are refused rather than turned into objects.
 *
 * Decoding runs a bounded structural check first (nesting depth, map keys are strings, no extension types,
 * no bytes after the value) so malformed input always gives a `MeshError`, never another exception.
 * Decoded `bin` values are views into the input bytes: copy them before the input buffer is reused.
 */
import { Packr } from 'msgpackr'
import { MeshError } from './errors.js'

// `skipValues` and `int64AsType: 'auto'` are implemented by msgpackr 2 but missing from its type definitions.
const options = {
  useRecords: false,
  mapsAsObjects: true,
  variableMapSize: true,
  skipValues: [undefined],
  int64AsType: 'auto',
}
const packr = new Packr(options as ConstructorParameters<typeof Packr>[0])
// The same options without `skipValues`, which costs a for-in walk and a lookup per property. For values
// that hold no `undefined` property it writes the same bytes.
const { skipValues: _, ...definedOptions } = options
const definedPackr = new Packr(definedOptions as ConstructorParameters<typeof Packr>[0])

/** The deepest nesting of arrays and maps a decoded value may have. */
export const MAX_DEPTH = 32

/** Encodes a value as one msgpack value. */
export function encode(value: unknown): Uint8Array {
  return packr.pack(value)
}

/**
 * `encode` for a value with no `undefined` property at any depth, such as one a schema returned (schemas
 * leave absent fields out): the same bytes, faster. An `undefined` property here would be written as an
 * extension type, which `decode` refuses.
 */
export function encodeDefined(value: unknown): Uint8Array {
  return definedPackr.pack(value)
}

/** Decodes exactly one msgpack value, or throws `MESH_ERR_MALFORMED_FRAME` with a reason. */
export function decode(bytes: Uint8Array): unknown {
  if (!(bytes instanceof Uint8Array)) throw malformed('input is not bytes')
  if (bytes.length === 0) throw malformed('empty input')
  const end = checkStructure(bytes, 0, 0)
  if (end !== bytes.length) throw malformed(`${bytes.length - end} bytes after the value`)
  try {
    return packr.unpack(bytes)
  } catch (cause) {
    throw new MeshError('MESH_ERR_MALFORMED_FRAME', `undecodable msgpack: ${String(cause)}`, { cause })
  }
}

function malformed(reason: string): MeshError {
  return new MeshError('MESH_ERR_MALFORMED_FRAME', `malformed msgpack: ${reason}`, { details: { reason } })
}

/** Walks one value starting at `pos`; returns the offset after it. Throws on anything we do not accept. */
function checkStructure(b: Uint8Array, pos: number, depth: number): number {
  if (pos >= b.length) throw malformed('truncated')
  const tag = b[pos]!
  if (tag <= 0x7f || tag >= 0xe0) return pos + 1 // positive / negative fixint
  if (tag >= 0xa0 && tag <= 0xbf) return need(b, pos + 1, tag & 0x1f)
  if (tag >= 0x80 && tag <= 0x8f) return checkItems(b, pos + 1, (tag & 0x0f) * 2, depth, true)
  if (tag >= 0x90 && tag <= 0x9f) return checkItems(b, pos + 1, tag & 0x0f, depth, false)
  switch (tag) {
    case 0xc0: // nil
    case 0xc2: // false
    case 0xc3: // true
      return pos + 1
    case 0xcc:
    case 0xd0:
      return need(b, pos + 1, 1)
    case 0xcd:
    case 0xd1:
      return need(b, pos + 1, 2)
    case 0xca:
    case 0xce:
    case 0xd2:
      return need(b, pos + 1, 4)
    case 0xcb:
    case 0xcf:
    case 0xd3:
      return need(b, pos + 1, 8)
    case 0xc4: // bin 8
    case 0xd9: // str 8
      return need(b, pos + 2, readLen(b, pos + 1, 1))
    case 0xc5:
    case 0xda:
      return need(b, pos + 3, readLen(b, pos + 1, 2))
    case 0xc6:
    case 0xdb:
      return need(b, pos + 5, readLen(b, pos + 1, 4))
    case 0xdc:
      return checkItems(b, pos + 3, readLen(b, pos + 1, 2), depth, false)
    case 0xdd:
      return checkItems(b, pos + 5, readLen(b, pos + 1, 4), depth, false)
    case 0xde:
      return checkItems(b, pos + 3, readLen(b, pos + 1, 2) * 2, depth, true)
    case 0xdf:
      return checkItems(b, pos + 5, readLen(b, pos + 1, 4) * 2, depth, true)
    case 0xc1:
      throw malformed('reserved byte 0xc1')
    default: // 0xc7–0xc9, 0xd4–0xd8: extension types
      throw malformed(`extension type 0x${tag.toString(16)} is not part of the protocol`)
  }
}

function checkItems(b: Uint8Array, pos: number, count: number, depth: number, isMap: boolean): number {
  if (depth >= MAX_DEPTH) throw malformed(`nested deeper than ${MAX_DEPTH}`)
  // Every item takes at least one byte: a count larger than what is left is a lie, not a big value.
  if (count > b.length - pos) throw malformed('container count exceeds input')
  for (let i = 0; i < count; i++) {
    if (isMap && i % 2 === 0 && !isStringTag(b[pos])) throw malformed('map key is not a string')
    pos = checkStructure(b, pos, depth + 1)
  }
  return pos
}

function isStringTag(tag: number | undefined): boolean {
  return tag !== undefined && ((tag >= 0xa0 && tag <= 0xbf) || tag === 0xd9 || tag === 0xda || tag === 0xdb)
}

function readLen(b: Uint8Array, pos: number, size: 1 | 2 | 4): number {
  if (pos + size > b.length) throw malformed('truncated length')
  if (size === 1) return b[pos]!
  if (size === 2) return (b[pos]! << 8) | b[pos + 1]!
  return ((b[pos]! << 24) >>> 0) + ((b[pos + 1]! << 16) | (b[pos + 2]! << 8) | b[pos + 3]!)
}

function need(b: Uint8Array, pos: number, len: number): number {
  const end = pos + len
  if (end > b.length) throw malformed('truncated')
  return end
}
