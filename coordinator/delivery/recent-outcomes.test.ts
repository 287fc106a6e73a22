import { createHash, randomBytes } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { ulidFactory } from '../../protocol/index.js'
import type { SendOutcome } from './dedupe.js'
import { RecentOutcomes } from './recent-outcomes.js'

// ULIDs from node:crypto's random bytes (libsodium is not needed here).
const nextId = ulidFactory(Date.now, (n) => new Uint8Array(randomBytes(n)))
const sha = (text: string): Uint8Array => new Uint8Array(createHash('sha256').update(text).digest())
const delivered: SendOutcome = { state: 'delivered', recipientOnline: true }
const queued: SendOutcome = { state: 'queued', recipientOnline: false }

describe('RecentOutcomes', () => {
  it('answers a remembered id with its outcome, and says whether the bytes are the same', () => {
    const w = new RecentOutcomes(10)
    const from = randomBytes(32)
    const id = nextId()
    expect(w.get('m', from, id, sha('a'))).toBeUndefined()
    w.set('m', from, id, sha('a'), queued)
    expect(w.get('m', from, id, sha('a'))).toEqual({ outcome: queued, sameBytes: true })
    expect(w.get('m', from, id, sha('b'))).toEqual({ outcome: queued, sameBytes: false })
    // Another mesh, another sender or another id is another message.
    expect(w.get('m2', from, id, sha('a'))).toBeUndefined()
    expect(w.get('m', randomBytes(32), id, sha('a'))).toBeUndefined()
    expect(w.get('m', from, nextId(), sha('a'))).toBeUndefined()
    // A later outcome of the same id replaces the earlier one.
    w.set('m', from, id, sha('a'), delivered)
    expect(w.get('m', from, id, sha('a'))?.outcome).toEqual(delivered)
  })

  it('keeps outcomes of other shapes too: per-recipient maps, long and non-ASCII ids', () => {
    const w = new RecentOutcomes(10)
    const from = randomBytes(32)
    const partial: SendOutcome = { state: 'partial', recipients: { ab: 'delivered', cd: 'undecryptable' } }
    const id = nextId()
    w.set('m', from, id, sha('g'), partial)
    expect(w.get('m', from, id, sha('g'))).toEqual({ outcome: partial, sameBytes: true })
    for (const odd of ['x'.repeat(40), 'clé-ü', '']) {
      w.set('m', from, odd, sha(odd), queued)
      expect(w.get('m', from, odd, sha(odd))).toEqual({ outcome: queued, sameBytes: true })
      expect(w.get('m', from, odd, sha('other'))?.sameBytes).toBe(false)
    }
    // The same name going from a plain outcome to a map and back is answered by the newest.
    w.set('m', from, id, sha('g'), delivered)
    expect(w.get('m', from, id, sha('g'))?.outcome).toEqual(delivered)
    w.set('m', from, id, sha('g'), partial)
    expect(w.get('m', from, id, sha('g'))?.outcome).toEqual(partial)
  })

  it('forgets the oldest first and answers exactly as a map with the same rule would', () => {
    // A small window under heavy churn drives the index's collisions and back-shifting deletes.
    const capacity = 61
    const w = new RecentOutcomes(capacity)
    const model = new Map<string, SendOutcome>()
    const senders = Array.from({ length: 3 }, () => randomBytes(32))
    const names: [string, Buffer, string][] = []
    let seed = 7
    const rand = (n: number): number => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0
      return seed % n
    }
    const nameKey = ([mesh, from, id]: [string, Buffer, string]): string =>
      `${mesh}|${from.toString('hex')}|${id}`
    for (let step = 0; step < 20_000; step++) {
      const op = rand(10)
      if (op < 5 || names.length === 0) {
        const name: [string, Buffer, string] = [`mesh-${rand(2)}`, senders[rand(3)]!, nextId()]
        names.push(name)
        const outcome = rand(2) === 0 ? delivered : queued
        w.set(...name, sha(nameKey(name)), outcome)
        model.set(nameKey(name), outcome)
        if (model.size > capacity) model.delete(model.keys().next().value!)
      } else if (op < 6) {
        // Re-remembering a name the window still holds keeps its place (as Map.set does).
        const name = names[names.length - 1 - rand(Math.min(names.length, capacity))]!
        if (model.has(nameKey(name))) {
          w.set(...name, sha(nameKey(name)), queued)
          model.set(nameKey(name), queued)
        }
      } else {
        const name = names[names.length - 1 - rand(Math.min(names.length, capacity * 2))]!
        const got = w.get(...name, sha(nameKey(name)))
        const want = model.get(nameKey(name))
        expect(got?.outcome, `step ${step}`).toEqual(want)
        if (got !== undefined) expect(got.sameBytes).toBe(true)
      }
    }
    let held = 0
    for (const name of names) if (w.get(...name, sha(nameKey(name))) !== undefined) held++
    expect(held).toBe(capacity)
  })
})
