/**
 * A small validator for decoded msgpack values. Every frame, envelope and signed array is checked with
 * one of these before any field is trusted. Objects keep only the fields their schema names (unknown
 * fields from newer peers are dropped, never passed on), optional fields accept a missing key or nil,
 * and integers accept any integral number, however the sender wrote it (int or float64).
 */
import { MeshError, type MeshErrorCode } from './errors.js'

/**
 * A validator that returns a typed value or throws a `SchemaViolation`. `spec` describes it, so tests
 * can generate valid values for every frame from the schemas themselves. `check` names violations by
 * `path` (and paths it builds from it); inside an `obj` that path is relative to the map, which adds its
 * own in front when a violation passes through.
 */
export interface Schema<T> {
  readonly optional?: boolean
  readonly spec: SchemaSpec
  check(value: unknown, path: string): T
}

/** What a schema accepts, as data. */
export type SchemaSpec =
  | { kind: 'str'; min: number; max: number; pattern?: RegExp }
  | { kind: 'bin'; min: number; max: number }
  | { kind: 'uint'; max: number }
  | { kind: 'bool' }
  | { kind: 'oneOf'; values: readonly string[] }
  | { kind: 'literal'; value: string | number | boolean }
  | { kind: 'arr'; item: Schema<unknown>; min: number; max: number }
  | { kind: 'tuple'; items: readonly Schema<unknown>[] }
  | { kind: 'record'; value: Schema<unknown>; maxKeys: number; key?: RegExp }
  | { kind: 'opt'; inner: Schema<unknown> }
  | { kind: 'nullable'; inner: Schema<unknown> }
  | { kind: 'any' }
  | { kind: 'either'; a: Schema<unknown>; b: Schema<unknown> }
  | { kind: 'obj'; shape: Record<string, Schema<unknown>> }

/** The type a schema returns. */
export type Infer<S> = S extends Schema<infer T> ? T : never

/** Thrown by `check` with the path of the offending field; `parse` turns it into a `MeshError`. */
export class SchemaViolation extends Error {
  override readonly name = 'SchemaViolation'
  constructor(
    readonly path: string,
    readonly reason: string,
  ) {
    super(`${path || 'value'}: ${reason}`)
  }
}

/** Validates `value`; a violation becomes a `MeshError` with `code` and the field path in `details`. */
export function parse<T>(schema: Schema<T>, value: unknown, code: MeshErrorCode, what: string): T {
  try {
    return schema.check(value, '')
  } catch (err) {
    if (err instanceof SchemaViolation) {
      throw new MeshError(code, `invalid ${what}: ${err.message}`, {
        details: { path: err.path, reason: err.reason },
      })
    }
    throw err
  }
}

function fail(path: string, reason: string): never {
  throw new SchemaViolation(path, reason)
}

function typeName(value: unknown): string {
  if (value === null) return 'nil'
  if (value instanceof Uint8Array) return 'bin'
  if (Array.isArray(value)) return 'array'
  return typeof value
}

/** A UTF-8 string with bounds on its length in characters. */
export function str(opts: { min?: number; max?: number; pattern?: RegExp } = {}): Schema<string> {
  const max = opts.max ?? 1024
  const spec: SchemaSpec = { kind: 'str', min: opts.min ?? 0, max }
  if (opts.pattern !== undefined) spec.pattern = opts.pattern
  return {
    spec,
    check(v, path) {
      if (typeof v !== 'string') fail(path, `expected string, got ${typeName(v)}`)
      if (v.length > max) fail(path, `longer than ${max} characters`)
      if (opts.min !== undefined && v.length < opts.min) fail(path, `shorter than ${opts.min} characters`)
      if (opts.pattern !== undefined && !opts.pattern.test(v))
        fail(path, `does not match ${String(opts.pattern)}`)
      return v
    },
  }
}

