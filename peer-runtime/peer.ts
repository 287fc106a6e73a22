/**
 * `Peer`: one presence in one mesh, the piece a daemon, the CLI, the SDKs and a side-car stand on
 * (DESIGN.md §5). Platform neutral: the store, the WebSocket and (for P2P) `RTCPeerConnection` are
 * injected; `peer-runtime/node/` wires the Node ones.
 *
 * - It connects by itself and keeps reconnecting (`CoordinatorConnection`); a `Peer` exists and takes
 *   sends even while the coordinator is down.
 * - It keeps a verified copy of mesh state (`MeshView`, rooted in the pinned owner key) and seals only to
 *   keys that view vouches for (`PeerDirectory`): anything else is `MESH_ERR_UNKNOWN_KEY`.
 * - `send` seals, stores the sealed bytes in the outbox, and resolves; the outbox delivers them (P2P when
 *   a warm session exists, else through the coordinator) and retries the same bytes until a receiver or
 *   the coordinator's store has them.
 * - What arrives is stored in the inbox before it is acknowledged (`Inbox`), and read with `messages()`.
 */
import { attestedMember } from '../protocol/attestation.js'
import { BoxKeyCache } from '../protocol/box-key-cache.js'
import { systemClock, type Clock } from '../protocol/clock.js'
import { bytesEqual, fromHex, toHex } from '../protocol/encoding.js'
import {
  decodeEnvelope,
  isDirectChannel,
  type DirectChannel,
  type Envelope,
  type Meta,
} from '../protocol/envelope.js'
import { isMeshError, MeshError } from '../protocol/errors.js'
import type { Frame, FrameOf, PeerRecord } from '../protocol/frames.js'
import type { Capabilities, HelloRole } from '../protocol/hello.js'
import type { Identity } from '../protocol/keys.js'
import { encodeEnvelope } from '../protocol/envelope.js'
import { openSystemEnvelope, sealDirect, sealGroup } from '../protocol/seal.js'
import type { Signed } from '../protocol/signing.js'
import { ulidFactory } from '../protocol/ulid.js'
import { coordinatorSignalingChannel } from '../signaling/coordinator.js'
import { Emitter } from '../transports/emitter.js'
import type { PeerTransport } from '../transports/types.js'
import type { WebrtcTransportInit } from '../transports/webrtc/index.js'
import {
  CoordinatorConnection,
  type ConnectionOptions,
  type DownInfo,
  type SocketFactory,
} from './connection.js'
import { PeerDirectory, type KnownPeer } from './directory.js'
import { Inbox, type InboundMessage } from './inbox.js'
import { MeshView } from './mesh-view.js'
import { MeshViewSaver } from './mesh-view-saver.js'
import { AttestationRefresher } from './attestation-refresh.js'
import { fromError, fromP2PAck, fromSendAck } from './dispatch-result.js'
import { Outbox, type DispatchResult, type EnqueueOptions } from './outbox.js'
import { P2PManager, type P2PManagerInit } from './p2p/manager.js'
import { acquireRateGate, type RateGateLease, type RateGateStats } from './rate-gate.js'
import { recheckAccepted } from './receipt-recheck.js'
import { coalescingStore } from './store/coalescing.js'
import { StoreJanitor, type StoreJanitorOptions } from './store/janitor.js'
import type { InboxAckStatus, OutboxRow, RuntimeStore } from './store/types.js'

/** What the peer hands the P2P transport factory: everything but the platform's `RTCPeerConnection`. */
export type P2PTransportInit = Omit<WebrtcTransportInit, 'RTCPeerConnection'>

/** How P2P is set up; leave it out for a relay-only peer. */
export interface PeerWebrtcOptions {
  /**
   * Builds the P2P transport: `webrtcTransport({...init, RTCPeerConnection})` in a browser,
   * `nodeWebrtcTransport(init)` in Node (see `peer-runtime/node/node-peer.ts`).
   */
  transport: (init: P2PTransportInit) => PeerTransport
  iceServers?: RTCIceServer[]
  manager?: Partial<Omit<P2PManagerInit, 'self' | 'transport' | 'relay' | 'inbound' | 'reachable' | 'vouch'>>
}

