import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { MeshError, toHex } from '../../../protocol/index.js'
import { buildOnce, runAgentmesh } from '../../../test/support/coordinator-process.js'
import { CapturedLog, daemonWorld, type DaemonWorld } from '../../../test/support/daemon-world.js'
import { eventually } from '../../../test/support/eventually.js'
import { meshDir, readMeshConfig, sessionKeyPath } from '../home.js'
import type { InboundMessage } from '../../inbox.js'
import type { MeshPeer } from '../home-peer.js'
import { DaemonClient, type FollowNotice, type IpcEvent } from './client.js'
import { startDaemon, type Daemon } from './daemon.js'
import { daemonPaths, readAdminToken } from './files.js'
import type { DaemonStatus, RegisteredSession, SessionStatusJson } from './types.js'

const TUNING = {
  p2p: false as const,
  connection: { backoffBaseMs: 20, backoffCapMs: 100 },
  outbox: { backoffBaseMs: 20 },
}
const RETRY = { baseMs: 20, capMs: 100 }
const REDIAL = { baseMs: 20, capMs: 100, timeoutMs: 20_000 }
const SECRET = 'the-secret-payload-text-7f3a'

describe('the daemon and its IPC clients ride out failures (a real coordinator)', () => {
  let world: DaemonWorld
  const daemons: Daemon[] = []
  const clients: DaemonClient[] = []

  beforeAll(async () => {
    ;[world] = await Promise.all([daemonWorld(), buildOnce()])
  }, 60_000)

  afterAll(async () => {
    for (const c of clients) c.close()
    await Promise.all(daemons.map((d) => d.close()))
    await world?.close()
  })

  async function up(home: string, log: CapturedLog): Promise<{ daemon: Daemon; admin: DaemonClient }> {
    const daemon = await startDaemon({ home, peer: TUNING, retry: RETRY, log: log.log })
    daemons.push(daemon)
    const admin = new DaemonClient(
      { socketPath: daemonPaths(home).socket },
      await readAdminToken(daemonPaths(home).token),
    )
    clients.push(admin)
    return { daemon, admin }
  }
  const session = (s: DaemonStatus, id: string): SessionStatusJson =>
    s.sessions.find((x) => x.sessionId === id)!

  it('a mesh whose config will not read and a registration whose key will not open are kept, shown and retried; the rest runs', async () => {
    const home = await world.ownerHome('ok', 'carol')
    await world.ownerHome('broken', 'carol', home)
    const first = await up(home, new CapturedLog())
    const reg = async (mesh: string, sessionId: string): Promise<RegisteredSession> =>
      first.admin.call<RegisteredSession>('POST', '/v1/sessions', { mesh, sessionId })
    const w1 = await reg('ok', 'w1')
    const w2 = await reg('ok', 'w2')
    const sb = await reg('broken', 'sb')
    await first.daemon.close()

    // Damage the broken mesh's config and w2's key file.
    const configPath = join(meshDir(home, 'broken'), 'mesh.json')
    const keyPath = sessionKeyPath(home, 'ok', 'w2')
    const config = await readFile(configPath)
    const key = await readFile(keyPath)
    await writeFile(configPath, '{ not json')
    await writeFile(keyPath, 'garbage')

    const log = new CapturedLog()
    const { daemon, admin } = await up(home, log) // starts despite both
    const status = await admin.call<DaemonStatus>('GET', '/v1/status')
    expect(status.meshes.map((m) => [m.mesh, m.state === 'unavailable'])).toEqual([
      ['broken', true],
      ['ok', false],
    ])
    expect(status.meshes[0]).toMatchObject({ connected: false, lastError: { code: 'MESH_ERR_KEY_FILE' } })
    expect(session(status, 'w1').state).not.toBe('unavailable')
    expect(session(status, 'w2')).toMatchObject({
      state: 'unavailable',
      lastError: { code: 'MESH_ERR_KEY_FILE' },
    })
    expect(session(status, 'sb')).toMatchObject({ state: 'unavailable', mesh: 'broken' })

    // The open session works; the others answer 503 with a code, not 401: their tokens are still known.
    const c1 = admin.as(w1.token)
    const c2 = admin.as(w2.token)
    const cb = admin.as(sb.token)
    clients.push(c1, c2, cb)
    expect((await c1.request('GET', '/v1/inbox')).status).toBe(200)
    for (const c of [c2, cb]) {
      const res = await c.request('GET', '/v1/inbox')
      expect(res.status).toBe(503)
      expect(res.body).toMatchObject({ error: { code: 'MESH_ERR_SESSION_UNAVAILABLE' } })
    }
    await expect(c2.call('POST', '/v1/send', { to: w1.sessionPk, text: 'x' })).rejects.toMatchObject({
      code: 'MESH_ERR_SESSION_UNAVAILABLE',
      details: { status: 503, sessionId: 'w2', lastError: { code: 'MESH_ERR_KEY_FILE' } },
    })

    // Retried with backoff, never dropped: a registration change rewrites the file with them still in it.
    await eventually(async () => {
      const s = await admin.call<DaemonStatus>('GET', '/v1/status')
      return (session(s, 'w2').attempts ?? 0) >= 3 && (s.meshes[0]!.attempts ?? 0) >= 3
    })
    const text = await runAgentmesh(['daemon', 'status', '--home', home])
    expect(text.code, text.stderr).toBe(0)
    expect(text.stdout).toMatch(
      /^ {2}mesh broken: unavailable, retrying in \d+\.\d s \(MESH_ERR_KEY_FILE: .*\)$/m,
    )
    expect(text.stdout).toMatch(
      /^ {4}session sb: unavailable, waiting for its mesh \(MESH_ERR_KEY_FILE: .*\)$/m,
    )
    expect(text.stdout).toMatch(
      /^ {4}session w2: unavailable, retrying in \d+\.\d s \(MESH_ERR_KEY_FILE: .*\)$/m,
    )
    await admin.call('POST', '/v1/sessions', { mesh: 'ok', sessionId: 'w3' })
    const saved = JSON.parse(await readFile(daemonPaths(home).sessions, 'utf8')) as {
      sessions: { sessionId: string }[]
    }
    expect(saved.sessions.map((s) => s.sessionId).sort()).toEqual(['sb', 'w1', 'w2', 'w3'])
    expect(
      log.find({ msg: 'session open failed', sessionId: 'w2', code: 'MESH_ERR_KEY_FILE' }).length,
    ).toBeGreaterThan(0)
    expect(log.find({ msg: 'mesh open failed', mesh: 'broken' }).length).toBeGreaterThan(0)

    // Repaired: both open on their next try, with the tokens they had.
    await writeFile(configPath, config)
    await writeFile(keyPath, key)
    await eventually(
      async () => {
        const s = await admin.call<DaemonStatus>('GET', '/v1/status')
        return (
          s.meshes.every((m) => m.state === 'connected') && s.sessions.every((x) => x.state === 'connected')
        )
      },
      { timeoutMs: 10_000, what: 'everything connected' },
    )
    expect((await c2.request('GET', '/v1/inbox')).status).toBe(200)
    expect((await cb.request('GET', '/v1/inbox')).status).toBe(200)
    expect(log.find({ msg: 'mesh opened', mesh: 'broken' })).toHaveLength(1)
    expect(log.find({ msg: 'session opened', sessionId: 'w2' })).toHaveLength(1)
    expect(log.find({ msg: 'session opened', sessionId: 'sb' })).toHaveLength(1)
    await daemon.close()
  }, 30_000)

  it('a kicked session and a revoked mesh are stopped (status, IPC, events) while the daemon serves its other mesh; logs say so without payloads', async () => {
    const alice = await world.ownerHome('one', 'alice')
    const home = await world.ownerHome('two', 'bob')
    await world.memberHome(alice, 'one', 'bob', home)
    const memberOne = (await readMeshConfig(home, 'one')).memberPk
    const memberTwo = (await readMeshConfig(home, 'two')).memberPk
    const log = new CapturedLog()
    const started = await up(home, log)
    const daemon = started.daemon
    let admin = started.admin
    const sa = await admin.call<RegisteredSession>('POST', '/v1/sessions', { mesh: 'one', sessionId: 'sa' })
    const sb = await admin.call<RegisteredSession>('POST', '/v1/sessions', { mesh: 'two', sessionId: 'sb' })
    const ca = admin.as(sa.token)
    const cb = admin.as(sb.token)
    clients.push(ca, cb)
    await eventually(async () =>
      (await admin.call<DaemonStatus>('GET', '/v1/status')).sessions.every((s) => s.state === 'connected'),
    )
    const stream = new AbortController()
    const seen: IpcEvent[] = []
    // Settles with what ended it (handled from the start: it ends while the test awaits other things).
    const followed = (async () => {
      for await (const e of ca.follow({ signal: stream.signal })) seen.push(e)
    })().then(
      () => undefined,
      (e: unknown) => e,
    )
    await eventually(() => seen.some((e) => e.event === 'ready'))
    // A payload through the daemon, which must never reach the log.
    const sent = await cb.call<{ id: string }>('POST', '/v1/send', { to: memberTwo, text: SECRET })

    // A kicked session is stopped (the rest of its mesh goes on) until it registers again.
    const kickedLog = log.lines.length
    expect(await world.kick(alice, 'one', sa.sessionPk)).toEqual({ kicked: true })
    await eventually(
      async () => session(await admin.call<DaemonStatus>('GET', '/v1/status'), 'sa').state === 'stopped',
    )
    const kicked = await admin.call<DaemonStatus>('GET', '/v1/status')
    expect(session(kicked, 'sa')).toMatchObject({ lastError: { code: 'MESH_ERR_NOT_AUTHORIZED' } })
    expect(kicked.meshes[0]).toMatchObject({ mesh: 'one', state: 'connected' })
    expect((await ca.request('GET', '/v1/inbox')).body).toMatchObject({
      error: { code: 'MESH_ERR_NOT_AUTHORIZED', details: { state: 'stopped' } },
    })
    expect(log.lines.slice(kickedLog).some((l) => l['msg'] === 'stopped' && l['sessionId'] === 'sa')).toBe(
      true,
    )
    const again = await admin.call<RegisteredSession>('POST', '/v1/sessions', {
      mesh: 'one',
      sessionId: 'sa',
    })
    expect(again.sessionPk).toBe(sa.sessionPk)
    const ca2 = admin.as(again.token)
    clients.push(ca2)
    await eventually(
      async () => session(await admin.call<DaemonStatus>('GET', '/v1/status'), 'sa').state === 'connected',
    )
    expect((await ca2.request('GET', '/v1/inbox')).status).toBe(200)
    expect(await followed).toMatchObject({ code: 'MESH_ERR_NOT_AUTHORIZED' }) // its follower ended with the kick
    const followedAgain = (async () => {
      for await (const e of ca2.follow({ signal: stream.signal })) seen.push(e)
    })().then(
      () => undefined,
      (e: unknown) => e,
    )
    await eventually(() => seen.filter((e) => e.event === 'ready').length === 2)

    await world.revoke(alice, 'one', memberOne)
    // The follower ends with the stop's code (the stream's `event: stopped`), and does not re-dial.
    const err = await followedAgain
    expect(err).toBeInstanceOf(MeshError)
    expect(err).toMatchObject({ code: 'MESH_ERR_REVOKED' })

    const status = await admin.call<DaemonStatus>('GET', '/v1/status')
    expect(status.meshes).toMatchObject([
      { mesh: 'one', state: 'stopped', connected: false, lastError: { code: 'MESH_ERR_REVOKED' } },
      { mesh: 'two', state: 'connected', connected: true },
    ])
    expect(session(status, 'sa')).toMatchObject({ state: 'stopped', lastError: { code: 'MESH_ERR_REVOKED' } })
    expect(session(status, 'sb')).toMatchObject({ state: 'connected' })
    for (const [method, path] of [
      ['GET', '/v1/inbox'],
      ['GET', '/v1/events'],
      ['POST', '/v1/send'],
    ] as const) {
      const res = await ca2.request(
        method,
        path,
        method === 'POST' ? { body: { to: sb.sessionPk, text: 'x' } } : {},
      )
      expect(res.status, path).toBe(403)
      expect(res.body).toMatchObject({
        error: { code: 'MESH_ERR_REVOKED', details: { mesh: 'one', state: 'stopped' } },
      })
    }
    await expect(
      admin.call('POST', '/v1/sessions', { mesh: 'one', sessionId: 'again' }),
    ).rejects.toMatchObject({ code: 'MESH_ERR_REVOKED' })
    // The other mesh goes on.
    expect((await cb.request('GET', '/v1/peers')).status).toBe(200)
    await eventually(
      async () => (await cb.call<{ state: string }>('GET', `/v1/messages/${sent.id}`)).state === 'done',
    )
    expect(
      log.find({ msg: 'stopped', mesh: 'one', role: 'control-plane', code: 'MESH_ERR_REVOKED' }),
    ).toHaveLength(1)
    expect(
      log.find({ msg: 'stopped', mesh: 'one', role: 'session', sessionId: 'sa' }).length,
    ).toBeGreaterThan(0)

    // A coordinator restart: each presence of the served mesh logs its loss and its reconnect, and the
    // session's event stream tells its followers (`link` events).
    const links: IpcEvent[] = []
    const linkStream = new AbortController()
    void (async () => {
      for await (const e of cb.follow({ signal: linkStream.signal }))
        if (e.event === 'link' || e.event === 'ready') links.push(e)
    })().catch(() => undefined)
    await eventually(() => links.length > 0)
    expect(links[0]).toMatchObject({
      event: 'ready',
      data: { link: { state: 'connected', mesh: { state: 'connected' } } },
    })
    await world.restartCoordinator()
    await eventually(
      () =>
        log.find({ msg: 'reconnected', mesh: 'two', role: 'control-plane' }).length > 0 &&
        log.find({ msg: 'reconnected', mesh: 'two', role: 'session', sessionId: 'sb' }).length > 0,
      { timeoutMs: 10_000, what: 'reconnected lines' },
    )
    expect(log.find({ msg: 'connection down', mesh: 'two', role: 'control-plane' }).length).toBeGreaterThan(0)
    await eventually(() => links.some((e) => (e.data as { state?: string }).state === 'reconnecting'))
    await eventually(
      () =>
        (links.at(-1)?.data as { state?: string; mesh?: { state?: string } }).state === 'connected' &&
        (links.at(-1)?.data as { mesh: { state: string } }).mesh.state === 'connected',
      { what: 'a connected link event' },
    )
    linkStream.abort()

    // After a restart of the daemon the revoked mesh's hello is refused, logged, and the mesh is stopped.
    await daemon.close()
    admin = (await up(home, log)).admin // closed with the others
    await eventually(
      () => log.find({ msg: 'hello refused', mesh: 'one', code: 'MESH_ERR_REVOKED' }).length > 0,
      {
        timeoutMs: 10_000,
        what: 'a refused hello line',
      },
    )
    await eventually(async () => {
      const s = await admin.call<DaemonStatus>('GET', '/v1/status')
      return s.meshes[0]?.state === 'stopped' && s.meshes[1]?.state === 'connected'
    })

    // `daemon status`, human and --json (the real binary, against this daemon).
    const text = await runAgentmesh(['daemon', 'status', '--home', home])
    expect(text.code, text.stderr).toBe(0)
    expect(text.stdout).toMatch(
      /^ {2}mesh one \(http:\/\/127\.0\.0\.1:\d+\): stopped: revoked \(MESH_ERR_REVOKED\)$/m,
    )
    expect(text.stdout).toMatch(/^ {2}mesh two \(http:\/\/127\.0\.0\.1:\d+\): connected$/m)
    expect(text.stdout).toMatch(/^ {4}session sa [0-9a-f]{16}…: stopped: revoked \(MESH_ERR_REVOKED\)$/m)
    const json = await runAgentmesh(['daemon', 'status', '--json', '--home', home])
    expect(json.code, json.stderr).toBe(0)
    const shape = JSON.parse(json.stdout) as DaemonStatus & { running: boolean }
    expect(shape).toMatchObject({
      running: true,
      pid: process.pid,
      meshes: [
        {
          mesh: 'one',
          memberPk: memberOne,
          state: 'stopped',
          connected: false,
          since: expect.any(Number),
          lastError: { code: 'MESH_ERR_REVOKED', message: expect.any(String) },
        },
        { mesh: 'two', state: 'connected', connected: true, since: expect.any(Number) },
      ],
      sessions: [
        { mesh: 'one', sessionId: 'sa', sessionPk: sa.sessionPk, state: 'stopped' },
        { mesh: 'two', sessionId: 'sb', sessionPk: sb.sessionPk, state: 'connected', connected: true },
      ],
    })

    // Never a message body in the log, and every line is pino JSON with a message.
    expect(log.text.join('')).not.toContain(SECRET)
    expect(log.lines.every((l) => typeof l['msg'] === 'string' && typeof l['level'] === 'number')).toBe(true)
    stream.abort()
  }, 60_000)

  it('a follower gets every message exactly once across a daemon restart; idempotent requests re-dial', async () => {
    const home = await world.ownerHome('redial', 'alice')
    const bob = await world.peer(await world.memberHome(home, 'redial', 'bob'), 'redial')
    const first = (await up(home, new CapturedLog())).daemon
    const admin = new DaemonClient(
      { socketPath: daemonPaths(home).socket },
      await readAdminToken(daemonPaths(home).token),
      { redial: REDIAL },
    )
    clients.push(admin)
    const s = await admin.call<RegisteredSession>('POST', '/v1/sessions', { sessionId: 'follower' })
    const c = admin.as(s.token)
    clients.push(c)

    const notices: FollowNotice[] = []
    const texts: string[] = []
    let readies = 0
    const stop = new AbortController()
    const following = (async () => {
      for await (const e of c.follow({ signal: stop.signal, onNotice: (n) => notices.push(n) })) {
        if (e.event === 'ready') readies++
        if (e.event === 'message') texts.push((e.data as { payload: { text: string } }).payload.text)
      }
    })().then(
      () => undefined,
      (err: unknown) => err,
    )
    await eventually(() => readies === 1)
    await bob.peer.send(s.sessionPk, { text: 'before-1' })
    await bob.peer.send(s.sessionPk, { text: 'before-2' })
    await eventually(() => texts.length === 2, { what: 'the first two' })

    await first.close()
    // No socket file: ENOENT. Then a file nothing listens on, as a kill -9 leaves it: ECONNREFUSED.
    await eventually(() => notices.some((n) => n.kind === 'unreachable' && errno(n.error) === 'ENOENT'))
    await writeFile(daemonPaths(home).socket, '')
    await eventually(() => notices.some((n) => n.kind === 'unreachable' && errno(n.error) === 'ECONNREFUSED'))
    expect(notices.filter((n) => n.kind === 'reconnected')).toEqual([])

    // Meanwhile bob sends (queued by the coordinator) and the client makes calls, which wait for the daemon.
    for (const text of ['during-1', 'during-2']) {
      const r = await bob.peer.send(s.sessionPk, { text })
      await eventually(async () => (await bob.peer.status(r.clientMessageId))?.state === 'accepted')
    }
    const status = admin.call<DaemonStatus>('GET', '/v1/status')
    const toBob = toHex(bob.identity.publicKey)
    const arrived = nextMessage(bob, 'sent while restarting')
    const sent = c.call<{ id: string }>('POST', '/v1/send', { to: toBob, text: 'sent while restarting' })

    await up(home, new CapturedLog()) // the same home: takes the socket over
    expect((await status).sessions).toMatchObject([{ sessionId: 'follower' }])
    const answer = await sent
    expect((await arrived).clientMessageId).toBe(answer.id) // the id the client gave it
    await eventually(() => notices.some((n) => n.kind === 'reconnected'), { what: 'reconnected' })
    await bob.peer.send(s.sessionPk, { text: 'after-1' })
    await eventually(() => texts.includes('after-1'), { what: 'after-1' })
    // A marker last: once it is in, nothing else is on its way, so the list is complete.
    await bob.peer.send(s.sessionPk, { text: 'marker' })
    await eventually(() => texts.includes('marker'))
    expect([...texts].sort()).toEqual(['after-1', 'before-1', 'before-2', 'during-1', 'during-2', 'marker'])
    expect(readies).toBe(2)

    stop.abort()
    expect(await following).toBeUndefined()
  }, 40_000)

  it('a request that is not idempotent is not re-sent; a send without an id gets one from the client', async () => {
    const admin = new DaemonClient({ socketPath: join(world.root, 'nothing-here.sock') }, 'x', {
      redial: { ...REDIAL, timeoutMs: 200 },
    })
    clients.push(admin)
    // Not retried: fails at once with the socket's error.
    const started = Date.now()
    await expect(admin.request('POST', '/v1/sessions', { body: { sessionId: 'x' } })).rejects.toMatchObject({
      code: 'ENOENT',
    })
    expect(Date.now() - started).toBeLessThan(150)
    // Retried within its bound, then a MeshError saying no daemon answered.
    await expect(admin.call('GET', '/v1/status')).rejects.toMatchObject({
      code: 'MESH_ERR_DAEMON_NOT_RUNNING',
    })
    await expect(admin.call('POST', '/v1/send', { to: 'ab'.repeat(32), text: 'x' })).rejects.toMatchObject({
      code: 'MESH_ERR_DAEMON_NOT_RUNNING',
    })
  })
})

function errno(err: Error): unknown {
  return (err as { code?: unknown }).code
}

/** Bob's next inbox message with payload text `text`. */
function nextMessage(bob: MeshPeer, text: string, timeoutMs = 15_000): Promise<InboundMessage> {
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