/** A byte string, optionally of an exact length or within bounds. */
export function bin(opts: { len?: number; min?: number; max?: number } = {}): Schema<Uint8Array> {
  return {
    spec: { kind: 'bin', min: opts.len ?? opts.min ?? 0, max: opts.len ?? opts.max ?? 1024 * 1024 },
    check(v, path) {
      if (!(v instanceof Uint8Array)) fail(path, `expected bin, got ${typeName(v)}`)
      if (opts.len !== undefined && v.length !== opts.len)
        fail(path, `expected ${opts.len} bytes, got ${v.length}`)
      if (opts.min !== undefined && v.length < opts.min) fail(path, `fewer than ${opts.min} bytes`)
      if (opts.max !== undefined && v.length > opts.max) fail(path, `more than ${opts.max} bytes`)
      return v
    },
  }
}

/** A non-negative safe integer (written as int or float64 by the sender). */
export function uint(opts: { max?: number } = {}): Schema<number> {
  const max = opts.max ?? Number.MAX_SAFE_INTEGER
  return {
    spec: { kind: 'uint', max },
    check(v, path) {
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0)
        fail(path, `expected unsigned integer, got ${typeName(v)}`)
      if (v > max) fail(path, `greater than ${max}`)
      return v
    },
  }
}

/** A boolean. */
export function bool(): Schema<boolean> {
  return {
    spec: { kind: 'bool' },
    check(v, path) {
      if (typeof v !== 'boolean') fail(path, `expected boolean, got ${typeName(v)}`)
      return v
    },
  }
}

/** One of a fixed set of strings. */
export function oneOf<const V extends readonly string[]>(values: V): Schema<V[number]> {
  const set = new Set<string>(values)
  return {
    spec: { kind: 'oneOf', values },
    check(v, path) {
      if (typeof v !== 'string' || !set.has(v)) fail(path, `expected one of ${values.join('|')}`)
      return v
    },
  }
}

/** Exactly this string. */
export function literal<const V extends string | number | boolean>(value: V): Schema<V> {
  return {
    spec: { kind: 'literal', value },
    check(v, path) {
      if (v !== value) fail(path, `expected ${JSON.stringify(value)}`)
      return value
    },
  }
}

/** An array of items, at most `max` long. */
export function arr<T>(item: Schema<T>, opts: { max?: number; min?: number } = {}): Schema<T[]> {
  const max = opts.max ?? 1024
  return {
    spec: { kind: 'arr', item, min: opts.min ?? 0, max },
    check(v, path) {
      if (!Array.isArray(v)) fail(path, `expected array, got ${typeName(v)}`)
      if (v.length > max) fail(path, `more than ${max} items`)
      if (opts.min !== undefined && v.length < opts.min) fail(path, `fewer than ${opts.min} items`)
      return v.map((x, i) => item.check(x, `${path}[${i}]`))
    },
  }
}

/** A fixed-length array whose items each have their own schema (the shape of every signed array). */
export function tuple<const S extends readonly Schema<unknown>[]>(
  items: S,
): Schema<{ [K in keyof S]: Infer<S[K]> }> {
  return {
    spec: { kind: 'tuple', items },
    check(v, path) {
      if (!Array.isArray(v)) fail(path, `expected array, got ${typeName(v)}`)
      if (v.length !== items.length) fail(path, `expected ${items.length} items, got ${v.length}`)
      return items.map((s, i) => s.check(v[i], `${path}[${i}]`)) as { [K in keyof S]: Infer<S[K]> }
    },
  }
}

/** A map from string keys to values of one schema. */
export function record<T>(
  value: Schema<T>,
  opts: { maxKeys?: number; key?: RegExp } = {},
): Schema<Record<string, T>> {
  const maxKeys = opts.maxKeys ?? 1024
  const spec: SchemaSpec = { kind: 'record', value, maxKeys }
  if (opts.key !== undefined) spec.key = opts.key
  return {
    spec,
    check(v, path) {
      if (!isPlainObject(v)) fail(path, `expected map, got ${typeName(v)}`)
      const keys = Object.keys(v)
      if (keys.length > maxKeys) fail(path, `more than ${maxKeys} keys`)
      const out: Record<string, T> = {}
      for (const k of keys) {
        if (opts.key !== undefined && !opts.key.test(k))
          fail(`${path}.${k}`, `key does not match ${String(opts.key)}`)
        Object.defineProperty(out, k, {
          value: value.check(v[k], `${path}.${k}`),
          enumerable: true,
          writable: true,
        })
      }
      return out
    },
  }
}