export interface PeerOptions {
  /** The coordinator's WebSocket URL (`ws://127.0.0.1:7700/ws`). */
  url: string
  mesh: string
  /** Pinned from the invite: the mesh's owner key and the coordinator's key. */
  ownerPk: Uint8Array
  coordinatorPk: Uint8Array
  /** The presence key: a member key (control-plane), a session key or a service key. */
  identity: Identity
  role: HelloRole
  /** The session or service id. */
  sessionId?: string
  /** The session or service attestation, asked for at every hello (return a fresh one when it ages). */
  attestation?: () => Signed
  store: RuntimeStore
  socket: SocketFactory
  webrtc?: PeerWebrtcOptions
  clock?: Clock
  displayName?: string
  /** Connection timings and the reconnect policy (default: forever, 0.5 s to 5 s). */
  connection?: ConnectionOptions
  /**
   * Outbox tuning (tests shorten the backoff) and its water marks (`OUTBOX_WATER`: 1,000 rows high, half
   * of it low, 10,000 at most; see `outboxDepth`).
   */
  outbox?: {
    backoffBaseMs?: number
    backoffCapMs?: number
    concurrency?: number
    random?: () => number
    highWaterMark?: number
    lowWaterMark?: number
    maxDepth?: number
  }
  /** The TTL the attestation source mints with (default 12 h): the refresh comes at half of it. */
  attestationTtlMs?: number
  /** How long `send` waits to learn (and verify) a recipient it does not know yet. Default 30 s. */
  resolveTimeoutMs?: number
  /** How long live mesh changes wait to be saved together (default 1 s; a catch-up saves when it ends). */
  viewSaveDelayMs?: number
  /** The store's hourly pruning (`store/janitor.ts`): its timings, or false for none. Default on. */
  janitor?: false | Pick<StoreJanitorOptions, 'intervalMs' | 'firstPassMs' | 'chunk'>
}

/** What `stats()` reports: the outbox's depth and the relay's pacing, for callers and tests. */
export interface PeerStats {
  outboxDepth: number
  /** `send` frames this peer put on the wire (retries included). */
  relaySends: number
  /** Of those, how many the coordinator refused with `MESH_ERR_RATE_LIMITED`. */
  rateLimited: number
  /**
   * The rate gate this peer's relay sends pass, shared with the other presences of its member in this
   * process (see `peer-runtime/rate-gate.ts`); its counters are the gate's, summed over them all.
   */
  gate: RateGateStats
}

/** What `send` resolves with: the message is stored and on its way. */
export interface SendReceipt {
  clientMessageId: string
  /** The outbox row's state when `send` resolved (usually `pending`). */
  state: OutboxRow['state']
  /**
   * The request fingerprint on the stored row (`SendOptions.fingerprint`): another request's when the id
   * was already stored for it, so an idempotent caller tells a repeat from a conflict without a read.
   */
  fingerprint?: Uint8Array
}

export interface SendOptions {
  channel?: DirectChannel
  meta?: Meta
  /** Defaults to a fresh ULID. */
  clientMessageId?: string
  /** The request fingerprint of an idempotent IPC send, kept on the outbox row (the daemon compares it). */
  fingerprint?: Uint8Array
  /**
   * Wait until the outbox is below its high-water mark before storing, instead of failing with
   * `MESH_ERR_OUTBOX_FULL` when it is at its limit. `signal` ends the wait.
   */
  waitForRoom?: boolean
  signal?: AbortSignal
}

export interface PeerEvents {
  /** A message was stored in the inbox (read it with `messages()` to mark it consumed). */
  message: (message: InboundMessage) => void
  /** A message already in the inbox came again (a retry); carries the stored row. */
  duplicate: (message: InboundMessage) => void
  /** A hello was accepted (again). */
  connected: (ack: FrameOf<'hello_ack'>) => void
  disconnected: (info: DownInfo) => void
  /** A connection attempt failed before its hello was accepted (coordinator down, hello refused, wrong key). */
  failed: (info: DownInfo) => void
  /** The coordinator connection stopped for good (kicked, revoked, replaced, or `close()`). */
  stopped: (error?: MeshError) => void
  /** A presence event about a peer the view vouches for. */
  presence: (event: 'joined' | 'left' | 'updated', peer: KnownPeer) => void
  /** An outbox row changed state. */
  outbox: (row: OutboxRow) => void
  /** `outboxDepth` fell below the low-water mark after it had reached the high-water mark. */
  drain: () => void
  /** A background failure (a store write that failed); the work it belonged to is retried or left pending. */
  error: (error: unknown) => void
  /** P2P session changes and failures, for logs (a handshake that failed keeps the pair on the relay). */
  p2p: (
    event: 'session' | 'closed' | 'demoted' | 'handshake_failed' | 'refused',
    pk: Uint8Array,
    detail?: unknown,
  ) => void
  /** A presence record the view refused (the coordinator listed a key nobody vouched for). */
  refused: (record: PeerRecord, error: Error) => void
}

/** The member key whose rate bucket a presence spends: its own, or the member that attested it. */
function memberOf(o: PeerOptions): Uint8Array {
  if (o.role === 'control-plane' || o.attestation === undefined) return o.identity.publicKey
  try {
    return attestedMember(o.attestation())
  } catch {
    return o.identity.publicKey // no readable attestation: its own gate; the hello fails anyway
  }
}

