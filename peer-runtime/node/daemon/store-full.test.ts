import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { fromHex, toHex, ulidFactory } from '../../../protocol/index.js'
import { daemonWorld, type DaemonWorld } from '../../../test/support/daemon-world.js'
import { storePath } from '../home.js'
import type { MeshPeer } from '../home-peer.js'
import { openSqliteStoreAt, type SqliteRuntimeStore } from '../sqlite-store.js'
import { DaemonClient } from './client.js'
import { startDaemon, type Daemon, type RegisteredSession } from './daemon.js'
import { daemonPaths, readAdminToken } from './files.js'

const nextId = ulidFactory()

describe('the daemon on a full disk (in process, a real coordinator, real sockets)', () => {
  let world: DaemonWorld
  let daemon: Daemon
  let bob: MeshPeer
  const clients: DaemonClient[] = []

  beforeAll(async () => {
    world = await daemonWorld()
    const home = await world.ownerHome('team', 'alice')
    const bobHome = await world.memberHome(home, 'team', 'bob')
    daemon = await startDaemon({
      home,
      peer: {
        p2p: false,
        connection: { backoffBaseMs: 50, backoffCapMs: 300 },
        outbox: { backoffBaseMs: 20 },
      },
    })
    bob = await world.peer(bobHome, 'team')
    const admin = new DaemonClient(
      { socketPath: daemonPaths(home).socket },
      await readAdminToken(daemonPaths(home).token),
    )
    clients.push(admin)
    const s = await admin.call<RegisteredSession>('POST', '/v1/sessions', { mesh: 'team', sessionId: 'full' })
    session = {
      client: new DaemonClient({ socketPath: daemonPaths(home).socket }, s.token),
      pk: s.sessionPk,
      home,
    }
    clients.push(session.client)
  }, 60_000)

  let session: { client: DaemonClient; pk: string; home: string }

  afterAll(async () => {
    for (const c of clients) c.close()
    await daemon?.close()
    await world?.close()
  })

  it('answers a send it cannot store 507 MESH_ERR_STORE_FULL, stores nothing of it, and 202 again once there is room', async () => {
    const to = toHex(bob.identity.publicKey)
    const c = session.client
    const first = await c.request('POST', '/v1/send', { body: { to, text: 'before' } })
    expect(first.status).toBe(202)

    // The session's outbox is a store this process has open: cap it a little above its size.
    const store = openSqliteStoreAt(
      storePath(session.home, 'team', fromHex(session.pk)!),
    ) as SqliteRuntimeStore
    expect(store).toBeDefined()
    store.setMaxPageCount(store.pageCount() + 30)

    const big = 'x'.repeat(20 * 1024)
    let refused: { id: string; status: number; body: unknown } | undefined
    const accepted: string[] = []
    for (let i = 0; i < 100 && refused === undefined; i++) {
      const id = nextId()
      const res = await c.request('POST', '/v1/send', { body: { to, id, text: big } })
      if (res.status === 202) accepted.push(id)
      else refused = { id, status: res.status, body: res.body }
    }
    expect(refused).toMatchObject({ status: 507, body: { error: { code: 'MESH_ERR_STORE_FULL' } } })
    expect(accepted.length).toBeGreaterThan(0)
    // Nothing of the refused send was stored: its id is unknown, and every accepted one is there.
    const missing = await c.request('GET', `/v1/messages/${refused!.id}`)
    expect(missing.status).toBe(404)
    for (const id of accepted) expect((await c.request('GET', `/v1/messages/${id}`)).status).toBe(200)
    // Still full: a repeat is refused the same way, never 202.
    const repeat = await c.request('POST', '/v1/send', { body: { to, id: refused!.id, text: big } })
    expect(repeat.status).toBe(507)

    // Room again: the same request is taken and delivered.
    store.setMaxPageCount(1_000_000_000)
    const arrived = new Promise<void>((resolve) => {
      const on = (m: { clientMessageId: string }): void => {
        if (m.clientMessageId !== refused!.id) return
        bob.peer.off('message', on)
        resolve()
      }
      bob.peer.on('message', on)
    })
    const retry = await c.request('POST', '/v1/send', { body: { to, id: refused!.id, text: big } })
    expect(retry.status).toBe(202)
    await arrived
  }, 60_000)
})
