import { beforeAll, describe, expect, it } from 'vitest'
import { ManualClock } from '../../protocol/clock.js'
import { initCrypto } from '../../protocol/crypto.js'
import { createIdentity } from '../../protocol/keys.js'
import type { WebSocketLike } from '../connection.js'
import { Peer } from '../peer.js'
import { testMessageId, testOutboxRow } from '../store/compliance.js'
import { memoryStore } from '../store/memory.js'
import type { RuntimeStore } from '../store/types.js'

const DAY = 86_400_000

beforeAll(() => initCrypto())

/** A socket that never opens: this test is about the store, with the coordinator out of reach. */
function silentSocket(): WebSocketLike {
  return {
    binaryType: 'arraybuffer',
    readyState: 0,
    send() {},
    close() {},
    onopen: null,
    onmessage: null,
    onclose: null,
    onerror: null,
  }
}

async function finishedRow(store: RuntimeStore, n: number, at: number): Promise<void> {
  await store.insertOutbox(testOutboxRow(n, { createdAt: at }))
  await store.updateOutbox(testMessageId(n), { state: 'done', updatedAt: at })
}

describe('Peer and the store janitor', () => {
  it('prunes the store hourly from start() until close()', async () => {
    const clock = new ManualClock()
    const store = memoryStore()
    await finishedRow(store, 1, clock.now() - 8 * DAY)
    const peer = new Peer({
      url: 'ws://127.0.0.1:1/ws',
      mesh: 'mesh-test',
      ownerPk: createIdentity('member').publicKey,
      coordinatorPk: createIdentity('coordinator').publicKey,
      identity: createIdentity('member'),
      role: 'control-plane',
      store,
      clock,
      socket: silentSocket,
    })
    await peer.start()
    await clock.advance(59_000)
    expect(await store.getOutbox(testMessageId(1))).toBeDefined()
    await clock.advance(1_000)
    expect(await store.getOutbox(testMessageId(1))).toBeUndefined()

    await finishedRow(store, 2, clock.now() - 8 * DAY)
    await clock.advance(3_600_000)
    expect(await store.getOutbox(testMessageId(2))).toBeUndefined()

    await peer.close()
    await finishedRow(store, 3, clock.now() - 8 * DAY)
    await clock.advance(2 * 3_600_000)
    expect(await store.getOutbox(testMessageId(3))).toBeDefined()
    await store.close()
  })
})
