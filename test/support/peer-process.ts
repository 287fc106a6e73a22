/**
 * A runtime peer in a child process, for tests that kill it (`kill -9`) and start it again on the same
 * store file. The parent sends one `start` message over IPC; the child reports `ready` once connected and
 * `received` with its running count of fresh inbox rows. `peerProcess()` is the parent's handle.
 */
import { fork, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import type { Identity, Signed } from '../../protocol/index.js'

export interface PeerProcessStart {
  url: string
  mesh: string
  ownerPk: Uint8Array
  coordinatorPk: Uint8Array
  identity: Identity
  sessionId: string
  attestation: Signed
  storePath: string
  p2p: boolean
}

type FromChild =
  | { t: 'ready' }
  | { t: 'received'; fresh: number }
  | { t: 'sent'; p2pSent: number; viaP2p: number }
  | { t: 'error'; message: string }

type ToChild =
  ({ t: 'start' } & PeerProcessStart) | { t: 'send'; to: Uint8Array; count: number } | { t: 'close' }

/** The parent's handle on a peer process. */
export interface PeerProcess {
  readonly child: ChildProcess
  /** Fresh inbox rows this process reported (the last report before it died). */
  readonly fresh: number
  ready: Promise<void>
  /** Resolves when the process reported at least `n` fresh rows. */
  received(n: number, timeoutMs: number): Promise<void>
  /**
   * Sends `count` DMs to `to` and resolves once every one is done (a receiver acked it), with how many
   * went P2P and how many of what this process received came P2P.
   */
  send(to: Uint8Array, count: number, timeoutMs: number): Promise<{ p2pSent: number; viaP2p: number }>
  /**
   * Asks the peer to close (its store too) and then lets the process end by itself, with no
   * `process.exit`: resolves with the milliseconds until it exited, so a handle left open shows.
   */
  close(): Promise<number>
  /** `kill -9`, resolving once it is gone. */
  kill(): Promise<void>
  /** Asks it to close cleanly (SIGTERM) and waits for the exit. */
  stop(): Promise<void>
}

export function peerProcess(start: PeerProcessStart): PeerProcess {
  const file = fileURLToPath(import.meta.url)
  const child = fork(file, ['--child'], {
    execArgv: ['--import', 'tsx'],
    serialization: 'advanced',
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  })
  const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  let fresh = 0
  const waiters = new Set<() => void>()
  let failed: Error | undefined
  const ready = new Promise<void>((resolve, reject) => {
    child.on('message', (m: FromChild) => {
      if (m.t === 'ready') resolve()
      else if (m.t === 'received') {
        fresh = m.fresh
        for (const w of waiters) w()
      } else if (m.t === 'error') {
        failed = new Error(`peer process: ${m.message}`)
        reject(failed)
      }
    })
    void gone.then(() => reject(new Error('peer process exited before it was ready')))
  })
  ready.catch(() => undefined)
  const tell = (m: ToChild): void => void child.send(m)
  tell({ t: 'start', ...start })
  return {
    child,
    get fresh() {
      return fresh
    },
    ready,
    received(n, timeoutMs) {
      return new Promise<void>((resolve, reject) => {
        const check = (): void => {
          if (fresh >= n) done(resolve)
          else if (failed !== undefined) {
            const err = failed
            done(() => reject(err))
          }
        }
        const done = (fn: () => void): void => {
          clearTimeout(timer)
          waiters.delete(check)
          fn()
        }
        const timer = setTimeout(() => done(() => reject(new Error(`${fresh} of ${n} received`))), timeoutMs)
        waiters.add(check)
        check()
      })
    },
    send(to, count, timeoutMs) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`${count} sends not done in ${timeoutMs} ms`)),
          timeoutMs,
        )
        const onMessage = (m: FromChild): void => {
          if (m.t !== 'sent') return
          clearTimeout(timer)
          child.off('message', onMessage)
          resolve({ p2pSent: m.p2pSent, viaP2p: m.viaP2p })
        }
        child.on('message', onMessage)
        tell({ t: 'send', to, count })
      })
    },
    async close() {
      const t0 = Date.now()
      tell({ t: 'close' })
      await gone
      return Date.now() - t0
    },
    async kill() {
      child.kill('SIGKILL')
      await gone
    },
    async stop() {
      child.kill('SIGTERM')
      await gone
    },
  }
}

async function runChild(): Promise<void> {
  const { createNodePeer } = await import('../../peer-runtime/node/node-peer.js')
  const { sqliteStore } = await import('../../peer-runtime/node/sqlite-store.js')
  const { initCrypto } = await import('../../protocol/index.js')
  await initCrypto()
  const start = await new Promise<PeerProcessStart>((resolve) =>
    process.once('message', (m: ToChild) => {
      if (m.t === 'start') resolve(m)
    }),
  )
  const store = sqliteStore({ path: start.storePath })
  const peer = createNodePeer({
    url: start.url,
    mesh: start.mesh,
    ownerPk: start.ownerPk,
    coordinatorPk: start.coordinatorPk,
    identity: start.identity,
    role: 'session',
    sessionId: start.sessionId,
    attestation: () => start.attestation,
    store,
    p2p: start.p2p,
    connection: { backoffBaseMs: 50, backoffCapMs: 500 },
  })
  let fresh = 0
  let reported = 0
  let viaP2p = 0
  if (process.env['PEER_DEBUG'] !== undefined)
    peer.on('p2p', (e, _pk, d) =>
      console.error(
        '[peer-process]',
        start.sessionId,
        e,
        String(d instanceof Error ? d.message : JSON.stringify(d)),
      ),
    )
  peer.on('message', (m) => {
    fresh++
    if (m.via === 'p2p') viaP2p++
  })
  // Batched reports: an IPC message per inbox row would cost more than the row.
  const report = setInterval(() => {
    if (fresh !== reported) process.send?.({ t: 'received', fresh: (reported = fresh) })
  }, 20)
  process.once('SIGTERM', () => {
    clearInterval(report)
    void peer
      .close()
      .then(() => store.close())
      .then(() => process.exit(0))
  })
  process.on('message', (m: ToChild) => {
    if (m.t === 'send') {
      void sendAll(m.to, m.count).then(
        () => process.send?.({ t: 'sent', p2pSent: peer.p2pCounters?.p2pSent ?? 0, viaP2p }),
        (err: unknown) => process.send?.({ t: 'error', message: String(err) }),
      )
    } else if (m.t === 'close') {
      clearInterval(report)
      // No process.exit: the process must end by itself once everything is closed.
      void peer
        .close()
        .then(() => store.close())
        .then(() => process.disconnect())
    }
  })
  async function sendAll(to: Uint8Array, count: number): Promise<void> {
    // A bulk send starts once the pair is warm (the warm-up message's handshake), bounded at 10 s.
    for (let i = 0; i < 200 && start.p2p && count > 1 && !peer.p2pWarm(to); i++) {
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
    const ids: string[] = []
    for (let n = 0; n < count; n++) ids.push((await peer.send(to, { n })).clientMessageId)
    for (;;) {
      const rows = await Promise.all(ids.map((id) => peer.status(id)))
      if (rows.every((r) => r?.state === 'done')) return
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  }
  await peer.start()
  await peer.whenConnected()
  process.send?.({ t: 'ready' })
}

if (process.argv.includes('--child')) {
  runChild().catch((err: unknown) => {
    process.send?.({ t: 'error', message: err instanceof Error ? err.message : String(err) })
    process.exit(1)
  })
}
