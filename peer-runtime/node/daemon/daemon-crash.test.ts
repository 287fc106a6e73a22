import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { toHex, ulidFactory } from '../../../protocol/index.js'
import {
  buildOnce,
  spawnAgentmesh,
  type AgentmeshProcess,
} from '../../../test/support/coordinator-process.js'
import type { InboundMessage } from '../../inbox.js'
import type { MeshPeer } from '../home-peer.js'
import { eventually } from '../../../test/support/eventually.js'
import { DaemonClient, type FollowNotice } from './client.js'
import type { DaemonStatus, RegisteredSession } from './daemon.js'
import { daemonPaths, readAdminToken } from './files.js'
import { daemonWorld, EventLog, type DaemonWorld } from '../../../test/support/daemon-world.js'

const COUNT = 500
const nextId = ulidFactory()

// The real binary (`agentmesh daemon up`) in a child process, so the test can kill -9 it.
describe('kill -9 of a daemon holding 500 unsent messages (the real binary)', () => {
  let world: DaemonWorld
  let home: string
  let bob: MeshPeer
  const running: AgentmeshProcess[] = []
  const clients: DaemonClient[] = []

  beforeAll(async () => {
    await buildOnce()
    world = await daemonWorld()
    home = await world.ownerHome('crash', 'alice')
    bob = await world.peer(await world.memberHome(home, 'crash', 'bob'), 'crash')
  }, 60_000)

  afterAll(async () => {
    for (const c of clients) c.close()
    await Promise.all(running.map((p) => p.stop('SIGKILL')))
    await world?.close()
  })

  async function up(): Promise<AgentmeshProcess> {
    const p = spawnAgentmesh(['daemon', 'up', '--json', '--no-p2p', '--home', home])
    running.push(p)
    await p.waitForJson((l) => typeof l['socket'] === 'string', 30_000)
    return p
  }

  it('delivers every message after the restart, once', async () => {
    const first = await up()
    const admin = new DaemonClient(
      { socketPath: daemonPaths(home).socket },
      await readAdminToken(daemonPaths(home).token),
    )
    clients.push(admin)
    const s = await admin.call<RegisteredSession>('POST', '/v1/sessions', {
      sessionId: 'worker',
      displayName: 'w',
    })
    const worker = admin.as(s.token)
    clients.push(worker)
    const to = toHex(bob.identity.publicKey)

    const arrived = new Map<string, number>()
    const waiters = new Set<() => void>()
    bob.peer.on('message', (m: InboundMessage) => {
      arrived.set(m.clientMessageId, (arrived.get(m.clientMessageId) ?? 0) + 1)
      for (const w of waiters) w()
    })
    const arrivedAll = (ids: string[], timeoutMs: number): Promise<void> =>
      new Promise((resolve, reject) => {
        const check = (): void => {
          if (ids.every((id) => arrived.has(id))) done(resolve)
        }
        const done = (fn: () => void): void => {
          clearTimeout(timer)
          waiters.delete(check)
          fn()
        }
        const timer = setTimeout(
          () =>
            done(() =>
              reject(new Error(`${ids.filter((id) => arrived.has(id)).length} of ${ids.length} arrived`)),
            ),
          timeoutMs,
        )
        waiters.add(check)
        check()
      })

    // One message first, so the session is connected and knows bob.
    const warm = await worker.call<{ id: string }>('POST', '/v1/send', { to, text: 'warm-up' })
    await arrivedAll([warm.id], 15_000)

    // A follower of the worker's events, which must ride out the kill -9 and the restart.
    const notices: FollowNotice[] = []
    const followed: string[] = []
    let readies = 0
    const stopFollowing = new AbortController()
    const following = (async () => {
      for await (const e of worker.follow({
        signal: stopFollowing.signal,
        onNotice: (n) => notices.push(n),
      })) {
        if (e.event === 'ready') readies++
        if (e.event === 'message') followed.push((e.data as { payload: { text: string } }).payload.text)
      }
    })().then(
      () => undefined,
      (err: unknown) => err,
    )
    await eventually(() => readies === 1) // live from here on
    await bob.peer.send(s.sessionPk, { text: 'f-before' })
    await eventually(() => followed.includes('f-before'), { timeoutMs: 15_000, what: 'f-before' })

    // The coordinator goes away; 500 sends are accepted into the outbox meanwhile.
    await world.stopCoordinator()
    const ids = Array.from({ length: COUNT }, () => nextId())
    for (let i = 0; i < COUNT; i += 25) {
      const answers = await Promise.all(
        ids
          .slice(i, i + 25)
          .map((id, k) => worker.request('POST', '/v1/send', { body: { to, id, text: `#${i + k}` } })),
      )
      for (const a of answers) expect(a.status).toBe(202)
    }
    const row = await worker.call<{ state: string }>('GET', `/v1/messages/${ids[COUNT - 1]}`)
    expect(['pending', 'inflight']).toContain(row.state)
    const status = await admin.call<DaemonStatus>('GET', '/v1/status')
    expect(status.sessions).toMatchObject([{ sessionId: 'worker', connected: false }])

    expect(await first.stop('SIGKILL')).toEqual({ code: null, signal: 'SIGKILL' })
    expect(ids.filter((id) => arrived.has(id))).toEqual([])
    await bob.peer.send(s.sessionPk, { text: 'f-during' }) // into bob's outbox: the coordinator is down too
    await eventually(() => notices.some((n) => n.kind === 'unreachable'))

    await world.startCoordinator()
    await up() // takes over the dead daemon's lock and socket; the registration and its outbox come back
    await arrivedAll(ids, 60_000)

    // Every row done, and then nothing arrived twice.
    const events = new EventLog(worker)
    await events.ready()
    for (const id of ids) {
      const r = await worker.call<{ state: string }>('GET', `/v1/messages/${id}`)
      if (r.state !== 'done') {
        await events.until(
          (e) =>
            e.event === 'delivery' &&
            (e.data as { id: string }).id === id &&
            (e.data as { state: string }).state === 'done',
          30_000,
        )
      }
    }
    await events.close()
    expect(ids.map((id) => arrived.get(id))).toEqual(ids.map(() => 1))
    expect(arrived.size).toBe(COUNT + 1)

    // The follower re-dialled the new daemon and missed nothing, twice nothing.
    await eventually(() => notices.some((n) => n.kind === 'reconnected'), { timeoutMs: 15_000 })
    await bob.peer.send(s.sessionPk, { text: 'f-after' })
    await eventually(() => followed.includes('f-after'), { timeoutMs: 15_000, what: 'f-after' })
    expect([...followed].sort()).toEqual(['f-after', 'f-before', 'f-during'])
    stopFollowing.abort()
    expect(await following).toBeUndefined()
  }, 180_000)
})
