/**
 * The steps of `agentmesh demo`, run in order on a `DemoWorld`, each bounded by its own timeout and by
 * the caller's stop signal (Ctrl-C). Each step reports one record as it ends (`report.ts`); the first
 * that fails ends the demo with a `DemoStepError` naming it. The world is closed and its directory
 * removed before `runDemo` returns or throws.
 */
import { createHash, randomBytes } from 'node:crypto'
import type { InboundMessage } from '../../../peer-runtime/inbox.js'
import type { MeshPeer } from '../../../peer-runtime/node/home-peer.js'
import type { Peer, PeerEvents } from '../../../peer-runtime/peer.js'
import type { OutboxRow, OutboxState } from '../../../peer-runtime/store/types.js'
import { onStream, openStream } from '../../../peer-runtime/stream.js'
import { bytesEqual, isMeshError, isMeshErrorCode, MeshError, toHex } from '../../../protocol/index.js'
import { waitFor } from '../../../transports/emitter.js'
import type { TypedEmitter } from '../../../transports/types.js'
import { StartupError } from '../coordinator/data-dir.js'
import { DEMO_MESH, DemoWorld, type DemoName } from './demo-world.js'
import type { MessageJson, StepDetails, StepJson, StepName, Transport } from './report.js'

/** Per-step timeouts: generous for a loaded machine; each step takes milliseconds to a second or two. */
const TIMEOUT_MS: Record<Exclude<StepName, 'summary'>, number> = {
  // A first PGlite start runs initdb.
  coordinator: 60_000,
  connected: 20_000,
  found: 10_000,
  p2p: 15_000,
  dm: 10_000,
  file: 30_000,
  offline: 15_000,
  drained: 20_000,
}
/** How long the P2P step waits for the data channel before it says so and goes on over the relay. */
const P2P_WAIT_MS = 8_000
/** How long the offline step waits for alice to see the P2P session to bob close. */
const P2P_CLOSE_WAIT_MS = 5_000
/** How long the drained step waits for alice's delivery receipt once bob has the message. */
const RECEIPT_WAIT_MS = 3_000
/**
 * How long a failed step's work may take to settle before the world closes under it: a PGlite initdb
 * interrupted by Ctrl-C runs on in its child process for a few seconds, writing into the directory.
 */
const SETTLE_MS = 20_000
/** The file: a few hundred KiB of random bytes, seven stream chunks. */
export const FILE_BYTES = 384 * 1024

/**
 * The step that failed, with the code of what failed it: a `MESH_ERR_*` code, or for a system call that
 * failed before anything ran (the temp directory) its errno code, as `coordinator up` reports those.
 */
export class DemoStepError extends Error {
  override readonly name = 'DemoStepError'
  constructor(
    readonly step: StepName | 'cleanup',
    readonly code: string,
    message: string,
    options: { cause?: unknown } = {},
  ) {
    super(`step ${step} failed: ${message}`, options)
  }
}

export interface RunDemo {
  /** Called with each step's record as the step ends. */
  report: (record: StepJson) => void
  /** Aborted on Ctrl-C: the step in progress fails with `MESH_ERR_SHUTTING_DOWN`, then all is closed. */
  stop: AbortSignal
  /** Relay only: the peers open without P2P. */
  relayOnly?: boolean
}

/** Runs every step, then closes and removes everything; throws `DemoStepError` for the first failure. */
export async function runDemo(o: RunDemo): Promise<void> {
  const world = new DemoWorld({ p2p: o.relayOnly !== true })
  const run = new DemoRun(world, o)
  let failure: DemoStepError | undefined
  try {
    await run.steps()
  } catch (err) {
    failure =
      err instanceof DemoStepError ? err : new DemoStepError('summary', 'MESH_ERR_INTERNAL', String(err))
  }
  const started = performance.now()
  const cleanup = await world.close()
  if (failure !== undefined) throw failure
  if (cleanup.problems.length > 0) {
    const message = cleanup.problems.join('; ')
    o.report({ step: 'cleanup', ok: false, ms: ms(started), error: { code: 'MESH_ERR_INTERNAL', message } })
    throw new DemoStepError('cleanup', 'MESH_ERR_INTERNAL', message)
  }
  o.report({
    step: 'summary',
    ok: true,
    ms: ms(run.startedAt),
    steps: run.passed,
    p2p: run.p2pUp,
    messagesVia: run.messagesVia,
    chunksVia: run.chunksVia,
    cleanedUp: true,
    root: cleanup.root,
  })
}

