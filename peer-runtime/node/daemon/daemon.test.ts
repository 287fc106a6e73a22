import { stat } from 'node:fs/promises'
import { request } from 'node:http'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { toHex, ulidFactory } from '../../../protocol/index.js'
import type { InboundMessage } from '../../inbox.js'
import { readMeshConfig } from '../home.js'
import type { MeshPeer } from '../home-peer.js'
import { DaemonClient } from './client.js'
import { startDaemon, type Daemon, type RegisteredSession } from './daemon.js'
import { daemonPaths, readAdminToken, readDaemonInfo } from './files.js'
import { CapturedLog, daemonWorld, EventLog, type DaemonWorld } from '../../../test/support/daemon-world.js'

const TUNING = {
  p2p: false as const,
  connection: { backoffBaseMs: 50, backoffCapMs: 300 },
  outbox: { backoffBaseMs: 20 },
}
const nextId = ulidFactory()

describe('the daemon (in process, a real coordinator, real sockets)', () => {
  let world: DaemonWorld
  let home: string
  let memberPk: string
  let bob: MeshPeer
  let daemon: Daemon
  let admin: DaemonClient
  const clients: DaemonClient[] = []
  const logs: EventLog[] = []

  const client = (token?: string): DaemonClient => {
    const c = new DaemonClient({ socketPath: daemonPaths(home).socket }, token)
    clients.push(c)
    return c
  }
  const log = (c: DaemonClient, after?: number): EventLog => {
    const l = new EventLog(c, after)
    logs.push(l)
    return l
  }
  const register = (sessionId: string, displayName?: string): Promise<RegisteredSession> =>
    admin.call<RegisteredSession>('POST', '/v1/sessions', {
      mesh: 'team',
      sessionId,
      ...(displayName !== undefined && { displayName }),
    })

  beforeAll(async () => {
    world = await daemonWorld()
    home = await world.ownerHome('team', 'alice')
    memberPk = (await readMeshConfig(home, 'team')).memberPk
    const bobHome = await world.memberHome(home, 'team', 'bob')
    daemon = await startDaemon({ home, peer: TUNING, keepaliveMs: 200, log: new CapturedLog().log })
    admin = client(await readAdminToken(daemonPaths(home).token))
    bob = await world.peer(bobHome, 'team')
  }, 60_000)

  afterAll(async () => {
    await Promise.all(logs.map((l) => l.close()))
    for (const c of clients) c.close()
    await daemon?.close()
    await world?.close()
  })

  it('listens on a 0600 socket and on 127.0.0.1; every request needs a bearer token', async () => {
    const paths = daemonPaths(home)
    expect((await stat(paths.socket)).mode & 0o777).toBe(0o600)
    expect((await stat(paths.token)).mode & 0o777).toBe(0o600)
    expect((await stat(paths.lock)).mode & 0o777).toBe(0o600)
    const info = (await readDaemonInfo(home))!
    expect(info).toMatchObject({ pid: process.pid, port: daemon.port, socket: paths.socket })

    const anonymous = client()
    for (const [method, path] of [
      ['GET', '/v1/inbox'],
      ['POST', '/v1/send'],
      ['GET', '/v1/events'],
      ['GET', '/v1/status'],
      ['POST', '/v1/sessions'],
      ['GET', '/v1/nothing-here'],
    ] as const) {
      const res = await anonymous.request(method, path, method === 'POST' ? { body: {} } : {})
      expect(res.status, `${method} ${path}`).toBe(401)
      expect(res.body).toMatchObject({ error: { code: 'MESH_ERR_UNAUTHENTICATED' } })
    }
    expect((await client('amd_not-the-token-at-all').request('GET', '/v1/status')).status).toBe(401)

    const tcp = new DaemonClient({ port: info.port }, await readAdminToken(paths.token))
    clients.push(tcp)
    expect((await tcp.request('GET', '/v1/status')).status).toBe(200)
    expect((await tcp.as(undefined).request('GET', '/v1/status')).status).toBe(401)
    // DNS rebinding and web pages: refused before the token is even looked at.
    expect((await tcp.request('GET', '/v1/status', { headers: { host: 'evil.example:80' } })).status).toBe(
      403,
    )
    expect(
      (await tcp.request('GET', '/v1/status', { headers: { origin: 'http://evil.example' } })).status,
    ).toBe(403)
  })

  it('two sessions of one member see only their own DMs, both see member-key messages, no echo', async () => {
    const s1 = await register('s1', 'alice-one')
    const s2 = await register('s2', 'alice-two')
    expect(s1.sessionPk).not.toBe(s2.sessionPk)
    expect(s1.memberPk).toBe(memberPk)
    const c1 = client(s1.token)
    const c2 = client(s2.token)
    const e1 = log(c1)
    const e2 = log(c2)
    await Promise.all([e1.ready(), e2.ready()])
    await eventuallyOnline(bob, [s1.sessionPk, s2.sessionPk])

    await bob.peer.send(s1.sessionPk, { text: 'to one' })
    await bob.peer.send(s2.sessionPk, { text: 'to two' })
    await bob.peer.send(memberPk, { text: 'to the member' })
    const text = (e: { event: string; data: unknown }, t: string): boolean =>
      e.event === 'message' && (e.data as { payload?: { text?: string } }).payload?.text === t
    await e1.until((e) => text(e, 'to one'))
    await e1.until((e) => text(e, 'to the member'))
    await e2.until((e) => text(e, 'to two'))
    await e2.until((e) => text(e, 'to the member'))

    const inbox1 = await c1.call<{ messages: { payload: { text: string }; toMember: boolean }[] }>(
      'GET',
      '/v1/inbox',
    )
    const inbox2 = await c2.call<{ messages: { payload: { text: string }; toMember: boolean }[] }>(
      'GET',
      '/v1/inbox',
    )
    expect(inbox1.messages.map((m) => m.payload.text).sort()).toEqual(['to one', 'to the member'])
    expect(inbox2.messages.map((m) => m.payload.text).sort()).toEqual(['to the member', 'to two'])
    expect(inbox1.messages.find((m) => m.toMember)?.payload.text).toBe('to the member')
    // The cursor: nothing after the last one.
    const next = (await c1.call<{ next: number }>('GET', '/v1/inbox')).next
    expect((await c1.call<{ messages: unknown[] }>('GET', `/v1/inbox?after=${next}`)).messages).toEqual([])

    // s1 sends to bob and to its sibling s2: delivered, and nothing comes back to s1.
    const got = nextMessage(bob, 'from one')
    const sent = await c1.call<{ id: string }>('POST', '/v1/send', {
      to: toHex(bob.identity.publicKey),
      text: 'from one',
    })
    const m = await got
    expect(toHex(m.from)).toBe(s1.sessionPk)
    await e1.until(
      (e) =>
        e.event === 'delivery' &&
        (e.data as { id: string; state: string }).id === sent.id &&
        (e.data as { state: string }).state === 'done',
    )
    await c1.call('POST', '/v1/send', { to: s2.sessionPk, text: 'sibling' })
    await e2.until((e) => text(e, 'sibling'))
    // A marker after everything: s1's next message event is the marker, so no echo came before it.
    await bob.peer.send(s1.sessionPk, { text: 'marker' })
    await e1.until((e) => text(e, 'marker'))
    expect(e1.messages().map((d) => (d['payload'] as { text: string }).text)).toEqual([
      'to one',
      'to the member',
      'marker',
    ])
    expect(e2.events.filter((e) => e.event === 'delivery')).toEqual([])
    expect((await c1.call<{ messages: unknown[] }>('GET', '/v1/inbox')).messages).toHaveLength(3)

    expect(e1.ended).toBe(false)
    // Keepalives are SSE comments (every 200 ms here, 15 s by default), which the client's parser drops.
    expect(await rawEvents(daemonPaths(home).socket, s1.token, ': keepalive\n\n')).toContain('event: ready')
  })

  it('POST /v1/send is idempotent by id and fingerprint; scoping refuses other sessions', async () => {
    const s = await register('idem')
    const other = await register('other')
    const c = client(s.token)
    const to = toHex(bob.identity.publicKey)
    const id = nextId()
    const body = { to, id, payload: { text: 'once', n: 1 }, meta: { priority: 'now' } }
    const arrivals: string[] = []
    const onMessage = (m: { clientMessageId: string }): void => void arrivals.push(m.clientMessageId)
    bob.peer.on('message', onMessage)
    try {
      const first = await c.request('POST', '/v1/send', { body })
      // Same request with its keys in another order: the same fingerprint.
      const again = await c.request('POST', '/v1/send', {
        body: { meta: { priority: 'now' }, payload: { n: 1, text: 'once' }, id, to },
      })
      expect(first.status).toBe(202)
      expect(again.status).toBe(202)
      expect(again.body).toEqual(first.body)
      expect(first.headers['idempotent-replay']).toBeUndefined()
      expect(again.headers['idempotent-replay']).toBe('true')
      expect(first.body).toMatchObject({ id, to, channel: 'dm', from: s.sessionPk, mesh: 'team' })

      const conflict = await c.request('POST', '/v1/send', { body: { ...body, payload: { text: 'twice' } } })
      expect(conflict.status).toBe(409)
      expect(conflict.body).toMatchObject({
        error: { code: 'MESH_ERR_IDEMPOTENCY_CONFLICT', details: { id } },
      })

      const row = await c.call<{ state: string; recipients: Record<string, string> }>(
        'GET',
        `/v1/messages/${id}`,
      )
      expect(row).toMatchObject({ id, to })
      // Five at once with one id: one is sent, four are answered from it.
      const burstId = nextId()
      const burst = await Promise.all(
        Array.from({ length: 5 }, () =>
          c.request('POST', '/v1/send', { body: { to, id: burstId, text: 'burst' } }),
        ),
      )
      expect(burst.map((r) => r.status)).toEqual([202, 202, 202, 202, 202])
      // The same answer for all five, but for the outbox depth each was answered at.
      expect(new Set(burst.map((r) => JSON.stringify(withoutDepth(r.body)))).size).toBe(1)
      expect(burst.every((r) => typeof (r.body as { outboxDepth?: unknown }).outboxDepth === 'number')).toBe(
        true,
      )
      expect(burst.filter((r) => r.headers['idempotent-replay'] === undefined)).toHaveLength(1)
      await eventuallyState(c, burstId, 'done')
      expect(arrivals.filter((x) => x === burstId)).toEqual([burstId])
      await eventuallyState(c, id, 'done')
      await daemon
        .sessions()
        .find((x) => x.registration.sessionId === 'idem')!
        .presence.peer.settled()
      expect(arrivals.filter((x) => x === id)).toEqual([id])
      // A third repeat after delivery: still the same answer, still one delivery.
      const late = await c.request('POST', '/v1/send', { body })
      expect(withoutDepth(late.body)).toEqual(withoutDepth(first.body))
    } finally {
      bob.peer.off('message', onMessage)
    }

    // Bad requests are refused without using the id.
    const bad = await c.request('POST', '/v1/send', { body: { to: 'bob', text: 'x' } })
    expect(bad.status).toBe(400)
    expect(bad.body).toMatchObject({ error: { code: 'MESH_ERR_MALFORMED_KEY' } })
    expect((await c.request('POST', '/v1/send', { body: { to, text: 'x', id: 'nope' } })).status).toBe(400)

    // Scoping: another session's inbox, messages and the admin routes are not for this token.
    expect((await c.request('GET', '/v1/inbox?session=other')).status).toBe(403)
    expect((await client(other.token).request('GET', `/v1/messages/${id}`)).status).toBe(404)
    expect((await c.request('GET', '/v1/status')).status).toBe(403)
    expect((await c.request('POST', '/v1/sessions', { body: { sessionId: 'x' } })).status).toBe(403)
    expect((await admin.request('GET', '/v1/inbox')).status).toBe(403)

    const peers = await c.call<{ peers: { pk: string; displayName?: string }[] }>('GET', '/v1/peers')
    expect(peers.peers.map((p) => p.pk)).toContain(to)
  })

  it('a relaunched session keeps its key; a DM queued while it was away decrypts; restarts keep tokens', async () => {
    const first = await register('relaunch', 'carol')
    await eventuallyOnline(bob, [first.sessionPk])
    await admin.call('DELETE', '/v1/sessions/relaunch')
    expect((await client(first.token).request('GET', '/v1/inbox')).status).toBe(401)
    const away = await bob.peer.send(first.sessionPk, { text: 'while you were away' })
    await bob.peer.settled(AbortSignal.timeout(10_000))
    expect((await bob.peer.status(away.clientMessageId))?.state).toBe('accepted') // queued by the coordinator

    const again = await register('relaunch', 'carol')
    expect(again.sessionPk).toBe(first.sessionPk)
    expect(again.token).not.toBe(first.token)
    const c = client(again.token)
    const events = log(c, 0)
    const got = await events.until(
      (e) =>
        e.event === 'message' &&
        (e.data as { payload?: { text?: string } }).payload?.text === 'while you were away',
    )
    expect(got.data).toMatchObject({ status: 'ok', e2e: true, to: first.sessionPk, toMember: false })
    await events.close()

    // A daemon restart: registrations, keys and tokens survive.
    const before = daemon.status().sessions.map((s) => [s.sessionId, s.sessionPk])
    await Promise.all(logs.map((l) => l.close()))
    await daemon.close()
    await expect(stat(daemonPaths(home).socket)).rejects.toMatchObject({ code: 'ENOENT' })
    await expect(stat(daemonPaths(home).lock)).rejects.toMatchObject({ code: 'ENOENT' })
    daemon = await startDaemon({ home, peer: TUNING, keepaliveMs: 200, log: new CapturedLog().log })
    expect(daemon.status().sessions.map((s) => [s.sessionId, s.sessionPk])).toEqual(before)
    const inbox = await c.call<{ messages: { payload: { text: string }; toMember: boolean }[] }>(
      'GET',
      '/v1/inbox',
    )
    // Its own DMs, and (like every session of the member) the member's.
    expect(inbox.messages.filter((m) => !m.toMember).map((m) => m.payload.text)).toEqual([
      'while you were away',
    ])
  })

  it('refuses a second daemon on the same home with MESH_ERR_DAEMON_RUNNING', async () => {
    await expect(startDaemon({ home, peer: TUNING, log: new CapturedLog().log })).rejects.toMatchObject({
      code: 'MESH_ERR_DAEMON_RUNNING',
      details: { pid: process.pid },
    })
    // The first one is unharmed.
    expect((await admin.request('GET', '/v1/status')).status).toBe(200)
  })
})