export class Peer extends Emitter<PeerEvents> {
  readonly mesh: string
  readonly identity: Identity
  readonly #o: PeerOptions
  readonly #clock: Clock
  readonly #connection: CoordinatorConnection
  readonly #view: MeshView
  readonly #viewSaver: MeshViewSaver
  readonly #directory: PeerDirectory
  readonly #inbox: Inbox
  readonly #outbox: Outbox
  readonly #janitor: StoreJanitor | undefined
  /**
   * Ids this process drew itself for rows not yet given to the relay. The first relay send of such a row
   * says `first: true`, so the coordinator skips its committed-dedupe lookup; a retry, a row loaded from
   * disk or a caller's own clientMessageId never does (it may have been sent before). Sends that go
   * through the P2P manager's relay fallback are not flagged (it does not pass ids on).
   */
  readonly #firstSends = new Set<string>()
  readonly #nextId = ulidFactory()
  readonly #cache: BoxKeyCache
  #transport: PeerTransport | undefined
  #p2p: P2PManager | undefined
  #status: { status?: 'idle' | 'working' | 'dnd'; summary?: string } = {}
  #catchingUp: Promise<void> | undefined
  #peersLoaded: Promise<void> | undefined
  #started = false
  #closed = false
  /** Aborted by `close()`: ends sends waiting for room. */
  readonly #closing = new AbortController()
  /** The member whose bucket this presence spends on the coordinator (its own key, or its attester). */
  readonly #memberHex: string
  /** This peer's hold on the process's gate for its member, from `start()` to `close()`. */
  #gate: RateGateLease | undefined
  readonly #relayCounters = { relaySends: 0, rateLimited: 0 }
  readonly #refresher: AttestationRefresher | undefined
  /** Why the coordinator connection stopped for good (kicked, revoked, replaced), once it has. */
  #stopError: MeshError | undefined