class DemoRun {
  readonly startedAt = performance.now()
  readonly #world: DemoWorld
  readonly #o: RunDemo
  passed = 0
  p2pUp = false
  readonly messagesVia: Record<Transport, number> = { p2p: 0, relay: 0 }
  chunksVia: Partial<Record<Transport, number>> = {}
  #alice: MeshPeer | undefined
  #bob: MeshPeer | undefined

  constructor(world: DemoWorld, o: RunDemo) {
    this.#world = world
    this.#o = o
  }

  get #peers(): { alice: Peer; bob: Peer } {
    return { alice: this.#alice!.peer, bob: this.#bob!.peer }
  }

  async steps(): Promise<void> {
    await this.#step('coordinator', async () => {
      await this.#world.prepare()
      return await this.#world.startCoordinator()
    })

    await this.#step('connected', async (signal) => {
      await this.#world.createMesh()
      this.#alice = await this.#world.openPeer('alice')
      this.#bob = await this.#world.openPeer('bob')
      await Promise.all([connected(this.#alice, signal), connected(this.#bob, signal)])
      const peers = [this.#alice, this.#bob].map((p, i) => ({
        name: (['alice', 'bob'] as const)[i]!,
        pk: toHex(p.identity.publicKey),
      }))
      return { mesh: DEMO_MESH, peers }
    })

    await this.#step('found', async (signal) => {
      const { alice, bob } = this.#peers
      return {
        seen: [
          await sees(alice, 'alice', bob, 'bob', signal),
          await sees(bob, 'bob', alice, 'alice', signal),
        ],
      }
    })

    await this.#step('p2p', async (signal) => {
      const { alice, bob } = this.#peers
      const sentAt = performance.now()
      const p2p = this.#world.p2p
        ? p2pOutcome(
            alice,
            bob.identity.publicKey,
            AbortSignal.any([signal, AbortSignal.timeout(P2P_WAIT_MS)]),
          )
        : Promise.resolve<P2POutcome>({
            up: false,
            reason: { code: 'MESH_ERR_PEER_UNREACHABLE', message: 'P2P is off (--relay-only)' },
          })
      const message = await this.#message(alice, bob, 'hi bob', signal)
      const outcome = await p2p
      this.p2pUp = outcome.up
      return outcome.up
        ? { up: true, upMs: Math.max(0, Math.round(outcome.at - sentAt)), message }
        : { up: false, reason: outcome.reason, message }
    })

    await this.#step('dm', async (signal) => {
      const { alice, bob } = this.#peers
      return { message: await this.#message(alice, bob, 'how is it going?', signal) }
    })

    await this.#step('file', async (signal) => {
      const { alice, bob } = this.#peers
      const file = randomBytes(FILE_BYTES)
      const sent = sha256(file)
      let stopAccepting = (): void => undefined
      const received = new Promise<{
        sha256: string
        bytes: number
        chunks: number
        via: Record<string, number>
      }>((resolve, reject) => {
        stopAccepting = onStream(bob, async (stream) => {
          const hash = createHash('sha256')
          let bytes = 0
          for await (const chunk of stream) {
            hash.update(chunk)
            bytes += chunk.length
          }
          resolve({ sha256: hash.digest('hex'), bytes, chunks: stream.stats.chunks, via: stream.stats.via })
        })
        signal.addEventListener('abort', () => reject(signal.reason as Error), { once: true })
      })
      try {
        const stream = openStream(alice, bob.identity.publicKey, file, { signal })
        const [, got] = await Promise.all([stream.done, received])
        if (got.sha256 !== sent || got.bytes !== file.length) {
          throw new MeshError(
            'MESH_ERR_STREAM_PROTOCOL',
            `bob read ${got.bytes} bytes hashing to ${got.sha256}; alice sent ${file.length} hashing to ${sent}`,
          )
        }
        const chunksVia = transports(got.via)
        this.chunksVia = chunksVia
        const via = (Object.keys(chunksVia) as Transport[]).sort().join('+')
        return {
          bytes: got.bytes,
          chunks: got.chunks,
          via,
          chunksVia,
          sha256: got.sha256,
          sentSha256: sent,
          match: true,
        }
      } finally {
        stopAccepting()
      }
    })

    let queued: MessageJson | undefined
    await this.#step('offline', async (signal) => {
      const { alice, bob } = this.#peers
      const bobPk = bob.identity.publicKey
      const closed = this.p2pUp
        ? waitFor(events(alice), 'p2p', {
            signal: AbortSignal.any([signal, AbortSignal.timeout(P2P_CLOSE_WAIT_MS)]),
            filter: (event, pk) => event === 'closed' && bytesEqual(pk, bobPk),
          }).catch(() => undefined)
        : undefined
      await this.#world.closePeer('bob')
      this.#bob = undefined
      // Until alice sees the data channel close, a message could still be put on it (and resent later).
      await closed
      const text = 'are you there?'
      const sent = await alice.send(bobPk, { text }, { signal })
      const row = await outboxRow(alice, sent.clientMessageId, ['accepted', 'done', 'dead'], signal)
      if (row.state === 'dead') {
        const code = row.lastError?.code ?? 'MESH_ERR_INTERNAL'
        throw new MeshError(
          isMeshErrorCode(code) ? code : 'MESH_ERR_INTERNAL',
          row.lastError?.message ?? 'not sent',
        )
      }
      queued = { from: 'alice', to: 'bob', text, clientMessageId: sent.clientMessageId, via: 'relay' }
      return { message: { ...queued, state: row.state === 'accepted' ? 'queued' : 'delivered' } }
    })

    await this.#step('drained', async (signal) => {
      this.#bob = await this.#world.openPeer('bob')
      await connected(this.#bob, signal)
      const { alice, bob } = this.#peers
      const m = await nextMessage(bob, signal)
      if (m.clientMessageId !== queued!.clientMessageId) throw unexpected(m, queued!.clientMessageId)
      const via = transportOf(m.via)
      this.messagesVia[via]++
      const receipt = await outboxRow(
        alice,
        m.clientMessageId,
        ['done'],
        AbortSignal.any([signal, AbortSignal.timeout(RECEIPT_WAIT_MS)]),
      ).then(
        () => true,
        () => false,
      )
      return { message: { ...queued!, via }, receipt }
    })
  }

  /** Sends `{text}` from `from` to `to` and waits for it in `to`'s inbox: the message as it arrived. */
  async #message(from: Peer, to: Peer, text: string, signal: AbortSignal): Promise<MessageJson> {
    const sent = await from.send(to.identity.publicKey, { text }, { signal })
    const m = await nextMessage(to, signal)
    if (m.clientMessageId !== sent.clientMessageId) throw unexpected(m, sent.clientMessageId)
    const via = transportOf(m.via)
    this.messagesVia[via]++
    const [fromName, toName] =
      from === this.#alice?.peer ? (['alice', 'bob'] as const) : (['bob', 'alice'] as const)
    return { from: fromName, to: toName, text, clientMessageId: sent.clientMessageId, via }
  }

  /**
   * Runs one step with its timeout (and the stop signal), and reports it. A failure is reported and
   * thrown as a `DemoStepError` once the step's own work settled (or `SETTLE_MS` passed), so closing the
   * world does not race it.
   */
  async #step<K extends Exclude<StepName, 'summary'>>(
    step: K,
    work: (signal: AbortSignal) => Promise<StepDetails[K]>,
  ): Promise<StepDetails[K]> {
    const started = performance.now()
    const timeoutMs = TIMEOUT_MS[step]
    const signal = AbortSignal.any([this.#o.stop, AbortSignal.timeout(timeoutMs)])
    const running = work(signal)
    try {
      const details = await untilAborted(running, signal)
      this.passed++
      this.#o.report({ step, ok: true, ms: ms(started), ...details } as StepJson)
      return details
    } catch (err) {
      const failure = this.#o.stop.aborted
        ? { code: 'MESH_ERR_SHUTTING_DOWN' as const, message: 'interrupted (SIGINT or SIGTERM)' }
        : signal.aborted
          ? { code: 'MESH_ERR_WAIT_TIMEOUT' as const, message: `did not finish within ${timeoutMs / 1000} s` }
          : isMeshError(err) || err instanceof StartupError
            ? { code: err.code, message: err.message }
            : {
                code: 'MESH_ERR_INTERNAL' as const,
                message: err instanceof Error ? err.message : String(err),
              }
      this.#o.report({ step, ok: false, ms: ms(started), error: failure })
      await untilAborted(running, AbortSignal.timeout(SETTLE_MS)).catch(() => undefined)
      throw new DemoStepError(step, failure.code, failure.message, { cause: err })
    }
  }
}

/** Waits until the peer's hello was accepted, its mesh view caught up and its peers listed. */
async function connected(opened: MeshPeer, signal: AbortSignal): Promise<void> {
  const stopped = new Promise<never>((_resolve, reject) => {
    opened.peer.on('stopped', (err) =>
      reject(err ?? new MeshError('MESH_ERR_TRANSPORT_CLOSED', 'the connection stopped')),
    )
  })
  stopped.catch(() => undefined)
  await Promise.race([opened.peer.whenConnected(signal), stopped])
}

/** Lists peers from `by` until `peer`'s session is among them, online. */
async function sees(
  by: Peer,
  byName: DemoName,
  peer: Peer,
  peerName: DemoName,
  signal: AbortSignal,
): Promise<StepDetails['found']['seen'][number]> {
  for (;;) {
    const found = (await by.listPeers({ signal })).find((p) => bytesEqual(p.pk, peer.identity.publicKey))
    if (found?.online === true) {
      return { by: byName, peer: peerName, online: true, p2p: found.capabilities?.p2p === true }
    }
    // Presence is written as the hello is accepted; a list right after may not hold it yet.
    await new Promise((resolve) => setTimeout(resolve, 50))
    signal.throwIfAborted()
  }
}

type P2POutcome = { up: true; at: number } | { up: false; reason: { code: string; message: string } }

/** Resolves when `peer`'s P2P session to `pk` came into service, or with why not (never rejects). */
function p2pOutcome(peer: Peer, pk: Uint8Array, signal: AbortSignal): Promise<P2POutcome> {
  return new Promise((resolve) => {
    const onP2P = (event: string, from: Uint8Array, detail?: unknown): void => {
      if (!bytesEqual(from, pk)) return
      if (event === 'session') finish({ up: true, at: performance.now() })
      else if (event === 'handshake_failed' || event === 'refused') {
        const reason = isMeshError(detail)
          ? { code: detail.code, message: detail.message }
          : { code: 'MESH_ERR_SIGNAL_TIMEOUT', message: String(detail) }
        finish({ up: false, reason })
      }
    }
    const onAbort = (): void =>
      finish({
        up: false,
        reason: { code: 'MESH_ERR_WAIT_TIMEOUT', message: `no data channel within ${P2P_WAIT_MS / 1000} s` },
      })
    const finish = (outcome: P2POutcome): void => {
      peer.off('p2p', onP2P)
      signal.removeEventListener('abort', onAbort)
      resolve(outcome)
    }
    peer.on('p2p', onP2P)
    if (signal.aborted) onAbort()
    else signal.addEventListener('abort', onAbort, { once: true })
  })
}

/** The next dm in `peer`'s inbox (consumed as read). */
async function nextMessage(peer: Peer, signal: AbortSignal): Promise<InboundMessage> {
  for await (const m of peer.messages({ signal })) return m
  throw signal.reason
}

/** `peer`'s outbox row `id` once its state is one of `states`. */
async function outboxRow(
  peer: Peer,
  id: string,
  states: readonly OutboxState[],
  signal: AbortSignal,
): Promise<OutboxRow> {
  const changed = waitFor(events(peer), 'outbox', {
    signal,
    filter: (row) => row.id === id && states.includes(row.state),
  })
  changed.catch(() => undefined)
  const now = await peer.status(id)
  if (now !== undefined && states.includes(now.state)) return now
  const [row] = await changed
  return row
}

/** Rejects with the signal's reason when it aborts before `p` settles. */
function untilAborted<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason as Error)
  return new Promise((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason as Error)
    signal.addEventListener('abort', onAbort, { once: true })
    p.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort))
  })
}

/** `peer` as the typed emitter `waitFor` infers its events from. */
function events(peer: Peer): TypedEmitter<PeerEvents> {
  return peer
}

function transportOf(via: string): Transport {
  return via === 'p2p' ? 'p2p' : 'relay'
}

function transports(counts: Record<string, number>): Partial<Record<Transport, number>> {
  const out: Partial<Record<Transport, number>> = {}
  for (const [via, n] of Object.entries(counts)) out[transportOf(via)] = (out[transportOf(via)] ?? 0) + n
  return out
}

function unexpected(m: InboundMessage, expected: string): MeshError {
  return new MeshError(
    'MESH_ERR_UNKNOWN_MESSAGE',
    `expected message ${expected}, got ${m.clientMessageId} (${m.channel}) first`,
  )
}

function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex')
}

function ms(since: number): number {
  return Math.round(performance.now() - since)
}
