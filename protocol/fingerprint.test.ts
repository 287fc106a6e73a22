import { encode as otherEncode } from '@msgpack/msgpack'
import { beforeAll, describe, expect, it } from 'vitest'
import { decode, encode } from './codec.js'
import { hash, initCrypto } from './crypto.js'
import { concatBytes, fromHex, toHex, utf8 } from './encoding.js'
import {
  canonicalValue,
  envelopeHash,
  fingerprintHex,
  requestFingerprint,
  type RequestFingerprintInput,
} from './fingerprint.js'

const KEY_HEX = 'ab'.repeat(32)
const base: RequestFingerprintInput = {
  channel: 'dm',
  target: KEY_HEX,
  payload: { text: 'deploy done', tags: ['ci', 'prod'], n: 5 },
  meta: { priority: 'now', mentions: ['bob'], expiresAt: 1_700_000_000_000 },
}

beforeAll(() => initCrypto())

describe('requestFingerprint', () => {
  it('is 32 raw bytes, and fingerprintHex is their lowercase hex', () => {
    const fp = requestFingerprint(base)
    expect(fp).toBeInstanceOf(Uint8Array)
    expect(fp).toHaveLength(32)
    expect(fingerprintHex(base)).toBe(toHex(fp))
  })

  it('matches a fixed golden value (guards the definition against drift)', () => {
    expect(fingerprintHex(base)).toBe('8f5dea3b68e1293deb34458818772c267a16c6fc36ce1c2d7b7d9492b7059ca2')
  })

  it('follows its documented definition, recomputed with another msgpack library', () => {
    // Keys in sorted order. The array's only integer is expiresAt, above 2^32, which the definition
    // writes as float64; the other library writes it so when told to.
    const meta = { expiresAt: 1_700_000_000_000, mentions: ['bob'], priority: 'now' }
    const payloadDigest = hash(otherEncode({ n: 5, tags: ['ci', 'prod'], text: 'deploy done' }))
    const inner = otherEncode(['dm', KEY_HEX, meta, payloadDigest], { forceIntegerToFloat: true })
    const expected = hash(concatBytes(utf8('agentmesh/v1/request-fingerprint\0'), inner))
    expect(toHex(requestFingerprint(base))).toBe(toHex(expected))
  })

  it('writes integers from 2^32 up, millisecond timestamps included, as float64', () => {
    expect(toHex(encode(canonicalValue(1_700_000_000_000)))).toBe('cb4278bcfe56800000')
    expect(toHex(encode(canonicalValue(4_294_967_295)))).toBe('ceffffffff')
    expect(toHex(encode(canonicalValue(5.0)))).toBe('05')
  })

  it('ignores key order in meta and payload, at any depth', () => {
    const reordered: RequestFingerprintInput = {
      channel: 'dm',
      target: KEY_HEX,
      payload: { n: 5, tags: ['ci', 'prod'], text: 'deploy done' },
      meta: { expiresAt: 1_700_000_000_000, mentions: ['bob'], priority: 'now' },
    }
    expect(fingerprintHex(reordered)).toBe(fingerprintHex(base))
    const nested = (a: number, b: number): RequestFingerprintInput => ({
      ...base,
      payload: a < b ? { outer: { x: 1, y: [{ p: 1, q: 2 }] } } : { outer: { y: [{ q: 2, p: 1 }], x: 1 } },
    })
    expect(fingerprintHex(nested(0, 1))).toBe(fingerprintHex(nested(1, 0)))
  })

  it('treats 5 and 5.0 alike, however the number arrived', () => {
    const fromJson = JSON.parse('{"expiresAt": 5.0}') as Record<string, unknown>
    // {expiresAt: 5.0} as msgpack with 5 written as a float64.
    const asFloat = decode(
      new Uint8Array([0x81, 0xa9, ...utf8('expiresAt'), 0xcb, 0x40, 0x14, 0, 0, 0, 0, 0, 0]),
    ) as Record<string, unknown>
    const a = fingerprintHex({ ...base, meta: { expiresAt: 5 } })
    expect(fingerprintHex({ ...base, meta: fromJson })).toBe(a)
    expect(fingerprintHex({ ...base, meta: asFloat })).toBe(a)
    expect(fingerprintHex({ ...base, payload: -0 })).toBe(fingerprintHex({ ...base, payload: 0 }))
  })

  it('treats a missing meta as {}, drops undefined entries, and reads a key as bytes or hex', () => {
    const { meta: _meta, ...noMeta } = base
    expect(fingerprintHex(noMeta)).toBe(fingerprintHex({ ...base, meta: {} }))
    expect(fingerprintHex({ ...base, meta: { ...base.meta, replyTo: undefined } })).toBe(fingerprintHex(base))
    expect(fingerprintHex({ ...base, target: fromHex(KEY_HEX)! })).toBe(fingerprintHex(base))
  })

  it('differs when any field differs', () => {
    const variants: RequestFingerprintInput[] = [
      { ...base, channel: 'rpc' },
      { ...base, target: 'cd'.repeat(32) },
      { ...base, target: '*' },
      { ...base, payload: { ...(base.payload as object), n: 6 } },
      { ...base, payload: 'deploy done' },
      { ...base, payload: utf8('deploy done') },
      { ...base, meta: { ...base.meta, priority: 'low' } },
      { ...base, meta: { ...base.meta, mentions: ['bob', 'carol'] } },
      { ...base, meta: { priority: 'now' } },
    ]
    const seen = new Set([fingerprintHex(base), ...variants.map(fingerprintHex)])
    expect(seen.size).toBe(variants.length + 1)
  })

  it('refuses values the codec cannot carry', () => {
    expect(() => canonicalValue({ at: new Date(0) })).toThrow(TypeError)
    expect(() => canonicalValue(new Map())).toThrow(TypeError)
    expect(canonicalValue([undefined, { b: 1, a: undefined }])).toEqual([null, { b: 1 }])
  })
})

describe('envelopeHash', () => {
  it('is BLAKE2b-256 of the bytes as received', () => {
    expect(toHex(envelopeHash(new Uint8Array()))).toBe(
      '0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8',
    )
    const bytes = utf8('envelope bytes')
    const flipped = bytes.slice()
    flipped[0]! ^= 1
    expect(toHex(envelopeHash(bytes))).not.toBe(toHex(envelopeHash(flipped)))
  })
})
