import { describe, expect, it } from 'vitest'
import { runtimeStoreCompliance, testInboxRow, testKey, testOutboxRow } from './compliance.js'
import { memoryStore } from './memory.js'

runtimeStoreCompliance('memory', async () => memoryStore(), {
  runner: { describe, it },
  durability: 'volatile',
})

describe('memory store', () => {
  it('hands out fresh rows: changing one does not change the store', async () => {
    const store = memoryStore()
    const { row } = await store.insertOutbox(testOutboxRow(1, { recipients: {} }))
    row.state = 'done'
    row.recipients!['aa'] = 'delivered'
    expect(await store.getOutbox(row.id)).toMatchObject({ state: 'pending', recipients: {} })
    await store.close()
  })

  it('claims a 20,000-row backlog inserted in reverse in due order', async () => {
    const store = memoryStore()
    const n = 20_000
    // Inserted in reverse due order, so an unsorted store would hand out the wrong rows first.
    for (let i = n; i > 0; i--) await store.insertOutbox(testOutboxRow(i, { nextAttemptAt: i }))
    const first = await store.claimDue(Number.MAX_SAFE_INTEGER, 3)
    expect(first.map((r) => r.nextAttemptAt)).toEqual([1, 2, 3])
    let claimed = first.length
    for (;;) {
      const batch = await store.claimDue(Number.MAX_SAFE_INTEGER, 256)
      if (batch.length === 0) break
      claimed += batch.length
    }
    expect(claimed).toBe(n)
    expect(await store.nextDue()).toBeUndefined()
    await store.close()
  })

  it('a reader sees rows for its member key and its session key, not a sibling session', async () => {
    const store = memoryStore()
    await store.insertInbox(testInboxRow(1, { to: 10 })) // member key
    await store.insertInbox(testInboxRow(2, { to: 11 })) // session A
    await store.insertInbox(testInboxRow(3, { to: 12 })) // session B
    const a = await store.readInbox({ mesh: 'mesh-test', recipients: [testKey(11), testKey(10)] })
    expect(a.map((r) => r.recipient[0])).toEqual([10, 11])
    await store.close()
  })
})
