/**
 * An rpc callee in a child process, for tests that `kill -9` it in the middle of a handler and start the
 * callee again on the same store file. The parent sends one `start` message; the child connects a
 * session `Peer` (P2P on) on the sqlite store at `storePath`, serves the default rpc method, reports
 * `ready`, then `run` each time its handler starts. With `hang` the handler never returns; without, it
 * returns `answer` and the child reports `answered` once that answer left its outbox.
 */
import { fork, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import type { Identity, Signed } from '../../protocol/index.js'

export interface RpcCalleeStart {
  url: string
  mesh: string
  ownerPk: Uint8Array
  coordinatorPk: Uint8Array
  identity: Identity
  sessionId: string
  attestation: Signed
  storePath: string
  /** The handler never returns (the test kills the process while it runs). */
  hang: boolean
  answer?: unknown
}

type FromChild = { t: 'ready' } | { t: 'run' } | { t: 'answered' } | { t: 'error'; message: string }

/** The parent's handle. */
export interface RpcCalleeProcess {
  readonly child: ChildProcess
  ready: Promise<void>
  /** Resolves at the first report of kind `t` from now on (or rejects if the child exits first). */
  next(t: 'run' | 'answered', timeoutMs: number): Promise<void>
  /** `kill -9`, resolving once it is gone. */
  kill(): Promise<void>
}

export function rpcCalleeProcess(start: RpcCalleeStart): RpcCalleeProcess {
  const child = fork(fileURLToPath(import.meta.url), ['--child'], {
    execArgv: ['--import', 'tsx'],
    serialization: 'advanced',
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  })
  const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  const ready = new Promise<void>((resolve, reject) => {
    child.on('message', (m: FromChild) => {
      if (m.t === 'ready') resolve()
      else if (m.t === 'error') reject(new Error(`rpc callee process: ${m.message}`))
    })
    void gone.then(() => reject(new Error('rpc callee process exited before it was ready')))
  })
  ready.catch(() => undefined)
  child.send({ t: 'start', ...start })
  return {
    child,
    ready,
    next(t, timeoutMs) {
      return new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => finish(new Error(`no ${t} report in ${timeoutMs} ms`)), timeoutMs)
        const onMessage = (m: FromChild): void => {
          if (m.t === t) finish()
        }
        const finish = (err?: Error): void => {
          clearTimeout(timer)
          child.off('message', onMessage)
          if (err === undefined) resolve()
          else reject(err)
        }
        child.on('message', onMessage)
        void gone.then(() => finish(new Error(`the process exited before its ${t} report`)))
      })
    },
    async kill() {
      child.kill('SIGKILL')
      await gone
    },
  }
}

async function runChild(): Promise<void> {
  const { createNodePeer } = await import('../../peer-runtime/node/node-peer.js')
  const { sqliteStore } = await import('../../peer-runtime/node/sqlite-store.js')
  const { rpcEndpoint } = await import('../../peer-runtime/rpc.js')
  const { initCrypto } = await import('../../protocol/index.js')
  await initCrypto()
  const start = await new Promise<RpcCalleeStart>((resolve) =>
    process.once('message', (m: { t: 'start' } & RpcCalleeStart) => resolve(m)),
  )
  const tell = (m: FromChild): void => void process.send?.(m)
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
    p2p: true,
    connection: { backoffBaseMs: 50, backoffCapMs: 500 },
  })
  peer.on('outbox', (row) => {
    if (row.channel === 'rpc' && (row.state === 'accepted' || row.state === 'done')) tell({ t: 'answered' })
  })
  rpcEndpoint(peer).handle(async () => {
    tell({ t: 'run' })
    if (start.hang) await new Promise(() => undefined)
    return start.answer ?? null
  })
  await peer.start()
  await peer.whenConnected(AbortSignal.timeout(20_000))
  tell({ t: 'ready' })
  // Held open until killed: a `Peer`'s timers do not keep a process alive by themselves.
  setInterval(() => undefined, 60_000)
}

if (process.argv.includes('--child')) {
  runChild().catch((err: unknown) => {
    process.send?.({ t: 'error', message: String(err) })
    process.exit(1)
  })
}