/** A field that may be missing (or nil); absent fields are left out of the result. */
export function opt<T>(inner: Schema<T>): Schema<T | undefined> & { optional: true } {
  return {
    optional: true,
    spec: { kind: 'opt', inner },
    check(v, path) {
      return v === undefined || v === null ? undefined : inner.check(v, path)
    },
  }
}

/** A value that may be nil. */
export function nullable<T>(inner: Schema<T>): Schema<T | null> {
  return {
    spec: { kind: 'nullable', inner },
    check(v, path) {
      return v === null ? null : inner.check(v, path)
    },
  }
}

/** Any msgpack value, passed on as decoded (its size is bounded by the frame's). */
export function any(): Schema<unknown> {
  return { spec: { kind: 'any' }, check: (v) => v }
}

/** Accepts the first alternative that validates. */
export function either<A, B>(a: Schema<A>, b: Schema<B>): Schema<A | B> {
  const couldBeA = typeTest(a.spec)
  return {
    spec: { kind: 'either', a, b },
    check(v, path) {
      // A value of another type would only make `a` throw, and the throw is what costs: go straight to `b`.
      if (couldBeA !== undefined && !couldBeA(v)) return b.check(v, path)
      try {
        return a.check(v, path)
      } catch (err) {
        if (!(err instanceof SchemaViolation)) throw err
        return b.check(v, path)
      }
    },
  }
}

/** The type test a schema of this kind makes before anything else, if it has one (trusts `spec`). */
function typeTest(spec: SchemaSpec): ((v: unknown) => boolean) | undefined {
  switch (spec.kind) {
    case 'str':
    case 'oneOf':
      return isString
    case 'bin':
      return isBin
    case 'uint':
      return isNumber
    case 'bool':
      return isBoolean
    case 'arr':
    case 'tuple':
      return Array.isArray
    case 'record':
    case 'obj':
      return isPlainObject
    default:
      return undefined
  }
}

const isString = (v: unknown): boolean => typeof v === 'string'
const isBin = (v: unknown): boolean => v instanceof Uint8Array
const isNumber = (v: unknown): boolean => typeof v === 'number'
const isBoolean = (v: unknown): boolean => typeof v === 'boolean'

type Shape = Record<string, Schema<unknown>>
type OptionalKeys<S extends Shape> = { [K in keyof S]: S[K] extends { optional: true } ? K : never }[keyof S]
type RequiredKeys<S extends Shape> = Exclude<keyof S, OptionalKeys<S>>
/** The object type a shape describes: optional schemas give optional properties. */
export type ObjectOf<S extends Shape> = { [K in RequiredKeys<S>]: Infer<S[K]> } & {
  [K in OptionalKeys<S>]?: Exclude<Infer<S[K]>, undefined>
}
type Flatten<T> = { [K in keyof T]: T[K] } & {}

/** A map with named fields; fields not in the shape are dropped. */
export function obj<S extends Shape>(shape: S): Schema<Flatten<ObjectOf<S>>> & { shape: S } {
  const entries = Object.entries(shape)
  return {
    shape,
    spec: { kind: 'obj', shape },
    check(v, path) {
      if (!isPlainObject(v)) fail(path, `expected map, got ${typeName(v)}`)
      const out: Record<string, unknown> = {}
      // Fields are checked with paths relative to this map (the key alone, so every path a field builds
      // starts with its key); the full path is joined only when a violation passes through.
      try {
        for (const [key, schema] of entries) {
          const value = schema.check(Object.prototype.hasOwnProperty.call(v, key) ? v[key] : undefined, key)
          if (value !== undefined) out[key] = value
        }
      } catch (err) {
        if (path && err instanceof SchemaViolation)
          throw new SchemaViolation(`${path}.${err.path}`, err.reason)
        throw err
      }
      return out as Flatten<ObjectOf<S>>
    },
  }
}

/** True for a decoded msgpack map (a plain object), false for arrays, bins and null. */
export function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v) || v instanceof Uint8Array) return false
  const proto = Object.getPrototypeOf(v) as unknown
  return proto === Object.prototype || proto === null
}
