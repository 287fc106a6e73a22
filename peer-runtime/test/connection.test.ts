import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import {
  createIdentity,
  initCrypto,
  ManualClock,
  mintSessionAttestation,
  systemClock,
  toHex,
  type Clock,
  type Frame,
  type MeshError,
  type Signed,
} from '../../protocol/index.js'
import { worldsPerTest } from '../../test/support/coordinator-world.js'
import { eventually } from '../../test/support/eventually.js'
import { closePeers, memberPeer, sessionPeer } from '../../test/support/peer-world.js'
import { rejectionCode } from '../../test/support/rejection.js'
import {
  CoordinatorConnection,
  type ConnectionTimings,
  type DownInfo,
  type ReconnectPolicy,
  type RetryInfo,
} from '../connection.js'
import { attestationSource } from '../node/home.js'
import { wsSocketFactory } from '../node/node-peer.js'
import type { Peer } from '../peer.js'
import { scriptedCoordinator, type ScriptedCoordinator } from './scripted-coordinator.js'

/** The error a peer's connection stops with (kicked, revoked, replaced). */
function stoppedOf(peer: Peer): Promise<MeshError | undefined> {
  return new Promise((resolve) => peer.once('stopped', resolve))
}

// The connection's rules do not depend on the store driver: PGlite only.
describe("the peer runtime's coordinator connection", () => {
  const start = worldsPerTest('pglite')
  afterEach(closePeers)

  it('kicked (4001): stops for good with a code, no reconnect', async () => {
    const world = await start()
    const member = await world.member('m')
    const peer = await sessionPeer(world, member, { sessionId: 'kicked' })
    await peer.whenConnected()
    const owner = await world.connectMember(world.owner)
    const stopped = stoppedOf(peer)
    expect((await owner.admin('kick', { pk: peer.identity.publicKey })).result).toEqual({ kicked: true })
    const err = await stopped
    expect(err?.code).toBe('MESH_ERR_NOT_AUTHORIZED')
    expect(peer.connected).toBe(false)
    expect(await rejectionCode(peer.send(member.publicKey, 'after the kick'))).toBe('MESH_ERR_NOT_AUTHORIZED')
  })

  it('revoked (4002): stops with MESH_ERR_REVOKED', async () => {
    const world = await start()
    const member = await world.member('doomed')
    const peer = await memberPeer(world, member)
    await peer.whenConnected()
    const owner = await world.connectMember(world.owner)
    const stopped = stoppedOf(peer)
    await owner.admin('revoke', { pk: member.publicKey })
    const err = await stopped
    expect(err?.code).toBe('MESH_ERR_REVOKED')
  })

  it('replaced (4003) by another process holding the same key: the older one stops with MESH_ERR_SESSION_REPLACED, the newer stays', async () => {
    const world = await start()
    const member = await world.member('m')
    const first = await sessionPeer(world, member, { sessionId: 'twice' })
    await first.whenConnected()
    const stopped = stoppedOf(first)
    const second = await sessionPeer(world, member, { sessionId: 'twice', identity: first.identity })
    await second.whenConnected()
    const err = await stopped
    expect(err?.code).toBe('MESH_ERR_SESSION_REPLACED')
    expect(second.connected).toBe(true)
    expect(first.connected).toBe(false)
  })

  it('refuses a coordinator whose key is not the pinned one, and keeps trying', async () => {
    const world = await start()
    const member = await world.member('m')
    const failures: DownInfo[] = []
    const peer = await sessionPeer(world, member, {
      coordinatorPk: createIdentity('coordinator').publicKey,
      onFailed: (info) => failures.push(info),
    })
    await expect.poll(() => failures.length, { timeout: 10_000 }).toBeGreaterThan(1)
    expect(failures[0]?.error?.code).toBe('MESH_ERR_COORDINATOR_MISMATCH')
    expect(failures[0]?.error?.details).toMatchObject({ got: toHex(world.coordinatorIdentity.publicKey) })
    expect(peer.connected).toBe(false)
  })

  it('a hello the coordinator refuses is reported with its code (an attestation by another member)', async () => {
    const world = await start()
    const member = await world.member('m')
    const failures: DownInfo[] = []
    const peer = await sessionPeer(world, member, {
      attestedBy: createIdentity('member'),
      onFailed: (info) => failures.push(info),
    })
    // Not a member: retrying cannot fix that, so the connection stops, once three hellos in a row were
    // refused (one node's roster may briefly lag another's).
    await expect(peer.whenConnected(AbortSignal.timeout(10_000))).rejects.toMatchObject({
      code: 'MESH_ERR_UNKNOWN_KEY',
    })
    expect(failures.map((f) => f.error?.code)).toEqual([
      'MESH_ERR_UNKNOWN_KEY',
      'MESH_ERR_UNKNOWN_KEY',
      'MESH_ERR_UNKNOWN_KEY',
    ])
  })

  it('a revoked member that dials again is refused with 4002 and stops (MESH_ERR_REVOKED), no retry loop', async () => {
    const world = await start()
    const member = await world.member('gone')
    const owner = await world.connectMember(world.owner)
    await owner.admin('revoke', { pk: member.publicKey })
    const failures: DownInfo[] = []
    const peer = await memberPeer(world, member, { onFailed: (info) => failures.push(info) })
    await expect(peer.whenConnected(AbortSignal.timeout(10_000))).rejects.toMatchObject({
      code: 'MESH_ERR_REVOKED',
    })
    expect(failures.map((f) => [f.code, f.error?.code])).toEqual([[4002, 'MESH_ERR_REVOKED']])
  })

  it('re-mints the session attestation at half its TTL and sends attest_refresh; the coordinator hands out the new one', async () => {
    const world = await start()
    const member = await world.member('m')
    const clock = new ManualClock(world.clock.now())
    const key = createIdentity('session')
    const minted: Signed[] = []
    const source = (): Signed => {
      const att = mintSessionAttestation({
        mesh: world.mesh,
        member,
        sessionPk: key.publicKey,
        sessionId: 'long',
        now: clock.now(),
      })
      minted.push(att)
      return att
    }
    const peer = await sessionPeer(world, member, {
      sessionId: 'long',
      identity: key,
      clock,
      attestation: source,
    })
    await peer.whenConnected()
    const before = minted.length
    await clock.advance(6 * 60 * 60 * 1000)
    await expect
      .poll(
        async () => {
          const rows = await world.store.query<{ attestation_sig: Uint8Array }>(
            'select attestation_sig from presence where pk = $1',
            [key.publicKey],
          )
          return toHex(rows[0]!.attestation_sig) === toHex(minted.at(-1)!.sig) && minted.length > before
        },
        { timeout: 10_000 },
      )
      .toBe(true)
    expect(peer.connected).toBe(true)
  })
})

