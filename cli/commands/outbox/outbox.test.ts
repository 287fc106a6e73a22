import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { initCrypto } from '../../../protocol/crypto.js'
import { parseKeyHex } from '../../../protocol/encoding.js'
import { openMeshPeer } from '../../../peer-runtime/node/home-peer.js'
import { loadMemberKey, readMeshConfig } from '../../../peer-runtime/node/home.js'
import { startWorld, type World } from '../../../test/support/coordinator-world.js'
import {
  buildOnce,
  spawnAgentmesh,
  type AgentmeshProcess,
} from '../../../test/support/coordinator-process.js'
import { am, createCliMesh, stderrSays, type CliMesh } from '../../../test/support/cli-mesh.js'
import { MeshClient } from '../../../test/support/mesh-client.js'
import { EXIT } from '../exit-codes.js'

interface Row {
  id: string
  state: string
  to: string
  recipients: Record<string, string>
  lastError?: { code: string; message: string }
  requeuedAs?: string
  nextAttemptAt?: number
}
interface Listed {
  mesh: string
  via: string
  session: string
  rows: Row[]
}

// `outbox list` and `outbox requeue` with the real binary: carol's sends to alice (offline) stay queued;
// a message to dave, sealed while carol was offline and sent after the owner revoked dave, goes dead
// (the coordinator refuses it: MESH_ERR_REVOKED), and is requeued. First without a daemon on carol's
// home, then through hers.
describe('outbox list | requeue (the real binary)', () => {
  let root: string
  let world: World
  let m: CliMesh
  const home = (name: string): string => join(root, name)
  const carol = (args: string[]) => am([...args, '--home', home('carol')])

  async function listed(args: string[]): Promise<Listed> {
    const r = await carol(['outbox', 'list', '--json', ...args])
    expect(r.code, r.stderr).toBe(0)
    return JSON.parse(r.stdout) as Listed
  }

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'agentmesh-outbox-'))
    const [, started] = await Promise.all([buildOnce(), startWorld('pglite'), initCrypto()])
    world = started
    m = await createCliMesh({
      root,
      coordinatorUrl: world.url,
      admin: { token: world.adminToken },
      members: ['alice', 'carol', 'dave'],
    })
    const listen = spawnAgentmesh(['listen', '--home', home('alice')])
    await stderrSays(listen, 'listening on mesh team')
    expect(await listen.stop('SIGINT')).toEqual({ code: 0, signal: null })
  }, 90_000)

  afterAll(async () => {
    await world?.close()
    await rm(root, { recursive: true, force: true })
  })

  /** A dead row in carol's `cli` outbox, made the way it happens: sealed offline, refused once sent. */
  async function deadRowToDave(): Promise<string> {
    const davePk = m.joined['dave']!['memberPk'] as string
    // Sealed while carol cannot reach the coordinator: her saved view still vouches for dave.
    const offline = await openMeshPeer(home('carol'), m.mesh, {
      role: { sessionId: 'cli' },
      p2p: false,
      coordinatorUrl: 'http://127.0.0.1:9',
    })
    let id: string
    try {
      await offline.peer.start()
      id = (await offline.peer.send(davePk, { text: 'for dave' })).clientMessageId
    } finally {
      await offline.close()
    }
    expect((await listed(['--state', 'pending'])).rows.map((r) => r.id)).toContain(id)
    // The owner revokes dave; carol's next connection sends the row, which the coordinator refuses.
    const config = await readMeshConfig(home('owner'), m.mesh)
    const owner = await loadMemberKey(home('owner'), m.mesh)
    const admin = await MeshClient.connect(config.wsUrl, {
      identity: owner,
      mesh: m.mesh,
      role: 'control-plane',
    })
    try {
      await admin.admin('revoke', { pk: parseKeyHex(davePk) })
    } finally {
      await admin.close()
    }
    const online = await openMeshPeer(home('carol'), m.mesh, { role: { sessionId: 'cli' }, p2p: false })
    try {
      const dead = new Promise<void>((resolve) =>
        online.peer.on('outbox', (row) => {
          if (row.id === id && row.state === 'dead') resolve()
        }),
      )
      await online.peer.start()
      await Promise.race([
        dead,
        new Promise((_, reject) =>
          AbortSignal.timeout(20_000).addEventListener('abort', () => reject(new Error('not dead'))),
        ),
      ])
    } finally {
      await online.close()
    }
    return id
  }

  describe('without a daemon', () => {
    it('list: a row queued for an offline recipient, read from disk; --state; human lines', async () => {
      const sent = await carol(['send', 'alice', 'while you were out', '--json'])
      expect(sent.code, sent.stderr).toBe(0)
      const { clientMessageId: id, to } = JSON.parse(sent.stdout) as { clientMessageId: string; to: string }
      const r = await carol(['outbox', 'list', '--json'])
      expect(r.code, r.stderr).toBe(0)
      expect(r.stderr).toContain('agentmesh: no daemon runs on this home: reading the outbox on disk\n')
      const list = JSON.parse(r.stdout) as Listed
      expect(list).toMatchObject({ mesh: 'team', via: 'direct', session: 'cli' })
      expect(list.rows).toHaveLength(1)
      // `msg status --json`'s row (which may grow fields of its own), no nextAttemptAt once accepted.
      expect(list.rows[0]).toMatchObject({
        id,
        mesh: 'team',
        to,
        channel: 'dm',
        state: 'accepted',
        recipients: { [to]: 'queued' },
        attempts: expect.any(Number),
        createdAt: expect.any(Number),
        updatedAt: expect.any(Number),
      })
      expect(Object.keys(list.rows[0]!)).not.toContain('nextAttemptAt')
      const text = await carol(['outbox', 'list'])
      expect(text.stdout).toMatch(
        new RegExp(`^${id}  accepted  queued — recipient offline  dm to ${to.slice(0, 16)}…  `, 'm'),
      )
      expect((await listed(['--state', 'done'])).rows).toEqual([])
      const bad = await carol(['outbox', 'list', '--state', 'lost'])
      expect(bad.code).toBe(EXIT.USAGE)
      expect(bad.stdout).toMatch(/^Usage Error: --state: no outbox state "lost"/)
    }, 60_000)

    it('requeue: a dead row goes back to pending under a fresh id, the old one aborted', async () => {
      const id = await deadRowToDave()
      const dead = (await listed(['--state', 'dead'])).rows
      expect(dead).toEqual([
        expect.objectContaining({
          id,
          state: 'dead',
          lastError: expect.objectContaining({ code: 'MESH_ERR_REVOKED' }),
        }),
      ])
      expect((await carol(['outbox', 'list', '--state', 'dead'])).stdout).toContain('given up')

      const r = await carol(['outbox', 'requeue', id, '--json'])
      expect(r.code, r.stderr).toBe(0)
      const out = JSON.parse(r.stdout) as { requeued: { id: string; requeuedAs: string; state: string }[] }
      expect(out).toEqual({
        mesh: 'team',
        via: 'direct',
        requeued: [{ id, requeuedAs: expect.stringMatching(/^[0-9A-Z]{26}$/), state: 'pending' }],
        skipped: [],
      })
      const fresh = out.requeued[0]!.requeuedAs
      const after = (await listed(['--state', 'pending,aborted,dead'])).rows
      expect(after.find((x) => x.id === id)).toMatchObject({ state: 'aborted', requeuedAs: fresh })
      expect(after.find((x) => x.id === fresh)).toMatchObject({
        state: 'pending',
        to: m.joined['dave']!['memberPk'],
        attempts: 0,
        nextAttemptAt: expect.any(Number),
      })
      expect(after.filter((x) => x.state === 'dead')).toEqual([])

      const again = await carol(['outbox', 'requeue', id])
      expect(again.code).toBe(EXIT.USAGE)
      expect(again.stdout).toContain(
        `is aborted, not dead: only a dead message is requeued (it was requeued as ${fresh})`,
      )
      const unknown = await carol(['outbox', 'requeue', '01JD3XK5Q6M8Z7Y2W9V4T1S0RP', '--json'])
      expect(unknown.code).toBe(EXIT.ERROR)
      expect(JSON.parse(unknown.stdout)).toMatchObject({ error: { code: 'MESH_ERR_UNKNOWN_MESSAGE' } })
      const none = await carol(['outbox', 'requeue', '--dead'])
      expect(none.code, none.stderr).toBe(0)
      expect(none.stderr).toContain('no dead messages in the outbox')
    }, 60_000)
  })

  describe("through carol's daemon", () => {
    let daemon: AgentmeshProcess
    beforeAll(async () => {
      daemon = spawnAgentmesh(['daemon', 'up', '--json', '--no-p2p', '--home', home('carol')])
      await daemon.waitForJson((l) => typeof l['socket'] === 'string', 30_000)
      // The log line: the daemon may be connected before its reporter says so in words.
      await stderrSays(daemon, '"role":"control-plane","msg":"connected"')
    }, 60_000)
    afterAll(async () => {
      await daemon?.stop('SIGTERM')
    })

    it('list and requeue go through the daemon: its queued row, a requeued row it sends at once', async () => {
      const sent = await carol(['send', 'alice', 'via the daemon', '--json'])
      expect(sent.code, sent.stderr).toBe(0)
      const { clientMessageId: id } = JSON.parse(sent.stdout) as { clientMessageId: string }
      const r = await carol(['outbox', 'list', '--json'])
      expect(r.code, r.stderr).toBe(0)
      expect(r.stderr).toContain(`agentmesh: through the daemon (pid ${daemon.child.pid})\n`)
      const list = JSON.parse(r.stdout) as Listed
      expect(list).toMatchObject({ via: 'daemon', session: 'cli' })
      expect(list.rows.find((x) => x.id === id)).toMatchObject({ state: 'accepted' })
      // The daemon opened the session `cli` with its store: the requeued row went out, and dave is still
      // revoked.
      let dead: Row[] = []
      for (let i = 0; i < 50 && dead.length === 0; i++) {
        dead = (await listed(['--state', 'dead'])).rows
        if (dead.length === 0) await new Promise((resolve) => setTimeout(resolve, 200))
      }
      expect(dead).toEqual([
        expect.objectContaining({ lastError: expect.objectContaining({ code: 'MESH_ERR_REVOKED' }) }),
      ])

      // Requeued through the daemon: its session `cli` closed, the row requeued on disk, the session open
      // again, which sends it at once (and dave is still revoked: dead again, under the new id).
      const requeued = await carol(['outbox', 'requeue', '--dead', '--json'])
      expect(requeued.code, requeued.stderr).toBe(0)
      expect(requeued.stderr).toContain(
        `agentmesh: through the daemon (pid ${daemon.child.pid}): closing its session cli`,
      )
      const out = JSON.parse(requeued.stdout) as {
        via: string
        requeued: { id: string; requeuedAs: string }[]
      }
      expect(out).toMatchObject({
        via: 'daemon',
        requeued: [{ id: dead[0]!.id, state: 'pending' }],
        skipped: [],
      })
      const fresh = out.requeued[0]!.requeuedAs
      let again: Row | undefined
      for (let i = 0; i < 50 && again?.state !== 'dead'; i++) {
        again = (await listed(['--state', 'all'])).rows.find((x) => x.id === fresh)
        if (again?.state !== 'dead') await new Promise((resolve) => setTimeout(resolve, 200))
      }
      expect(again).toMatchObject({ state: 'dead', lastError: { code: 'MESH_ERR_REVOKED' } })
      expect((await listed(['--state', 'aborted'])).rows.find((x) => x.id === dead[0]!.id)).toMatchObject({
        requeuedAs: fresh,
      })
      // The session is back: a send through the daemon still works.
      const after = await carol(['send', 'alice', 'after the requeue'])
      expect(after.code, after.stderr).toBe(0)
      expect(after.stdout).toMatch(/^queued — recipient offline: alice, id /)
    }, 60_000)
  })
})
