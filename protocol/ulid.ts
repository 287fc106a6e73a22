/**
 * ULIDs name messages (`clientMessageId`): 48 bits of milliseconds then 80 random bits, in Crockford
 * base32, 26 characters. Ids from one generator are strictly increasing, even within one millisecond.
 */
import { randomBytes } from './crypto.js'
import { MeshError } from './errors.js'

const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ'
/** A canonical ULID: uppercase Crockford base32, 26 characters, the first at most 7 (48-bit time). */
export const ULID_RE = /^[0-7][0-9A-HJKMNP-TV-Z]{25}$/
const TIME_MAX = 2 ** 48 - 1

/** True for a canonical (uppercase) ULID. */
export function isUlid(text: unknown): text is string {
  return typeof text === 'string' && ULID_RE.test(text)
}

/** The millisecond timestamp a ULID carries. */
export function ulidTime(id: string): number {
  if (!isUlid(id))
    throw new MeshError('MESH_ERR_INVALID_MESSAGE_ID', `not a ULID: ${JSON.stringify(id).slice(0, 40)}`)
  let t = 0
  for (let i = 0; i < 10; i++) t = t * 32 + ALPHABET.indexOf(id[i]!)
  return t
}

/** Makes ULIDs from a clock; monotonic within one generator. */
export function ulidFactory(
  now: () => number = Date.now,
  random: (n: number) => Uint8Array = randomBytes,
): () => string {
  let lastTime = -1
  let lastRandom: Uint8Array = new Uint8Array(10)
  return () => {
    const t = Math.max(now(), lastTime)
    if (!Number.isSafeInteger(t) || t < 0 || t > TIME_MAX)
      throw new RangeError(`ULID time out of range: ${t}`)
    if (t === lastTime) {
      lastRandom = increment(lastRandom)
    } else {
      lastTime = t
      lastRandom = random(10)
    }
    return encode(t, lastRandom)
  }
}

function increment(bytes: Uint8Array): Uint8Array {
  const out = bytes.slice()
  for (let i = out.length - 1; i >= 0; i--) {
    if (out[i] === 0xff) {
      out[i] = 0
    } else {
      out[i]!++
      return out
    }
  }
  throw new RangeError('ULID random part overflowed within one millisecond')
}

// Both halves are written as character codes into one array and turned into a string once: built a
// character at a time, an id cost 26 intermediate strings (about 400 bytes of garbage per id).
const CODES = Array.from(ALPHABET, (c) => c.charCodeAt(0))
const chars = new Array<number>(26).fill(0)

function encode(t: number, random: Uint8Array): string {
  for (let i = 9; i >= 0; i--) {
    chars[i] = CODES[t % 32]!
    t = Math.floor(t / 32)
  }
  // 80 bits → 16 characters of 5 bits each, most significant first.
  let acc = 0
  let bits = 0
  let at = 10
  for (let i = 0; i < random.length; i++) {
    acc = ((acc << 8) | random[i]!) & 0xfff
    bits += 8
    while (bits >= 5) {
      bits -= 5
      chars[at++] = CODES[(acc >> bits) & 31]!
    }
  }
  return String.fromCharCode.apply(null, chars)
}