/**
 * A ManualClock whose reading can jump ahead without firing anything, like a machine waking from sleep:
 * the wall clock moved, and timers set before the sleep fire late, when the clock next advances.
 */
class SleepyClock extends ManualClock {
  #slept = 0
  override now(): number {
    return super.now() + this.#slept
  }
  sleep(ms: number): void {
    this.#slept += ms
  }
}

describe('a laptop asleep for more than 12 h', () => {
  const start = worldsPerTest('pglite')
  afterEach(closePeers)

  it('re-mints the session attestation for the hello after waking (never presents the expired one)', async () => {
    const coordinatorClock = new SleepyClock(Date.now())
    const world = await start({ clock: coordinatorClock })
    const member = await world.member('m')
    const clock = new SleepyClock(coordinatorClock.now())
    const key = createIdentity('session')
    const minted: Signed[] = []
    const source = attestationSource({
      mesh: world.mesh,
      member,
      session: key,
      sessionId: 'sleepy',
      now: () => clock.now(),
    })
    const peer = await sessionPeer(world, member, {
      sessionId: 'sleepy',
      identity: key,
      clock,
      attestation: () => {
        const att = source()
        if (minted.at(-1) !== att) minted.push(att)
        return att
      },
    })
    await peer.whenConnected(AbortSignal.timeout(10_000))
    expect(minted).toHaveLength(1)
    const refusals: string[] = []
    peer.on('failed', (info) => refusals.push(info.error?.code ?? String(info.code)))

    // 13 hours asleep: both clocks jump, no timer fired meanwhile.
    coordinatorClock.sleep(13 * 3_600_000)
    clock.sleep(13 * 3_600_000)
    // The coordinator heard nothing for all that time: its stale rule drops the socket, and the runtime,
    // awake again, dials anew.
    let down = false
    peer.once('disconnected', () => (down = true))
    for (let i = 0; i < 40 && !down; i++) {
      await coordinatorClock.advance(5_000)
      await new Promise((resolve) => setTimeout(resolve, 10))
    }
    expect(down).toBe(true)
    for (let i = 0; i < 100 && !peer.connected; i++) {
      await clock.advance(100)
      await new Promise((resolve) => setTimeout(resolve, 10))
    }
    expect(peer.connected).toBe(true)
    expect(refusals).not.toContain('MESH_ERR_EXPIRED')
    expect(minted).toHaveLength(2)
    const rows = await world.store.query<{ attestation_sig: Uint8Array }>(
      'select attestation_sig from presence where pk = $1',
      [key.publicKey],
    )
    expect(toHex(rows[0]!.attestation_sig)).toBe(toHex(minted[1]!.sig))
  })
})

