/**
 * The fast path's memory of recent send outcomes, kept off the V8 heap: a DM delivered on the fast path
 * is never stored, so this window is what answers a retry of it with `duplicate` (or refuses the same id
 * with other bytes). It holds the newest `capacity` outcomes and forgets the oldest first.
 *
 * Why not a Map: at the bench's load shape (5,000 DMs/s) a Map of strings grew the heap by about 175
 * bytes an entry, all of it old-generation memory the collector then had to mark, and the coordinator's
 * peak resident size moved by 30 MB with the window's size. Here an entry is 88 bytes in one buffer
 * whose pages are touched only as the ring fills, plus a 4-byte slot of an open-addressing index.
 *
 * An entry: the sender's key (32 bytes), the mesh as a small number (4), the clientMessageId (length
 * byte and up to 26 ASCII bytes: a ULID), the first 16 bytes of the envelope's SHA-256 fingerprint,
 * the state and the recipient-online flag. Outcomes that do not fit that shape (a per-recipient map, a
 * longer or non-ASCII id) are kept in a small Map beside it, under the same oldest-first rule.
 */
import { bytesEqual } from '../../protocol/index.js'
import type { SendOutcome } from './outcome.js'

const ENTRY = 88
const KEY_BYTES = 64 // from (32) + mesh number (4) + id length (1) + id (26) + pad (1)
const MAX_ID = 26
const HASH_AT = 64
const HASH_BYTES = 16
const STATE_AT = 80
const ONLINE_AT = 81
const STATES = ['delivered', 'queued', 'partial'] as const
/** The state byte of an entry whose outcome moved to the Map (it no longer answers). */
const GONE = 0xff

/** What the window remembers of a message id. */
export interface RecentOutcome {
  outcome: SendOutcome
  /** False when the id was used for other bytes (an idempotency conflict). */
  sameBytes: boolean
}

export class RecentOutcomes {
  readonly #capacity: number
  readonly #entries: Buffer
  readonly #words: Int32Array
  /** Index slots: entry number + 1, 0 when empty. Linear probing, at most half full. */
  readonly #slots: Int32Array
  readonly #mask: number
  readonly #meshes = new Map<string, number>()
  /** The next entry the ring writes (the oldest once it is full). */
  #next = 0
  #size = 0
  readonly #key = Buffer.alloc(KEY_BYTES)
  readonly #keyWords = new Int32Array(this.#key.buffer, this.#key.byteOffset, KEY_BYTES / 4)
  /** Outcomes of another shape, oldest first. */
  readonly #others = new Map<string, { outcome: SendOutcome; hash: Uint8Array }>()

