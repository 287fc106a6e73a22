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
    return encodeTime(t) + encodeRandom(lastRandom)
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

function encodeTime(t: number): string {
  let out = ''
  for (let i = 0; i < 10; i++) {
    out = ALPHABET[t % 32]! + out
    t = Math.floor(t / 32)
  }
  return out
}

function encodeRandom(bytes: Uint8Array): string {
  // 80 bits → 16 characters of 5 bits each, most significant first.
  let out = ''
  let acc = 0
  let bits = 0
  for (const b of bytes) {
    acc = (acc << 8) | b
    bits += 8
    while (bits >= 5) {
      bits -= 5
      out += ALPHABET[(acc >> bits) & 31]!
    }
    acc &= (1 << bits) - 1
  }
  return out
}