/** A connection to `coordinator` with short timings; closed after the test. */
function dial(
  coordinator: ScriptedCoordinator,
  o: { timings?: Partial<ConnectionTimings>; reconnect?: Partial<ReconnectPolicy>; clock?: Clock } = {},
): CoordinatorConnection {
  const conn = new CoordinatorConnection({
    url: coordinator.url,
    socket: wsSocketFactory,
    mesh: 'scripted',
    identity: createIdentity('member'),
    role: 'control-plane',
    capabilities: () => ({ p2p: false, transports: ['ws-relay'] }),
    coordinatorPk: coordinator.identity.publicKey,
    clock: o.clock ?? systemClock,
    timings: { backoffBaseMs: 10, backoffCapMs: 20, ...o.timings },
    ...(o.reconnect !== undefined && { reconnect: o.reconnect }),
  })
  conns.push(conn)
  conn.start()
  return conn
}
const conns: CoordinatorConnection[] = []
beforeAll(() => initCrypto())

describe('the connection against a scripted coordinator (half-dead links, out-of-order replies)', () => {
  let coordinator: ScriptedCoordinator
  beforeEach(async () => {
    coordinator = await scriptedCoordinator()
  })
  afterEach(async () => {
    for (const c of conns.splice(0)) await c.close()
    await coordinator.close()
  })

  it('pings when idle, and drops and re-dials a coordinator that stops answering (ping/stale rule)', async () => {
    const conn = dial(coordinator, { timings: { pingMs: 40, staleMs: 200 } })
    await conn.whenReady(AbortSignal.timeout(5_000))
    const first = coordinator.sockets[0]!
    // Answered pings keep it alive: several ping periods pass and it stays on the first socket.
    await eventually(() => first.frames.filter((f) => f.t === 'ping').length >= 8, { timeoutMs: 5_000 })
    expect(coordinator.sockets).toHaveLength(1)
    const downs: DownInfo[] = []
    conn.on('down', (info) => downs.push(info))
    first.silent = true
    await first.closed
    expect(downs).toHaveLength(1)
    expect(downs[0]?.reason).toBe('stale')
    await eventually(() => coordinator.sockets.length === 2 && conn.ready, { timeoutMs: 5_000 })
  })

  it('matches replies by reqId: two requests in flight answered in reverse order each get their own', async () => {
    const held: Frame[] = []
    coordinator.onFrame = (socket, frame) => {
      if (frame.t !== 'subscribe') return
      held.push(frame)
      if (held.length < 2) return
      for (const f of held.reverse()) {
        if (f.t !== 'subscribe') continue
        if (f.topic === 'refused') {
          socket.send({
            t: 'error',
            reqId: f.reqId,
            code: 'MESH_ERR_UNKNOWN_TOPIC',
            message: 'no such topic',
            permanent: true,
          })
        } else socket.send({ t: 'subscribed', reqId: f.reqId, topic: f.topic, fromOffset: 0, headOffset: 7 })
      }
    }
    const conn = dial(coordinator)
    await conn.whenReady(AbortSignal.timeout(5_000))
    const refused = conn.request({ t: 'subscribe', topic: 'refused' })
    const accepted = conn.request({ t: 'subscribe', topic: 'news' })
    expect(await rejectionCode(refused)).toBe('MESH_ERR_UNKNOWN_TOPIC')
    expect(await accepted).toMatchObject({ t: 'subscribed', topic: 'news', headOffset: 7 })
  })
})

