import { decode as otherDecode } from '@msgpack/msgpack'
import fc from 'fast-check'
import { beforeAll, describe, expect, it } from 'vitest'
import { arbitraryFor, plain } from '../test/support/arbitrary.js'
import { encode } from './codec.js'
import { initCrypto } from './crypto.js'
import { MeshError } from './errors.js'
import {
  decodeFrame,
  encodeFrame,
  errorFrame,
  FRAME_SCHEMAS,
  FRAME_TYPES,
  REPLY_OF,
  type Frame,
} from './frames.js'
import { MAX_FRAME_BYTES } from './limits.js'
import { thrownCode } from '../test/support/rejection.js'

beforeAll(() => initCrypto())

const DECODE_CODES = new Set([
  'MESH_ERR_MALFORMED_FRAME',
  'MESH_ERR_UNKNOWN_FRAME_TYPE',
  'MESH_ERR_FRAME_TOO_LARGE',
])

describe('frames', () => {
  it.each(FRAME_TYPES)('%s round-trips through encode and decode', (t) => {
    fc.assert(
      fc.property(arbitraryFor(FRAME_SCHEMAS[t]), (body) => {
        const frame = { t, ...(body as object) } as Frame
        const bytes = encodeFrame(frame)
        expect(plain(decodeFrame(bytes))).toEqual(plain(frame))
        // Another msgpack library reads the same frame.
        expect(plain(otherDecode(bytes))).toEqual(plain(frame))
      }),
      { numRuns: 40 },
    )
  })

  it('every reply type named in REPLY_OF exists and echoes reqId', () => {
    for (const reply of Object.values(REPLY_OF)) {
      expect(FRAME_TYPES).toContain(reply)
      expect(Object.keys(FRAME_SCHEMAS[reply].shape)).toContain('reqId')
    }
  })

  it('an unknown type gives MESH_ERR_UNKNOWN_FRAME_TYPE and keeps the reqId for the reply', () => {
    const err = (() => {
      try {
        decodeFrame(encode({ t: 'teleport', reqId: 7 }))
      } catch (e) {
        return e as MeshError
      }
      throw new Error('accepted')
    })()
    expect(err.code).toBe('MESH_ERR_UNKNOWN_FRAME_TYPE')
    expect(err.details).toEqual({ reqId: 7 })
    expect(thrownCode(() => decodeFrame(encode({ reqId: 1 })))).toBe('MESH_ERR_UNKNOWN_FRAME_TYPE')
    expect(thrownCode(() => decodeFrame(encode([1, 2])))).toBe('MESH_ERR_MALFORMED_FRAME')
  })

  it('a schema violation names the field and echoes the reqId', () => {
    try {
      decodeFrame(encode({ t: 'send', reqId: 9, envelope: 'not bytes' }))
      throw new Error('accepted')
    } catch (e) {
      const err = e as MeshError
      expect(err.code).toBe('MESH_ERR_MALFORMED_FRAME')
      expect(err.details).toMatchObject({ reqId: 9, path: 'envelope', t: 'send' })
    }
  })

  it('accepts integer fields written as float64 and refuses non-integers and huge ints', () => {
    // {t:'ok', reqId: 3.0} with 3 written as float64
    const bytes = new Uint8Array([
      0x82,
      0xa1,
      0x74,
      0xa2,
      0x6f,
      0x6b,
      0xa5,
      ...new TextEncoder().encode('reqId'),
      0xcb,
      0x40,
      0x08,
      0,
      0,
      0,
      0,
      0,
      0,
    ])
    expect(decodeFrame(bytes)).toEqual({ t: 'ok', reqId: 3 })
    expect(thrownCode(() => decodeFrame(encode({ t: 'ok', reqId: 3.5 })))).toBe('MESH_ERR_MALFORMED_FRAME')
    expect(thrownCode(() => decodeFrame(encode({ t: 'ok', reqId: 2n ** 63n })))).toBe(
      'MESH_ERR_MALFORMED_FRAME',
    )
  })

  it('drops unknown fields instead of passing them on', () => {
    expect(decodeFrame(encode({ t: 'ping', extra: 'x' }))).toEqual({ t: 'ping' })
  })

  it('refuses a frame over 72 KiB before decoding it', () => {
    const big = encode({ t: 'send', reqId: 1, envelope: new Uint8Array(MAX_FRAME_BYTES) })
    expect(thrownCode(() => decodeFrame(big))).toBe('MESH_ERR_FRAME_TOO_LARGE')
    expect(
      thrownCode(() => encodeFrame({ t: 'send', reqId: 1, envelope: new Uint8Array(MAX_FRAME_BYTES) })),
    ).toBe('MESH_ERR_FRAME_TOO_LARGE')
  })

  it('random and mutated bytes give a MeshError with a decode code, never another exception', () => {
    const valid = [
      encodeFrame({ t: 'send', reqId: 1, envelope: new Uint8Array(64).fill(7) }),
      encodeFrame({ t: 'client_ack', deliveryId: 'd1', status: 'ok' }),
      encodeFrame({
        t: 'p2p_candidate',
        sigId: 's',
        to: new Uint8Array(32),
        candidate: 'candidate:1 1 udp 1 127.0.0.1 5000 typ host',
      }),
    ]
    const mutated = fc
      .tuple(
        fc.constantFrom(...valid),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 5 }),
        fc.nat({ max: 6 }),
      )
      .map(([seed, flips, cut]) => {
        const out = seed.slice(0, Math.max(1, seed.length - cut))
        for (const [at, byte] of flips) out[at % out.length] = byte
        return out
      })
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 300 }), mutated), (bytes) => {
        try {
          decodeFrame(bytes)
        } catch (err) {
          expect(err).toBeInstanceOf(MeshError)
          expect(DECODE_CODES.has((err as MeshError).code)).toBe(true)
        }
      }),
      { numRuns: 5000 },
    )
  })

  it('errorFrame carries the code, its permanence and the reqId', () => {
    const frame = errorFrame(
      new MeshError('MESH_ERR_RATE_LIMITED', 'slow down', { details: { retryAfterMs: 250 } }),
      4,
    )
    expect(decodeFrame(encodeFrame(frame))).toEqual({
      t: 'error',
      reqId: 4,
      code: 'MESH_ERR_RATE_LIMITED',
      message: 'slow down',
      permanent: false,
      details: { retryAfterMs: 250 },
    })
  })
})