  constructor(o: PeerOptions) {
    super()
    // One commit for a turn's outcomes and arrivals (store/coalescing.ts); a coalescing store is kept as is.
    o = { ...o, store: coalescingStore(o.store) }
    this.#o = o
    this.mesh = o.mesh
    this.identity = o.identity
    this.#clock = o.clock ?? systemClock
    this.#memberHex = toHex(memberOf(o))
    this.#cache = new BoxKeyCache(o.identity)
    this.#view = new MeshView({ mesh: o.mesh, ownerPk: o.ownerPk, coordinatorPk: o.coordinatorPk })
    this.#directory = new PeerDirectory(this.#view)
    this.#viewSaver = new MeshViewSaver({
      view: this.#view,
      store: o.store,
      clock: this.#clock,
      ...(o.viewSaveDelayMs !== undefined && { delayMs: o.viewSaveDelayMs }),
      onError: (err) => this.emit('error', err),
    })
    this.#inbox = new Inbox({
      store: o.store,
      mesh: o.mesh,
      me: o.identity,
      cache: this.#cache,
      clock: this.#clock,
    })
    this.#inbox.on('message', (m) => this.emit('message', m))
    this.#inbox.on('duplicate', (m) => this.emit('duplicate', m))
    this.#connection = new CoordinatorConnection({
      url: o.url,
      socket: o.socket,
      mesh: o.mesh,
      identity: o.identity,
      role: o.role,
      coordinatorPk: o.coordinatorPk,
      clock: this.#clock,
      capabilities: () => this.#capabilities(),
      ...(o.sessionId !== undefined && { sessionId: o.sessionId }),
      ...(o.attestation !== undefined && { attestation: o.attestation }),
      ...(o.connection !== undefined && { timings: o.connection }),
      ...(o.connection?.reconnect !== undefined && { reconnect: o.connection.reconnect }),
    })
    this.#refresher =
      o.attestation === undefined || o.role === 'control-plane'
        ? undefined
        : new AttestationRefresher({
            source: o.attestation,
            role: o.role,
            mesh: o.mesh,
            clock: this.#clock,
            ...(o.attestationTtlMs !== undefined && { ttlMs: o.attestationTtlMs }),
            send: async (attestation) => {
              if (!this.#connection.ready) return false
              await this.#connection.request({ t: 'attest_refresh', attestation })
              return true
            },
            onError: (err) => this.emit('error', err),
          })
    this.#connection.on('ready', (ack) => this.#onReady(ack))
    this.#connection.on('frame', (frame) => this.#onFrame(frame))
    this.#connection.on('down', (info) => this.emit('disconnected', info))
    this.#connection.on('failed', (info) => this.emit('failed', info))
    this.#connection.on('stopped', (err) => {
      this.#stopError = err
      this.emit('stopped', err)
    })
    this.#janitor =
      o.janitor === false
        ? undefined
        : new StoreJanitor({
            ...o.janitor,
            store: o.store,
            clock: this.#clock,
            onError: (err) => this.emit('error', err),
          })
    this.#outbox = new Outbox({
      store: o.store,
      clock: this.#clock,
      dispatch: (row, signal) => this.#dispatch(row, signal),
      retryAfterMs: (excess) => this.#drainEstimateMs(excess),
      ...o.outbox,
    })
    this.#outbox.on('state', (row) => this.emit('outbox', row))
    this.#outbox.on('drain', () => this.emit('drain'))
    this.#outbox.on('error', (err) => this.emit('error', err))
    if (o.webrtc !== undefined) this.#setUpP2P(o.webrtc)
  }

  /**
   * Recovers the outbox, loads the saved mesh view (so the catch-up asks only for newer events) and
   * starts connecting; resolves without waiting for the coordinator.
   */
  async start(): Promise<this> {
    if (this.#started) return this
    this.#started = true
    this.#gate = acquireRateGate(
      { url: this.#o.url, mesh: this.mesh, memberHex: this.#memberHex },
      { clock: this.#clock },
    )
    await this.#outbox.start()
    await this.#viewSaver.load()
    this.#janitor?.start()
    this.#connection.start()
    return this
  }

  /** The runtime store this peer was given (rpc keeps its answers there when it is durable). */
  get store(): RuntimeStore {
    return this.#o.store
  }

  /**
   * Messages in this peer's outbox not yet handed on: `pending` (due, or waiting for the link or a
   * retry) and `inflight`. A counter, cheap to read on every request. At the outbox's `maxDepth` a send
   * fails with `MESH_ERR_OUTBOX_FULL` (or waits, with `waitForRoom`); `drain` says when it went low again.
   */
  get outboxDepth(): number {
    return this.#outbox.depth
  }

  /** The outbox's depth and the relay's pacing counters (see `PeerStats`). */
  stats(): PeerStats {
    return {
      outboxDepth: this.#outbox.depth,
      ...this.#relayCounters,
      gate: this.#gate?.gate.stats ?? { passed: 0, waited: 0, waitedMs: 0, pauses: 0, queued: 0 },
    }
  }

  /** True while the coordinator connection is up. */
  get connected(): boolean {
    return this.#connection.ready
  }

  /** The version of mesh state this peer has verified and applied. */
  get stateVersion(): number {
    return this.#view.version
  }

  /** Counters of the P2P manager (undefined for a relay-only peer). */
  get p2pCounters(): P2PManager['counters'] | undefined {
    return this.#p2p?.counters
  }

  /** True when a verified P2P session to `pk` is open (messages to it go peer to peer). */
  p2pWarm(pk: Uint8Array): boolean {
    return this.#p2p?.warm(pk) ?? false
  }

  /** Resolves when the coordinator connection is up, mesh state caught up and the peers listed. */
  async whenConnected(signal?: AbortSignal): Promise<void> {
    await this.#connection.whenReady(signal)
    await this.#catchingUp
    await this.#peersLoaded
  }

  /**
   * Seals `payload` to `to` (a key the mesh view vouches for), stores the sealed bytes in the outbox and
   * resolves; delivery goes on in the background (watch `status(id)` or the `outbox` event). A recipient
   * not known yet is looked up once connected (up to `resolveTimeoutMs`); one the roster does not vouch
   * for is refused with `MESH_ERR_UNKNOWN_KEY` (nothing is stored).
   */
  async send(to: Uint8Array | string, payload: unknown, o: SendOptions = {}): Promise<SendReceipt> {
    this.#assertOpen()
    const pk = typeof to === 'string' ? fromHex(to) : to
    if (pk === null || pk.length !== 32) {
      throw new MeshError('MESH_ERR_MALFORMED_KEY', 'a recipient is a 32-byte key (64 hex characters)')
    }
    const peer = await this.#resolve(pk, o.signal)
    const clientMessageId = o.clientMessageId ?? this.#nextId()
    const channel = o.channel ?? 'dm'
    const env = sealDirect(
      {
        mesh: this.mesh,
        channel,
        from: this.identity,
        to: peer.pk,
        clientMessageId,
        payload,
        ...(o.meta !== undefined && { meta: o.meta }),
      },
      { cache: this.#cache },
    )
    const now = this.#clock.now()
    const row = await this.#outbox.enqueue(
      {
        id: clientMessageId,
        mesh: this.mesh,
        from: this.identity.publicKey,
        target: toHex(peer.pk),
        channel,
        envelope: this.#encodeOwn(env, o.clientMessageId === undefined),
        createdAt: now,
        ...(o.fingerprint !== undefined && { fingerprint: o.fingerprint }),
      },
      this.#room(o),
    )
    return {
      clientMessageId,
      state: row.state,
      ...(row.fingerprint !== undefined && { fingerprint: row.fingerprint }),
    }
  }

  /**
   * Seals `payload` once for every member of group `@name` (or of the mesh, `*`) as the verified mesh
   * view lists them, stores it and resolves; the coordinator delivers one copy per member (online at
   * once, offline later) and the row's `recipients` fill in per member. A group the view does not know is
   * `MESH_ERR_UNKNOWN_GROUP`; if the coordinator's roster moved on meanwhile the row ends `dead` with
   * `MESH_ERR_STALE_ROSTER` (send again: it is sealed to the newer roster).
   */
  async sendGroup(
    target: string,
    payload: unknown,
    o: Omit<SendOptions, 'channel'> = {},
  ): Promise<SendReceipt> {
    this.#assertOpen()
    if (target !== '*' && !/^@[A-Za-z0-9_.-]{1,64}$/.test(target)) {
      throw new MeshError('MESH_ERR_INVALID_ENVELOPE', 'a group target is `@name` or `*`', {
        details: { target },
      })
    }
    await this.#catchingUp
    const state = this.#view.state
    const members = target === '*' ? state.memberHexes() : [...(state.groups.get(target.slice(1)) ?? [])]
    if (target !== '*' && !state.groups.has(target.slice(1))) {
      throw new MeshError('MESH_ERR_UNKNOWN_GROUP', `no group ${target} in the verified mesh state`, {
        details: { group: target, stateVersion: state.version },
      })
    }
    const recipients = members.filter((hex) => state.isMember(hex)).map((hex) => fromHex(hex)!)
    const clientMessageId = o.clientMessageId ?? this.#nextId()
    const env = sealGroup({
      mesh: this.mesh,
      from: this.identity,
      target,
      recipients,
      rosterVersion: state.version,
      clientMessageId,
      payload,
      ...(o.meta !== undefined && { meta: o.meta }),
    })
    const row = await this.#outbox.enqueue(
      {
        id: clientMessageId,
        mesh: this.mesh,
        from: this.identity.publicKey,
        target,
        channel: 'group',
        envelope: this.#encodeOwn(env, o.clientMessageId === undefined),
        createdAt: this.#clock.now(),
      },
      this.#room(o),
    )
    return { clientMessageId, state: row.state }
  }

  /** The outbox row of a message this peer sent, with its per-recipient states. */
  status(clientMessageId: string): Promise<OutboxRow | undefined> {
    return this.#outbox.status(clientMessageId)
  }

  /** Resolves once nothing in the outbox is pending or in flight. */
  settled(signal?: AbortSignal): Promise<void> {
    return this.#outbox.idle(signal)
  }

  /**
   * The inbox in arrival order, from the oldest message not yet consumed; ends when `signal` aborts.
   * Reads `dm` and `group` messages unless `channels` says otherwise.
   */
  messages(
    o: { signal?: AbortSignal; channels?: readonly DirectChannel[] } = {},
  ): AsyncGenerator<InboundMessage> {
    return this.#inbox.messages(o)
  }

  /** Marks inbox rows consumed (handlers of `rpc` and `stream` messages, which `messages()` skips). */
  consume(seqs: readonly number[]): Promise<void> {
    return this.#inbox.consume(seqs)
  }

  /**
   * Asks the coordinator for the mesh's presences and returns those the mesh view vouches for (the
   * others are reported through the `refused` event). Needs the connection: `MESH_ERR_DISCONNECTED`.
   */
  async listPeers(
    o: { includeOffline?: boolean; includeDaemons?: boolean; signal?: AbortSignal } = {},
  ): Promise<KnownPeer[]> {
    await this.#catchingUp
    const reply = await this.#connection.request(
      {
        t: 'list_peers',
        ...(o.includeOffline !== undefined && { includeOffline: o.includeOffline }),
        ...(o.includeDaemons !== undefined && { includeDaemons: o.includeDaemons }),
      },
      o.signal === undefined ? {} : { signal: o.signal },
    )
    const now = this.#clock.now()
    const known: KnownPeer[] = []
    for (const record of reply.peers) {
      if (bytesEqual(record.pk, this.identity.publicKey)) continue
      const taken = this.#directory.take(record, now)
      if ('error' in taken) this.emit('refused', record, taken.error)
      else known.push(taken)
    }
    return known
  }

  /** Sets this presence's status and summary (sent now, and again after every reconnect). */
  setStatus(status: 'idle' | 'working' | 'dnd', summary?: string): void {
    this.#status = { status, ...(summary !== undefined && { summary }) }
    if (this.#connection.ready) this.#connection.send({ t: 'set_status', ...this.#status })
  }

  /** Stops sending, closes P2P sessions and the coordinator connection. The store stays open (the caller's). */
  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    this.#closing.abort(new MeshError('MESH_ERR_TRANSPORT_CLOSED', 'the peer is closed'))
    this.#refresher?.cancel()
    // Before anything else that may let the caller close the store: a pass in progress ends first.
    await this.#janitor?.stop()
    await this.#outbox.stop()
    await this.#p2p?.close()
    await this.#transport?.close()
    await this.#connection.close()
    this.#gate?.release()
    await this.#viewSaver.flush()
  }

  // ── wiring ─────────────────────────────────────────────────────────────────

  #setUpP2P(w: PeerWebrtcOptions): void {
    const signaling = coordinatorSignalingChannel({
      self: this.identity.publicKey,
      send: (frame) => this.#connection.send(frame),
      onFrame: (listener) => {
        this.#connection.on('frame', listener)
        return () => void this.#connection.off('frame', listener)
      },
    })
    const vouch = (pk: Uint8Array): boolean => this.#directory.get(pk, this.#clock.now()) !== undefined
    const transport = w.transport({
      identity: this.identity,
      mesh: this.mesh,
      signaling,
      vouch,
      clock: this.#clock,
      ...(w.iceServers !== undefined && { iceServers: w.iceServers }),
    })
    this.#transport = transport
    this.#p2p = new P2PManager({
      ...w.manager,
      self: { mesh: this.mesh, pk: this.identity.publicKey },
      transport,
      clock: this.#clock,
      relay: (envelope, signal) => this.#relaySend(envelope, signal),
      inbound: (envelope, from) => this.#takeP2P(envelope, from),
      reachable: (pk) => this.#connection.ready && this.#directory.reachableP2P(pk, this.#clock.now()),
      vouch,
    })
    const p2p = this.#p2p
    p2p.on('session', (pk, dialed) => this.emit('p2p', 'session', pk, { dialed }))
    p2p.on('sessionClosed', (pk) => this.emit('p2p', 'closed', pk))
    p2p.on('demoted', (pk, reason, resent) => this.emit('p2p', 'demoted', pk, { reason, resent }))
    p2p.on('handshakeFailed', (pk, error) => this.emit('p2p', 'handshake_failed', pk, error))
    if ('onRefused' in transport && typeof transport.onRefused === 'function') {
      ;(transport as { onRefused: (l: (err: MeshError, pk: Uint8Array) => void) => void }).onRefused(
        (err, pk) => this.emit('p2p', 'refused', pk, err),
      )
    }
  }

  #capabilities(): Capabilities {
    const p2p = this.#p2p !== undefined
    return {
      p2p,
      transports: p2p ? ['ws', 'webrtc'] : ['ws'],
      ...this.#status,
      ...(this.#o.displayName !== undefined && { displayName: this.#o.displayName }),
    }
  }

  #onReady(ack: FrameOf<'hello_ack'>): void {
    this.#gate?.gate.configure(ack.limits.rate?.member)
    this.emit('connected', ack)
    this.#refresher?.schedule()
    this.#catchingUp = this.#catchUp(ack.stateVersion).catch(() => undefined)
    this.#peersLoaded = this.#catchingUp
      .then(() => this.listPeers({ includeOffline: true, includeDaemons: true }).then(() => undefined))
      .catch(() => undefined)
    this.#outbox.wake()
    void this.#recheck()
  }

  /** After a hello: the `accepted` rows are sent again, for the receipts given while this peer was away. */
  async #recheck(): Promise<void> {
    const signal = this.#closing.signal
    try {
      await recheckAccepted(
        {
          accepted: () => this.#o.store.listOutbox(['accepted'], Number.MAX_SAFE_INTEGER),
          send: (envelope, signal) => this.#connection.request({ t: 'send', envelope }, { signal }),
          receipt: (id, hex, state) => this.#outbox.receipt(id, hex, state),
          ready: () => this.#connection.ready,
        },
        signal,
      )
    } catch (err) {
      if (!signal.aborted) this.emit('error', err)
    }
  }

  /**
   * Asks `mesh_events` until the view reaches `target` (1,000 events a page), then saves the view once.
   * A view restored from the store is dropped for a full replay when the coordinator's log no longer
   * holds it: the coordinator reports a lower version and its log lacks our last event (restored from a
   * backup), or the events after our version do not apply on it.
   */
  async #catchUp(target: number): Promise<void> {
    const view = this.#view
    const before = view.version
    let replayed = false
    if (view.version > target) {
      const reply = await this.#connection.request({ t: 'mesh_events', since: view.version - 1 })
      // A stale `stateVersion` from a coordinator's cache: our event is in its log, nothing to fetch.
      if (view.logHolds(reply.events)) return
      view.reset()
      replayed = true
    }
    while (view.version < target) {
      const reply = await this.#connection.request({ t: 'mesh_events', since: view.version })
      let applied: number
      try {
        applied = view.applyEvents(reply.events).applied
      } catch (err) {
        if (!view.restored) throw err
        view.reset()
        replayed = true
        continue
      }
      if (applied === 0) break
    }
    if (view.version !== before || replayed) {
      this.#viewSaver.changed()
      await this.#viewSaver.flush()
    }
  }

  #onFrame(frame: Frame): void {
    switch (frame.t) {
      case 'push':
        void this.#onPush(frame)
        return
      case 'delivery_receipt':
        this.#outbox
          .receipt(frame.clientMessageId, toHex(frame.recipient), frame.status)
          .catch((err: unknown) => this.emit('error', err))
        return
      case 'presence':
        this.#onPresence(frame)
        return
      default:
        return
    }
  }

  async #onPush(push: FrameOf<'push'>): Promise<void> {
    let env: Envelope
    try {
      env = decodeEnvelope(push.envelope)
    } catch {
      this.#ack(push.deliveryId, 'rejected')
      return
    }
    if (env.channel === 'system') {
      this.#onSystem(env)
      return
    }
    if (env.channel === 'topic') return // no subscriptions yet: a topic push is not ours to ack
    // A group copy carries only our key box (the coordinator keeps one per member); a DM names our key.
    const forUs =
      env.channel === 'group'
        ? env.keys?.[toHex(this.identity.publicKey)] !== undefined
        : isDirectChannel(env.channel) &&
          env.target instanceof Uint8Array &&
          bytesEqual(env.target, this.identity.publicKey)
    if (!forUs) {
      this.#ack(push.deliveryId, 'rejected')
      return
    }
    try {
      await this.#inbox.take(push.envelope, {
        via: 'relay',
        deliveryId: push.deliveryId,
        ack: (status) => this.#ack(push.deliveryId, status),
      })
    } catch {
      // The store failed: no ack, so the coordinator pushes it again after the claim lease.
    }
  }

  async #takeP2P(envelope: Uint8Array, from: Uint8Array): Promise<InboxAckStatus> {
    let status: InboxAckStatus = 'rejected'
    const env = (() => {
      try {
        return decodeEnvelope(envelope)
      } catch {
        return undefined
      }
    })()
    if (
      env === undefined ||
      !bytesEqual(env.from, from) ||
      !(env.target instanceof Uint8Array) ||
      !bytesEqual(env.target, this.identity.publicKey)
    ) {
      return 'rejected'
    }
    // A volatile store acks relay pushes on consumption, but over P2P the sender demotes after 3 s without
    // an ack, so P2P deliveries are acked once stored (docs/ARCHITECTURE.md departure 20).
    await this.#inbox.take(envelope, { via: 'p2p', ackOnStore: true, ack: (s) => (status = s) })
    return status
  }

  #onSystem(env: Envelope): void {
    let event
    try {
      const [mesh, version, prevVersion, kind, body] = openSystemEnvelope(env, this.#o.coordinatorPk)
      event = { mesh, version, prevVersion, kind, body }
    } catch {
      return
    }
    try {
      const { applied, gap } = this.#view.applyEvent(event, env.sig)
      if (applied > 0) this.#viewSaver.changed()
      if (gap) this.#catchingUp = this.#catchUp(event.version).catch(() => undefined)
    } catch {
      // An event the view refuses (not authorised by the roster) changes nothing.
    }
  }

  #onPresence(frame: FrameOf<'presence'>): void {
    const now = this.#clock.now()
    if (bytesEqual(frame.peer.pk, this.identity.publicKey)) return
    if (frame.event === 'left') {
      const peer = this.#directory.markOffline(frame.peer.pk)
      if (peer !== undefined) this.emit('presence', 'left', peer)
      return
    }
    const taken = this.#directory.take(frame.peer, now)
    if ('error' in taken) this.emit('refused', frame.peer, taken.error)
    else this.emit('presence', frame.event, taken)
  }

  #ack(deliveryId: string, status: InboxAckStatus): void {
    if (!this.#connection.ready) return
    try {
      this.#connection.send({ t: 'client_ack', deliveryId, status })
    } catch {
      // Gone: the coordinator releases the claim and pushes again.
    }
  }

  /** A recipient the view vouches for: known, or learnt from `list_peers` once connected. */
  async #resolve(pk: Uint8Array, signal: AbortSignal | undefined): Promise<KnownPeer> {
    const known = this.#directory.get(pk, this.#clock.now())
    if (known !== undefined) return known
    const timeoutMs = this.#o.resolveTimeoutMs ?? 30_000
    const deadline = AbortSignal.timeout(timeoutMs)
    const wait = signal === undefined ? deadline : AbortSignal.any([signal, deadline])
    try {
      await this.whenConnected(wait)
      const again = this.#directory.get(pk, this.#clock.now())
      if (again !== undefined) return again
      await this.listPeers({ includeOffline: true, includeDaemons: true, signal: wait })
    } catch (err) {
      if (signal?.aborted === true) throw signal.reason
      if (!deadline.aborted && isMeshError(err) && err.code !== 'MESH_ERR_DISCONNECTED') throw err
    }
    const found = this.#directory.get(pk, this.#clock.now())
    if (found !== undefined) return found
    throw new MeshError('MESH_ERR_UNKNOWN_KEY', `no verified presence for key ${toHex(pk).slice(0, 12)}…`, {
      details: { pk: toHex(pk), connected: this.#connection.ready },
    })
  }

  /** The outbox's transport step for one row: P2P or relay, and what the answer means for the row. */
  async #dispatch(row: OutboxRow, signal: AbortSignal): Promise<DispatchResult> {
    // Taken on the first dispatch, whatever its path: any later one is a retry.
    const first = this.#firstSends.delete(row.id)
    const pk = fromHex(row.target)
    const fanOut = row.channel === 'group' && (row.target === '*' || row.target.startsWith('@'))
    if (!fanOut && (pk === null || !isDirectChannel(row.channel))) {
      return {
        kind: 'dead',
        error: { code: 'MESH_ERR_INVALID_ENVELOPE', message: 'the row has no valid target' },
      }
    }
    try {
      // Group and broadcast copies are made by the coordinator: always the relay.
      if (this.#p2p !== undefined && pk !== null && !fanOut) {
        // `via` says which transport answered: a session demoted mid-send settles with the relay's ack.
        const delivery = await this.#p2p.deliver(pk, row.id, row.envelope, signal)
        if (delivery.via === 'p2p') return fromP2PAck(delivery.status, row.target)
        return fromSendAck(delivery.ack, row.target)
      }
      if (!this.#connection.ready) {
        if (first) this.#firstSends.add(row.id) // nothing went out: the next try is still the first
        return {
          kind: 'retry',
          counted: false,
          error: { code: 'MESH_ERR_DISCONNECTED', message: 'waiting for the coordinator' },
        }
      }
      const ack = await this.#relaySend(row.envelope, signal, first)
      return fromSendAck(ack, row.target)
    } catch (err) {
      return fromError(err)
    }
  }

  /** Encodes `env`; `drawnHere` when its clientMessageId came from this process (see #firstSends). */
  #encodeOwn(env: Envelope, drawnHere: boolean): Uint8Array {
    if (drawnHere) this.#firstSends.add(env.clientMessageId)
    return encodeEnvelope(env)
  }

  /**
   * One relay send of `envelope`; `first` when no coordinator can have seen its id (see #firstSends).
   * Every `send` frame passes the member's rate gate first. A `MESH_ERR_RATE_LIMITED` that comes anyway
   * (another process of the member spent the bucket) pauses the gate for everyone for its
   * `retryAfterMs`, and this send waits its turn again in the gate: the row stays in flight rather than
   * keeping a timer of its own.
   */
  async #relaySend(envelope: Uint8Array, signal: AbortSignal, first = false): Promise<FrameOf<'send_ack'>> {
    for (let again = false; ; again = true) {
      await this.#gate?.gate.take(envelope.byteLength, signal)
      this.#relayCounters.relaySends++
      try {
        // A refused send was given to the coordinator: a resend no longer claims to be the first.
        const flag = first && !again
        return await this.#connection.request({ t: 'send', envelope, ...(flag && { first }) }, { signal })
      } catch (err) {
        if (!isMeshError(err, 'MESH_ERR_RATE_LIMITED') || this.#gate === undefined) throw err
        this.#relayCounters.rateLimited++
        const after = err.details?.['retryAfterMs']
        this.#gate.gate.pause(typeof after === 'number' && Number.isFinite(after) ? after : 1_000)
        if (!this.#connection.ready || signal.aborted) throw err
      }
    }
  }

  /** How long the outbox needs to shed `excess` rows at the announced pace (an `OUTBOX_FULL` hint). */
  #drainEstimateMs(excess: number): number {
    const perSecond = this.#gate?.gate.pace?.messagesPerSecond ?? 100
    return Math.min(60_000, Math.max(100, (excess / perSecond) * 1000))
  }

  /** How a send meets a full outbox: wait (until the peer closes or the caller's signal), or fail. */
  #room(o: SendOptions): EnqueueOptions {
    if (o.waitForRoom !== true) return {}
    const closing = this.#closing.signal
    return {
      waitForRoom: true,
      signal: o.signal === undefined ? closing : AbortSignal.any([o.signal, closing]),
    }
  }

  #assertOpen(): void {
    if (this.#closed) throw new MeshError('MESH_ERR_TRANSPORT_CLOSED', 'the peer is closed')
    // Kicked, revoked or replaced: nothing sent now could go anywhere.
    if (this.#stopError !== undefined) throw this.#stopError
    if (!this.#started) throw new MeshError('MESH_ERR_TRANSPORT_CLOSED', 'call start() before send()')
  }
}
