import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { toHex, ulidFactory } from '../../../protocol/index.js'
import { daemonWorld, type DaemonWorld } from '../../../test/support/daemon-world.js'
import { eventually } from '../../../test/support/eventually.js'
import type { MeshPeer } from '../home-peer.js'
import { DaemonClient } from './client.js'
import { startDaemon, type Daemon, type RegisteredSession } from './daemon.js'
import { daemonPaths, readAdminToken } from './files.js'

const nextId = ulidFactory()
const LIMIT = 5

describe("the daemon's send route: batches and the outbox limit (in process, a real coordinator, real sockets)", () => {
  let world: DaemonWorld
  let daemon: Daemon
  let bob: MeshPeer
  let token: string
  let socketPath: string
  const clients: DaemonClient[] = []

  beforeAll(async () => {
    world = await daemonWorld()
    const home = await world.ownerHome('team', 'alice')
    const bobHome = await world.memberHome(home, 'team', 'bob')
    daemon = await startDaemon({
      home,
      maxOutboxDepth: LIMIT,
      peer: {
        p2p: false,
        connection: { backoffBaseMs: 50, backoffCapMs: 300 },
        outbox: { backoffBaseMs: 20, backoffCapMs: 200 },
      },
    })
    bob = await world.peer(bobHome, 'team')
    socketPath = daemonPaths(home).socket
    const admin = new DaemonClient({ socketPath }, await readAdminToken(daemonPaths(home).token))
    clients.push(admin)
    const s = await admin.call<RegisteredSession>('POST', '/v1/sessions', { mesh: 'team', sessionId: 'full' })
    token = s.token
  }, 60_000)

  afterAll(async () => {
    for (const c of clients) c.close()
    await daemon?.close()
    await world?.close()
  })

  it('takes an array of sends in one request, each answered as its own request would be', async () => {
    const to = toHex(bob.identity.publicKey)
    const c = new DaemonClient({ socketPath }, token)
    clients.push(c)
    const arrived: string[] = []
    const onMessage = (m: { clientMessageId: string }): void => void arrived.push(m.clientMessageId)
    bob.peer.on('message', onMessage)
    try {
      const [one, two] = [nextId(), nextId()]
      const res = await c.request('POST', '/v1/send', {
        body: [
          { to, id: one, text: 'one' },
          { to, id: two, text: 'two' },
          { to: 'bob', text: 'not a key' },
        ],
      })
      expect(res.status).toBe(200)
      expect(res.body).toMatchObject({
        results: [
          { status: 202, id: one, replay: false },
          { status: 202, id: two, replay: false },
          { status: 400, error: { code: 'MESH_ERR_MALFORMED_KEY' } },
        ],
      })
      // A repeat is a replay; the same id for another request a conflict; neither sends anything.
      const again = await c.call<{ results: unknown[] }>('POST', '/v1/send', [
        { to, id: one, text: 'one' },
        { to, id: two, text: 'changed' },
        { to, text: 'three' },
      ])
      expect(again.results).toMatchObject([
        { status: 202, id: one, replay: true },
        { status: 409, error: { code: 'MESH_ERR_IDEMPOTENCY_CONFLICT' } },
        { status: 202, replay: false },
      ])
      const three = (again.results[2] as { id: string }).id
      await eventually(() => [one, two, three].every((id) => arrived.includes(id)), {
        timeoutMs: 15_000,
        what: 'the batch at bob',
      })
      const peer = daemon.sessions().find((s) => s.registration.sessionId === 'full')!.presence.peer
      await peer.settled(AbortSignal.timeout(15_000))
      expect(arrived.filter((id) => [one, two, three].includes(id)).sort()).toEqual([one, two, three].sort())
    } finally {
      bob.peer.off('message', onMessage)
    }
  }, 60_000)

  it('answers 429 MESH_ERR_OUTBOX_FULL with retryAfterMs above maxOutboxDepth, stores nothing, and takes the send once the depth falls', async () => {
    const to = toHex(bob.identity.publicKey)
    const c = new DaemonClient({ socketPath }, token)
    const waiting = new DaemonClient({ socketPath }, token, { whenFull: 'wait' })
    clients.push(c, waiting)
    const arrived = new Set<string>()
    bob.peer.on('message', (m) => arrived.add(m.clientMessageId))
    const peer = daemon.sessions().find((s) => s.registration.sessionId === 'full')!.presence.peer

    // Connected: a send is answered with the depth it left, and delivered (bob is now known).
    const first = await c.request('POST', '/v1/send', { body: { to, id: nextId(), text: 'hello' } })
    expect(first.status).toBe(202)
    expect(typeof (first.body as { outboxDepth: unknown }).outboxDepth).toBe('number')
    await peer.settled(AbortSignal.timeout(15_000))

    // The coordinator goes away: sends stay in the outbox until it is at its limit.
    await world.stopCoordinator()
    const held: string[] = []
    for (let i = 1; i < LIMIT; i++) {
      const id = nextId()
      const res = await c.request('POST', '/v1/send', { body: { to, id, text: `held ${i}` } })
      expect(res.status).toBe(202)
      expect(res.body).toMatchObject({ id, outboxDepth: i })
      held.push(id)
    }
    // A batch that crosses the limit: its first send is taken, the second refused on its own.
    const last = nextId()
    const crossing = await c.call<{ results: unknown[] }>('POST', '/v1/send', [
      { to, id: last, text: `held ${LIMIT}` },
      { to, id: nextId(), text: 'past the limit' },
    ])
    expect(crossing.results).toMatchObject([
      { status: 202, id: last, outboxDepth: LIMIT },
      { status: 429, error: { code: 'MESH_ERR_OUTBOX_FULL' } },
    ])
    held.push(last)
    const over = nextId()
    const refused = await c.request('POST', '/v1/send', { body: { to, id: over, text: 'one too many' } })
    expect(refused.status).toBe(429)
    expect(refused.body).toMatchObject({
      error: { code: 'MESH_ERR_OUTBOX_FULL', details: { outboxDepth: LIMIT, maxDepth: LIMIT } },
    })
    const retryAfterMs = (refused.body as { error: { details: { retryAfterMs: unknown } } }).error.details
      .retryAfterMs
    expect(typeof retryAfterMs).toBe('number')
    expect(retryAfterMs as number).toBeGreaterThan(0)
    expect(Number(refused.headers['retry-after'])).toBeGreaterThanOrEqual(1)
    // Nothing of it was stored: the id is unknown, and the depth did not move.
    expect((await c.request('GET', `/v1/messages/${over}`)).status).toBe(404)
    expect(peer.outboxDepth).toBe(LIMIT)
    // `call` throws the 429 as its MeshError.
    await expect(c.call('POST', '/v1/send', { to, id: over, text: 'one too many' })).rejects.toMatchObject({
      code: 'MESH_ERR_OUTBOX_FULL',
    })

    // A client that waits: sent again after each retryAfterMs, taken once the coordinator is back.
    const taken = waiting.request('POST', '/v1/send', {
      body: { to, id: over, text: 'one too many' },
      signal: AbortSignal.timeout(45_000),
    })
    await world.startCoordinator()
    const answer = await taken
    expect(answer.status).toBe(202)
    expect(answer.headers['idempotent-replay']).toBeUndefined()
    await eventually(() => [...held, over].every((id) => arrived.has(id)), {
      timeoutMs: 30_000,
      what: 'every held send at bob',
    })
    // And a plain send is taken again.
    const after = await c.request('POST', '/v1/send', { body: { to, id: nextId(), text: 'after' } })
    expect(after.status).toBe(202)
  }, 90_000)
})
