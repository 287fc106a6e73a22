import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import { PeerConnection, cleanup, type DataChannel } from 'node-datachannel'
import { afterAll, describe, expect, it } from 'vitest'

// Smoke tests for the two native addons: if a prebuilt binary is missing or built for another ABI,
// these fail first and say so, instead of deep inside a store or transport suite.

/** Resolves with the first value `subscribe` delivers, or rejects naming `what` when `signal` aborts. */
function once<T>(
  signal: AbortSignal,
  what: string,
  subscribe: (deliver: (value: T) => void) => void,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const abort = (): void => reject(new Error(`gave up waiting for ${what}`, { cause: signal.reason }))
    if (signal.aborted) return abort()
    signal.addEventListener('abort', abort, { once: true })
    subscribe(resolve)
  })
}

describe('better-sqlite3', () => {
  it('runs queries on a WAL file database in a temp dir', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'agentmesh-sqlite-'))
    const db = new Database(join(dir, 'smoke.db'))
    try {
      expect(db.pragma('journal_mode = WAL', { simple: true })).toBe('wal')
      db.exec('create table kv (k text primary key, v text not null)')
      db.prepare('insert into kv (k, v) values (?, ?)').run('hello', 'mesh')
      expect(db.prepare('select v from kv where k = ?').get('hello')).toEqual({ v: 'mesh' })
    } finally {
      db.close()
      await rm(dir, { recursive: true, force: true })
    }
  })
})

type Message = string | Buffer | ArrayBuffer

describe('node-datachannel', () => {
  afterAll(() => cleanup())

  it('opens a data channel between two loopback peers and echoes one message each way', async () => {
    const signal = AbortSignal.timeout(10_000)
    // Loopback only, no STUN: host candidates on 127.0.0.1 are all two local peers need.
    const config = { iceServers: [], bindAddress: '127.0.0.1' }
    const alice = new PeerConnection('alice', config)
    const bob = new PeerConnection('bob', config)
    try {
      alice.onLocalDescription((sdp, type) => bob.setRemoteDescription(sdp, type))
      bob.onLocalDescription((sdp, type) => alice.setRemoteDescription(sdp, type))
      alice.onLocalCandidate((candidate, mid) => bob.addRemoteCandidate(candidate, mid))
      bob.onLocalCandidate((candidate, mid) => alice.addRemoteCandidate(candidate, mid))

      const aliceChannel = alice.createDataChannel('smoke')
      const [bobChannel] = await Promise.all([
        once<DataChannel>(signal, 'bob to see the channel', (deliver) => bob.onDataChannel(deliver)),
        once<void>(signal, 'the channel to open', (deliver) => aliceChannel.onOpen(deliver)),
      ])

      const atBob = once<Message>(signal, 'ping at bob', (deliver) => bobChannel.onMessage(deliver))
      aliceChannel.sendMessage('ping')
      expect(await atBob).toBe('ping')

      const atAlice = once<Message>(signal, 'pong at alice', (deliver) => aliceChannel.onMessage(deliver))
      bobChannel.sendMessage('pong')
      expect(await atAlice).toBe('pong')

      const closed = once<void>(signal, 'the channel to close', (deliver) => aliceChannel.onClosed(deliver))
      aliceChannel.close()
      await closed
    } finally {
      alice.close()
      bob.close()
    }
  })
})
