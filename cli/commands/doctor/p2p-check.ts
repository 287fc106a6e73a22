/**
 * The P2P checks of `agentmesh doctor`: node-datachannel loads (its version and libdatachannel's), and a
 * loopback: two of its PeerConnections in this process, no ICE servers, bound to 127.0.0.1, exchange one
 * message over a data channel. The descriptions go in the order the adapter uses (docs/ARCHITECTURE.md,
 * departure 16): the offerer's candidates reach the answerer only after the answer reached the offerer.
 */
import { readFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import type { DataChannel, PeerConnection } from 'node-datachannel'
import { retainNodeDataChannel } from '../../../transports/webrtc/node.js'
import { fail, ok, reason, seconds, TimeoutError, within, type CheckResult } from './check.js'

type NodeDataChannel = typeof import('node-datachannel')

const LOAD = 'node-datachannel'
const LOOPBACK = 'p2p loopback'
const REINSTALL =
  'reinstall it for this Node (`npm rebuild node-datachannel`, or `npm install` again); until then ' +
  'messages go through the coordinator relay only'
/** How long a loopback connection may take to report `closed` before it is let go. */
const CLOSE_WAIT_MS = 2_000

/** Loads node-datachannel; `undefined` and a failed check when it does not. */
export async function loadNodeDataChannel(): Promise<{ check: CheckResult; module?: NodeDataChannel }> {
  let module: NodeDataChannel
  try {
    module = await import('node-datachannel')
  } catch (err) {
    return { check: fail(LOAD, `does not load: ${reason(err)}`, REINSTALL) }
  }
  const [pkg, lib] = await Promise.all([packageVersion(), libraryVersion(module)])
  return { check: ok(LOAD, `${pkg} loads (libdatachannel ${lib})`), module }
}

/** The loopback check, bounded by `timeoutMs`. */
export async function p2pLoopback(nd: NodeDataChannel | undefined, timeoutMs: number): Promise<CheckResult> {
  if (nd === undefined) return fail(LOOPBACK, 'not run: node-datachannel does not load', REINSTALL)
  const started = Date.now()
  const pair = new LoopbackPair(nd)
  try {
    await within(timeoutMs, (signal) => pair.exchange(signal))
    return ok(LOOPBACK, `one message crossed a data channel on 127.0.0.1 in ${seconds(Date.now() - started)}`)
  } catch (err) {
    const why = err instanceof TimeoutError ? `no message within ${seconds(timeoutMs)}` : reason(err)
    return fail(
      LOOPBACK,
      `two local PeerConnections could not exchange a message (${why}; ${pair.states()})`,
      'allow UDP on 127.0.0.1 (a firewall, or a sandbox without loopback networking); until then ' +
        'messages go through the coordinator relay only',
    )
  } finally {
    await pair.close()
  }
}

/** Two connections in this process, joined to each other directly. */
class LoopbackPair {
  readonly #offerer: PeerConnection
  readonly #answerer: PeerConnection
  readonly #closed: Promise<void>[] = []
  readonly #released: (() => void)[] = []
  #channel: DataChannel | undefined
  #received: DataChannel | undefined
  #onFailed: (name: string) => void = () => {}

  constructor(nd: NodeDataChannel) {
    const config = { iceServers: [], bindAddress: '127.0.0.1' }
    this.#offerer = this.#open(nd, 'offerer', config)
    this.#answerer = this.#open(nd, 'answerer', config)
  }

  /** Connects the two and sends one message from the offerer; resolves when the answerer has it. */
  exchange(signal: AbortSignal): Promise<void> {
    const text = `agentmesh doctor ${Math.random().toString(36).slice(2)}`
    return new Promise<void>((resolve, reject) => {
      signal.addEventListener('abort', () => reject(new Error('aborted')), { once: true })
      this.#onFailed = (name) => reject(new Error(`the ${name} connection failed`))
      const early: { candidate: string; mid: string }[] = []
      let answered = false
      this.#offerer.onLocalCandidate((candidate, mid) => {
        if (answered) this.#answerer.addRemoteCandidate(candidate, mid)
        else early.push({ candidate, mid })
      })
      this.#offerer.onLocalDescription((sdp, type) => this.#answerer.setRemoteDescription(sdp, type))
      this.#answerer.onGatheringStateChange((state) => {
        if (state !== 'complete') return
        const answer = this.#answerer.localDescription()
        if (answer === null) return
        // The answer lists every candidate of the answerer once gathering completed.
        this.#offerer.setRemoteDescription(answer.sdp, answer.type)
        answered = true
        for (const c of early.splice(0)) this.#answerer.addRemoteCandidate(c.candidate, c.mid)
      })
      this.#answerer.onDataChannel((dc) => {
        this.#received = dc
        dc.onMessage((msg) => {
          if (msg === text) resolve()
          else reject(new Error('the message arrived changed'))
        })
      })
      const channel = this.#offerer.createDataChannel('doctor')
      this.#channel = channel
      channel.onOpen(() => channel.sendMessage(text))
    })
  }

  /** `offerer connected, answerer connecting`: where a failed exchange stopped. */
  states(): string {
    return `offerer ${this.#offerer.state()}, answerer ${this.#answerer.state()}`
  }

  /**
   * Closes both, waits (at most `CLOSE_WAIT_MS`) until they say `closed`, then lets the adapter's
   * process-wide `cleanup()` run: running it over a connection still closing can crash the process.
   */
  async close(): Promise<void> {
    this.#channel?.close()
    this.#received?.close()
    this.#offerer.close()
    this.#answerer.close()
    let timer: NodeJS.Timeout | undefined
    const late = new Promise<void>((resolve) => (timer = setTimeout(resolve, CLOSE_WAIT_MS)))
    await Promise.race([Promise.all(this.#closed), late])
    clearTimeout(timer)
    for (const release of this.#released) release()
  }

  #open(
    nd: NodeDataChannel,
    name: string,
    config: { iceServers: never[]; bindAddress: string },
  ): PeerConnection {
    const pc = new nd.PeerConnection(`doctor-${name}`, config)
    this.#released.push(retainNodeDataChannel())
    // One callback per event in node-datachannel's API: this one serves the exchange and the close.
    this.#closed.push(
      new Promise<void>((resolve) =>
        pc.onStateChange((state) => {
          if (state === 'closed') resolve()
          if (state === 'failed') this.#onFailed(name)
        }),
      ),
    )
    return pc
  }
}

/** node-datachannel's package version, from the package.json above the module Node resolves. */
async function packageVersion(): Promise<string> {
  try {
    let dir = dirname(createRequire(import.meta.url).resolve('node-datachannel'))
    for (let up = 0; up < 6; up++, dir = dirname(dir)) {
      const text = await readFile(join(dir, 'package.json'), 'utf8').catch(() => undefined)
      if (text === undefined) continue
      const pkg = JSON.parse(text) as { name?: unknown; version?: unknown }
      if (pkg.name === 'node-datachannel' && typeof pkg.version === 'string') return pkg.version
    }
  } catch {
    // fall through: the module loaded, only its version is unknown
  }
  return 'unknown version'
}

async function libraryVersion(nd: NodeDataChannel): Promise<string> {
  try {
    return nd.getLibraryVersion()
  } catch {
    return 'unknown'
  }
}
