import { describe, expect, it } from 'vitest'
import { memoryStore } from '../../store/memory.js'
import type { NewInboxRow } from '../../store/types.js'
import { inboxHead } from './inbox-head.js'

const key = (n: number): Uint8Array => new Uint8Array(32).fill(n)

function row(i: number, to: number): NewInboxRow {
  return {
    mesh: 'm',
    recipient: key(to),
    from: key(9),
    clientMessageId: `01J${String(i).padStart(23, '0')}`,
    channel: 'dm',
    via: 'relay',
    envelope: new Uint8Array([i & 0xff]),
    status: 'ok',
    receivedAt: 1,
  }
}

describe('inboxHead', () => {
  it('finds the last seq a reader can see, for every inbox size and interleaving', async () => {
    const store = memoryStore()
    const mine = [key(1), key(2)]
    expect(await inboxHead(store, 'm', mine)).toBe(0)
    let last = 0
    for (let i = 1; i <= 300; i++) {
      // Every third row is another session's: it does not count.
      const inserted = await store.insertInbox(row(i, i % 3 === 0 ? 3 : 1 + (i % 2)))
      if (i % 3 !== 0) last = inserted.row.seq
      if (i % 7 === 0 || i < 10) expect(await inboxHead(store, 'm', mine), `after ${i}`).toBe(last)
    }
    expect(await inboxHead(store, 'm', [key(3)])).toBe(300)
    expect(await inboxHead(store, 'other', mine)).toBe(0)
  })
})