  constructor(capacity: number) {
    this.#capacity = Math.max(1, Math.floor(capacity))
    // Buffer.alloc zero-fills with calloc: pages become resident only when written.
    this.#entries = Buffer.alloc(this.#capacity * ENTRY)
    this.#words = new Int32Array(this.#entries.buffer, this.#entries.byteOffset, (this.#capacity * ENTRY) / 4)
    let slots = 1
    while (slots < this.#capacity * 2) slots *= 2
    this.#slots = new Int32Array(slots)
    this.#mask = slots - 1
  }

  /** The remembered outcome of `(mesh, from, clientMessageId)`, compared with the envelope `hash`. */
  get(mesh: string, from: Uint8Array, clientMessageId: string, hash: Uint8Array): RecentOutcome | undefined {
    if (this.#packKey(mesh, from, clientMessageId, false)) {
      const entry = this.#find()
      if (entry >= 0 && this.#entries[entry * ENTRY + STATE_AT] !== GONE) {
        const at = entry * ENTRY
        const outcome: SendOutcome = {
          state: STATES[this.#entries[at + STATE_AT]!]!,
          recipientOnline: this.#entries[at + ONLINE_AT] === 1,
        }
        const stored = this.#entries.subarray(at + HASH_AT, at + HASH_AT + HASH_BYTES)
        return { outcome, sameBytes: bytesEqual(stored, hash.subarray(0, HASH_BYTES)) }
      }
    }
    if (this.#others.size === 0) return undefined
    const other = this.#others.get(otherKey(mesh, from, clientMessageId))
    if (other === undefined) return undefined
    return { outcome: other.outcome, sameBytes: bytesEqual(other.hash, hash) }
  }

  /** Remembers an outcome; the oldest one goes when the window is full. */
  set(mesh: string, from: Uint8Array, clientMessageId: string, hash: Uint8Array, outcome: SendOutcome): void {
    const state = STATES.indexOf(outcome.state)
    const plain = outcome.recipients === undefined && outcome.recipientOnline !== undefined && state >= 0
    const packed = this.#packKey(mesh, from, clientMessageId, true)
    if (!plain || hash.length < HASH_BYTES || !packed) {
      // An entry of the same name in the ring no longer answers.
      if (packed) {
        const old = this.#find()
        if (old >= 0) this.#entries[old * ENTRY + STATE_AT] = GONE
      }
      const key = otherKey(mesh, from, clientMessageId)
      this.#others.delete(key)
      this.#others.set(key, { outcome, hash })
      if (this.#others.size > this.#capacity) this.#others.delete(this.#others.keys().next().value!)
      return
    }
    if (this.#others.size > 0) this.#others.delete(otherKey(mesh, from, clientMessageId))
    let entry = this.#find()
    if (entry < 0) {
      entry = this.#next
      if (this.#size === this.#capacity) this.#unindex(entry)
      else this.#size++
      this.#next = (entry + 1) % this.#capacity
      this.#entries.set(this.#key, entry * ENTRY)
      this.#index(entry)
    }
    const at = entry * ENTRY
    this.#entries.set(hash.subarray(0, HASH_BYTES), at + HASH_AT)
    this.#entries[at + STATE_AT] = state
    this.#entries[at + ONLINE_AT] = outcome.recipientOnline === true ? 1 : 0
  }

  /**
   * Writes the name into the scratch key; false when it does not fit the entry shape (the id is longer
   * than 26 bytes or not ASCII). `intern`: give a new mesh a number (else a mesh never seen is no match).
   */
  #packKey(mesh: string, from: Uint8Array, clientMessageId: string, intern: boolean): boolean {
    if (from.length !== 32 || clientMessageId.length > MAX_ID) return false
    let meshNo = this.#meshes.get(mesh)
    if (meshNo === undefined) {
      if (!intern) meshNo = 0
      else {
        meshNo = this.#meshes.size + 1
        this.#meshes.set(mesh, meshNo)
      }
    }
    const key = this.#key
    key.set(from, 0)
    key.writeUInt32LE(meshNo, 32)
    key[36] = clientMessageId.length
    for (let i = 0; i < MAX_ID + 1; i++) {
      const c = i < clientMessageId.length ? clientMessageId.charCodeAt(i) : 0
      if (c > 0x7f) return false
      key[37 + i] = c
    }
    return true
  }

  /** The home slot of the scratch key: FNV-1a over its words. */
  #home(words: Int32Array, base: number): number {
    let h = 0x811c9dc5
    for (let i = 0; i < KEY_BYTES / 4; i++) h = Math.imul(h ^ words[base + i]!, 0x01000193)
    return (h ^ (h >>> 15)) & this.#mask
  }

  /** The entry holding the scratch key, or -1. */
  #find(): number {
    const kw = this.#keyWords
    for (let slot = this.#home(kw, 0); ; slot = (slot + 1) & this.#mask) {
      const v = this.#slots[slot]!
      if (v === 0) return -1
      const base = ((v - 1) * ENTRY) / 4
      let same = true
      for (let i = 0; i < KEY_BYTES / 4; i++) {
        if (this.#words[base + i] !== kw[i]) {
          same = false
          break
        }
      }
      if (same) return v - 1
    }
  }

  #index(entry: number): void {
    let slot = this.#home(this.#words, (entry * ENTRY) / 4)
    while (this.#slots[slot] !== 0) slot = (slot + 1) & this.#mask
    this.#slots[slot] = entry + 1
  }

  /** Takes an entry out of the index, shifting back the slots after it (no tombstones). */
  #unindex(entry: number): void {
    const mask = this.#mask
    let slot = this.#home(this.#words, (entry * ENTRY) / 4)
    while (this.#slots[slot] !== entry + 1) slot = (slot + 1) & mask
    let hole = slot
    for (let next = (hole + 1) & mask; this.#slots[next] !== 0; next = (next + 1) & mask) {
      const v = this.#slots[next]!
      const home = this.#home(this.#words, ((v - 1) * ENTRY) / 4)
      // Move it into the hole unless its home lies cyclically in (hole, next].
      const stays = hole <= next ? home > hole && home <= next : home > hole || home <= next
      if (!stays) {
        this.#slots[hole] = v
        hole = next
      }
    }
    this.#slots[hole] = 0
  }
}

function otherKey(mesh: string, from: Uint8Array, clientMessageId: string): string {
  return `${mesh}\0${Buffer.from(from.buffer, from.byteOffset, from.byteLength).toString('latin1')}\0${clientMessageId}`
}