/** Waits until bob's peer list shows every key online (a session's hello reached the coordinator). */
async function eventuallyOnline(bob: MeshPeer, keys: string[]): Promise<void> {
  const deadline = Date.now() + 10_000
  for (;;) {
    const peers = await bob.peer.listPeers({ includeOffline: true, includeDaemons: true })
    if (keys.every((k) => peers.some((p) => toHex(p.pk) === k && p.online))) return
    if (Date.now() > deadline) throw new Error(`not online: ${keys.join(', ')}`)
    await new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer)
        bob.peer.off('presence', done)
        resolve()
      }
      const timer = setTimeout(done, Math.max(0, deadline - Date.now()))
      bob.peer.on('presence', done)
    })
  }
}

async function eventuallyState(c: DaemonClient, id: string, state: string): Promise<void> {
  const deadline = Date.now() + 10_000
  const events = new EventLog(c)
  try {
    await events.ready()
    const row = await c.call<{ state: string }>('GET', `/v1/messages/${id}`)
    if (row.state === state) return
    await events.until(
      (e) =>
        e.event === 'delivery' &&
        (e.data as { id: string; state: string }).id === id &&
        (e.data as { state: string }).state === state,
      deadline - Date.now(),
    )
  } finally {
    await events.close()
  }
}

/** Bob's next inbox message with payload text `text`. */
function nextMessage(bob: MeshPeer, text: string, timeoutMs = 10_000): Promise<InboundMessage> {
  return new Promise((resolve, reject) => {
    const on = (m: InboundMessage): void => {
      if ((m.payload as { text?: unknown } | null)?.text !== text) return
      clearTimeout(timer)
      bob.peer.off('message', on)
      resolve(m)
    }
    const timer = setTimeout(() => {
      bob.peer.off('message', on)
      reject(new Error(`no message ${JSON.stringify(text)} in ${timeoutMs} ms`))
    }, timeoutMs)
    bob.peer.on('message', on)
  })
}

/** The raw text of a session's event stream until it contains `until`. */
function rawEvents(socketPath: string, token: string, until: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        socketPath,
        path: '/v1/events',
        headers: { authorization: `Bearer ${token}` },
        signal: AbortSignal.timeout(5_000),
      },
      (res) => {
        let text = ''
        res.setEncoding('utf8')
        res.on('data', (chunk: string) => {
          text += chunk
          if (text.includes(until)) {
            req.destroy()
            resolve(text)
          }
        })
      },
    )
    req.on('error', reject)
    req.end()
  })
}

/** A send answer without its `outboxDepth` (the depth when it was answered, not part of the replay). */
function withoutDepth(body: unknown): unknown {
  const { outboxDepth: _depth, ...rest } = body as Record<string, unknown>
  return rest
}