describe('the reconnect policy', () => {
  afterEach(async () => {
    for (const c of conns.splice(0)) await c.close()
  })

  /** A connection whose every dial fails at once (a socket factory that throws: nothing listens). */
  function unreachable(clock: ManualClock, reconnect?: Partial<ReconnectPolicy>): CoordinatorConnection {
    const conn = new CoordinatorConnection({
      url: 'ws://127.0.0.1:1/ws',
      socket: () => {
        throw new Error('connect ECONNREFUSED 127.0.0.1:1')
      },
      mesh: 'm',
      identity: createIdentity('member'),
      role: 'control-plane',
      capabilities: () => ({ p2p: false, transports: ['ws-relay'] }),
      coordinatorPk: createIdentity('coordinator').publicKey,
      clock,
      random: () => 0.999,
      ...(reconnect !== undefined && { reconnect }),
    })
    conns.push(conn)
    return conn
  }

  it('by default retries forever, full jitter from 0.5 s doubling to a 5 s cap, and reports each wait', async () => {
    const clock = new ManualClock()
    const conn = unreachable(clock)
    const waits: RetryInfo[] = []
    conn.on('retrying', (info) => waits.push(info))
    const start = clock.now()
    conn.start()
    for (let i = 0; i < 40; i++) await clock.advance(5_000)
    expect(conn.state).toBe('waiting')
    expect(waits.slice(0, 7).map((w) => w.delayMs)).toEqual([499, 999, 1998, 3996, 4995, 4995, 4995])
    expect(Math.max(...waits.map((w) => w.delayMs))).toBeLessThan(5_000)
    expect(waits.length).toBeGreaterThan(39)
    expect(waits.every((w) => w.since === start)).toBe(true)
    expect(waits.at(-1)?.error?.code).toBe('MESH_ERR_DISCONNECTED')
    expect(waits.map((w) => w.attempt).slice(0, 3)).toEqual([1, 2, 3])
  })

  it('a bounded policy stops with MESH_ERR_COORDINATOR_UNREACHABLE after that many failures', async () => {
    const clock = new ManualClock()
    const onRetry: number[] = []
    const conn = unreachable(clock, { attempts: 3, capMs: 100, onRetry: (i) => onRetry.push(i.attempt) })
    const stopped = new Promise<MeshError | undefined>((resolve) => conn.once('stopped', resolve))
    conn.start()
    await clock.advance(1_000)
    expect((await stopped)?.code).toBe('MESH_ERR_COORDINATOR_UNREACHABLE')
    expect(onRetry).toEqual([1, 2])
    await expect(conn.whenReady()).rejects.toMatchObject({ code: 'MESH_ERR_COORDINATOR_UNREACHABLE' })
  })
})
