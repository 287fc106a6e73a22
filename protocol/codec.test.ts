import { decode as otherDecode, encode as otherEncode } from '@msgpack/msgpack'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { plain } from '../test/support/arbitrary.js'
import { decode, encode, MAX_DEPTH } from './codec.js'
import { MeshError } from './errors.js'

function expectMalformed(bytes: Uint8Array): MeshError {
  try {
    decode(bytes)
  } catch (err) {
    expect(err).toBeInstanceOf(MeshError)
    expect((err as MeshError).code).toBe('MESH_ERR_MALFORMED_FRAME')
    return err as MeshError
  }
  throw new Error('decode accepted malformed input')
}

describe('codec', () => {
  it('drops undefined properties instead of encoding them', () => {
    const bytes = encode({ a: 1, b: undefined })
    expect(otherDecode(bytes)).toEqual({ a: 1 })
  })

  it('writes plain msgpack maps and bins that another msgpack library reads', () => {
    const value = { t: 'x', n: 300, neg: -5, f: 1.5, b: new Uint8Array([1, 2, 3]), l: [true, null, 'é'] }
    expect(plain(otherDecode(encode(value)))).toEqual(plain(value))
  })

  it('reads what another msgpack library writes, including integers written as float64', () => {
    const bytes = otherEncode({ n: 5, nested: { list: [1, 'two'] } })
    expect(decode(bytes)).toEqual({ n: 5, nested: { list: [1, 'two'] } })
    // {n: 5.0} with 5 written as a float64 (0xcb): still the integer 5.
    const float = new Uint8Array([0x81, 0xa1, 0x6e, 0xcb, 0x40, 0x14, 0, 0, 0, 0, 0, 0])
    expect(decode(float)).toEqual({ n: 5 })
    expect(Number.isInteger((decode(float) as { n: number }).n)).toBe(true)
  })

  it('refuses every extension type, including msgpackr built-ins', () => {
    expectMalformed(encodeWithExt(0xd6, -1, [0, 0, 0, 1])) // timestamp
    expectMalformed(new Uint8Array([0xd4, 0x05, 0x01])) // fixext 1, unknown type
    expectMalformed(new Uint8Array([0xc7, 0x01, 0x42, 0x00])) // ext 8 with msgpackr's bigint tag
    expect(expectMalformed(new Uint8Array([0xd4, 0x05, 0x01])).details).toMatchObject({
      reason: expect.stringContaining('extension'),
    })
  })

  it('refuses trailing bytes, truncation, non-string map keys and the reserved byte', () => {
    expectMalformed(new Uint8Array([0x01, 0x02]))
    expectMalformed(new Uint8Array([0xa5, 0x61]))
    expectMalformed(new Uint8Array([0x81, 0x01, 0x02]))
    expectMalformed(new Uint8Array([0xc1]))
    expectMalformed(new Uint8Array([]))
  })

  it('bounds nesting depth and lying container counts without hanging', () => {
    expectMalformed(new Uint8Array(100_000).fill(0x91))
    const ok = new Uint8Array(MAX_DEPTH + 1).fill(0x91)
    ok[MAX_DEPTH] = 0xc0
    expect(() => decode(ok)).not.toThrow()
    expectMalformed(new Uint8Array([0xdd, 0xff, 0xff, 0xff, 0xff])) // array32 claiming 4 G items
    expectMalformed(new Uint8Array([0xdf, 0xff, 0xff, 0xff, 0xff, 0xa0])) // map32 likewise
    expectMalformed(new Uint8Array([0xc6, 0xff, 0xff, 0xff, 0xff, 0x00])) // bin32 longer than input
  })

  it('round-trips JSON-like values with bins', () => {
    const value = fc.letrec((tie) => ({
      node: fc.oneof(
        { depthSize: 'small' },
        fc.string(),
        fc.integer(),
        fc.double({ noNaN: true, noDefaultInfinity: true }).map((d) => (Object.is(d, -0) ? 0 : d)), // -0 is written as the integer 0
        fc.boolean(),
        fc.constant(null),
        fc.uint8Array({ maxLength: 32 }),
        fc.array(tie('node'), { maxLength: 4 }),
        fc.dictionary(
          fc.string({ maxLength: 8 }).filter((k) => k !== '__proto__'),
          tie('node'),
          { maxKeys: 4 },
        ),
      ),
    })).node
    fc.assert(
      fc.property(value, (v) => {
        expect(plain(decode(encode(v)))).toEqual(plain(v))
      }),
      { numRuns: 300 },
    )
  })

  it('gives a MeshError for any random or mutated input, never another exception', () => {
    const seeds = [
      encode({ t: 'send', reqId: 1, envelope: new Uint8Array(40) }),
      encode([1, 'a', { b: [null] }]),
    ]
    const mutated = fc
      .tuple(
        fc.constantFrom(...seeds),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }),
        fc.nat(),
      )
      .map(([seed, flips, cut]) => {
        const out = seed.slice(0, seed.length - (cut % 4))
        for (const [at, byte] of flips) out[at % out.length] = byte
        return out
      })
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 200 }), mutated), (bytes) => {
        try {
          decode(bytes)
        } catch (err) {
          expect(err).toBeInstanceOf(MeshError)
        }
      }),
      { numRuns: 3000 },
    )
  })
})

function encodeWithExt(tag: number, type: number, data: number[]): Uint8Array {
  return new Uint8Array([tag, type & 0xff, ...data])
}
