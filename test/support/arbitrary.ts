/**
 * fast-check arbitraries generated from our schemas' `spec`, so every frame type gets round-trip and
 * fuzz coverage without a hand-written generator per frame.
 */
import fc from 'fast-check'
import type { Schema } from '../../protocol/schema.js'

/** An arbitrary of values that `schema` accepts. */
export function arbitraryFor(schema: Schema<unknown>): fc.Arbitrary<unknown> {
  const spec = schema.spec
  switch (spec.kind) {
    case 'str':
      if (spec.pattern !== undefined) {
        const pattern = spec.pattern
        return fc
          .stringMatching(pattern)
          .filter((s) => s.length >= spec.min && s.length <= spec.max && pattern.test(s))
      }
      return fc
        .string({ minLength: spec.min, maxLength: Math.min(spec.max, 40), unit: 'grapheme' })
        .filter((s) => s.length >= spec.min && s.length <= spec.max)
    case 'bin':
      return fc.uint8Array({ minLength: spec.min, maxLength: Math.min(spec.max, Math.max(spec.min, 64)) })
    case 'uint':
      return fc.oneof(
        fc.integer({ min: 0, max: Math.min(spec.max, 300) }),
        fc.integer({ min: 0, max: Math.min(spec.max, Number.MAX_SAFE_INTEGER) }),
      )
    case 'bool':
      return fc.boolean()
    case 'oneOf':
      return fc.constantFrom(...spec.values)
    case 'literal':
      return fc.constant(spec.value)
    case 'arr':
      return fc.array(arbitraryFor(spec.item), {
        minLength: spec.min,
        maxLength: Math.min(spec.max, Math.max(spec.min, 3)),
      })
    case 'tuple':
      return fc.tuple(...spec.items.map((s) => arbitraryFor(s)))
    case 'record': {
      const key =
        spec.key === undefined ? fc.string({ minLength: 1, maxLength: 12 }) : fc.stringMatching(spec.key)
      return fc.dictionary(
        key.filter((k) => k !== '__proto__'),
        arbitraryFor(spec.value),
        { maxKeys: Math.min(spec.maxKeys, 3) },
      )
    }
    case 'opt':
      return fc.option(arbitraryFor(spec.inner), { nil: undefined })
    case 'nullable':
      return fc.option(arbitraryFor(spec.inner), { nil: null })
    case 'any':
      return fc.oneof(
        fc.string({ maxLength: 20 }),
        fc.integer(),
        fc.boolean(),
        fc.constant(null),
        fc.uint8Array({ maxLength: 16 }),
      )
    case 'either':
      return fc.oneof(arbitraryFor(spec.a), arbitraryFor(spec.b))
    case 'obj': {
      const entries = Object.entries(spec.shape)
      return fc.record(Object.fromEntries(entries.map(([k, s]) => [k, arbitraryFor(s)]))).map((o) => {
        // Optional fields generated as undefined are absent on the wire.
        const out: Record<string, unknown> = {}
        for (const [k, v] of Object.entries(o)) if (v !== undefined) out[k] = v
        return out
      })
    }
  }
}

/** Deep copy turning every Uint8Array subclass (Node Buffers from the decoder) into a plain Uint8Array. */
export function plain(value: unknown): unknown {
  if (value instanceof Uint8Array) return new Uint8Array(value)
  if (Array.isArray(value)) return value.map(plain)
  if (typeof value === 'object' && value !== null) {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plain(v)]))
  }
  return value
}
