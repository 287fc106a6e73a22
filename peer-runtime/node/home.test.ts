import { mkdtemp, readFile, readdir, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { buildCoordinator, type Coordinator } from '../../coordinator/index.js'
import { openTestStore } from '../../coordinator/store/testing.js'
import {
  createIdentity,
  decodeInviteToken,
  initCrypto,
  openInvite,
  toHex,
  verifySessionAttestation,
} from '../../protocol/index.js'
import { listMeshes, loadMemberKey, readMeshConfig, sessionAttestation, sessionKeyPath } from './home.js'
import { coordinatorUrls, createInvite, createMesh, joinMesh } from './home-membership.js'
import { openMeshPeer, type MeshPeer } from './home-peer.js'

const ADMIN_TOKEN = 'home-test-admin-token'

describe('the local home', () => {
  let coordinator: Coordinator
  let url: string
  let root: string
  const peers: MeshPeer[] = []
  let n = 0
  const newHome = (): string => join(root, `home-${n++}`)

  beforeAll(async () => {
    await initCrypto()
    root = await mkdtemp(join(tmpdir(), 'agentmesh-home-'))
    coordinator = await buildCoordinator({
      store: await openTestStore('pglite'),
      ownsStore: true,
      identity: createIdentity('coordinator'),
      adminToken: ADMIN_TOKEN,
      logger: { level: 'silent' },
    })
    url = await coordinator.listen({ port: 0, host: '127.0.0.1' })
  })

  afterEach(async () => {
    await Promise.all(peers.splice(0).map((p) => p.close()))
  })

  afterAll(async () => {
    await coordinator?.close()
    await rm(root, { recursive: true, force: true })
  })

  async function ownedMesh(mesh: string): Promise<string> {
    const home = newHome()
    await createMesh({ home, mesh, coordinatorUrl: url, adminToken: ADMIN_TOKEN, displayName: 'owner' })
    return home
  }

  async function invited(ownerHome: string, mesh: string, name: string): Promise<string> {
    const { token } = await createInvite({ home: ownerHome, mesh, expiresAt: Date.now() + 60_000 })
    const home = newHome()
    await joinMesh({ home, token, displayName: name })
    return home
  }

  it('creates a mesh as owner: 0700 directories, 0600 files, the owner key as member key', async () => {
    const home = await ownedMesh('modes')
    const config = await readMeshConfig(home, 'modes')
    expect(config).toMatchObject({
      mesh: 'modes',
      coordinatorUrl: url,
      wsUrl: `${url.replace(/^http/, 'ws')}/ws`,
      coordinatorPk: toHex(coordinator.context.identity.publicKey),
      role: 'owner',
      displayName: 'owner',
    })
    expect(config.ownerPk).toBe(config.memberPk)
    expect(toHex((await loadMemberKey(home, 'modes')).publicKey)).toBe(config.memberPk)
    const dir = join(home, 'meshes', 'modes')
    for (const d of [home, join(home, 'meshes'), dir]) expect((await stat(d)).mode & 0o777).toBe(0o700)
    for (const f of ['mesh.json', 'member.key']) expect((await stat(join(dir, f))).mode & 0o777).toBe(0o600)
    // No staging directory is left behind.
    expect(await readdir(join(home, 'meshes'))).toEqual(['modes'])
    expect(await listMeshes(home)).toEqual([config])
  })

  it('signs invites that carry the pinned keys; a member may not invite', async () => {
    const owner = await ownedMesh('invites')
    const ownerConfig = await readMeshConfig(owner, 'invites')
    const created = await createInvite({
      home: owner,
      mesh: 'invites',
      role: 'admin',
      maxUses: 3,
      expiresAt: Date.now() + 60_000,
    })
    expect(created.token).toMatch(/^am1\./)
    const f = openInvite(decodeInviteToken(created.token))
    expect(f).toMatchObject({ mesh: 'invites', role: 'admin', maxUses: 3, coordinatorUrl: url })
    expect(toHex(f.ownerPk)).toBe(ownerConfig.ownerPk)
    expect(toHex(f.coordinatorPk)).toBe(ownerConfig.coordinatorPk)

    const member = await invited(owner, 'invites', 'm')
    expect(await readMeshConfig(member, 'invites')).toMatchObject({
      role: 'member',
      ownerPk: ownerConfig.ownerPk,
    })
    await expect(
      createInvite({ home: member, mesh: 'invites', expiresAt: Date.now() + 60_000 }),
    ).rejects.toMatchObject({
      code: 'MESH_ERR_NOT_AUTHORIZED',
    })
  })

  it('joins with a new member key; refuses a second join of the same mesh unless forced', async () => {
    const owner = await ownedMesh('twice')
    const home = await invited(owner, 'twice', 'alice')
    const first = await readMeshConfig(home, 'twice')
    expect(first).toMatchObject({ role: 'member', displayName: 'alice' })
    expect(first.memberPk).not.toBe(first.ownerPk)
    const dir = join(home, 'meshes', 'twice')
    expect((await stat(join(dir, 'member.key'))).mode & 0o777).toBe(0o600)

    const { token } = await createInvite({ home: owner, mesh: 'twice', expiresAt: Date.now() + 60_000 })
    await expect(joinMesh({ home, token })).rejects.toMatchObject({ code: 'MESH_ERR_ALREADY_JOINED' })
    // The refusal came before the coordinator call: the invite is still unused, and nothing changed.
    expect(await readMeshConfig(home, 'twice')).toEqual(first)
    await expect(
      createMesh({ home, mesh: 'twice', coordinatorUrl: url, adminToken: ADMIN_TOKEN }),
    ).rejects.toMatchObject({
      code: 'MESH_ERR_ALREADY_JOINED',
    })

    const again = await joinMesh({ home, token, force: true, displayName: 'alice2' })
    expect(again.memberPk).not.toBe(first.memberPk)
    expect(await readMeshConfig(home, 'twice')).toEqual(again)
    const names = await readdir(join(home, 'meshes'))
    expect(names.filter((x) => x.startsWith('twice.replaced-'))).toHaveLength(1)
    expect(await listMeshes(home)).toEqual([again])
  })

  it('reports a missing mesh, a dead coordinator and a bad token with their codes', async () => {
    const home = newHome()
    await expect(readMeshConfig(home, 'nowhere')).rejects.toMatchObject({ code: 'MESH_ERR_NOT_JOINED' })
    await expect(sessionAttestation(home, 'nowhere', 'cli', Date.now())).rejects.toMatchObject({
      code: 'MESH_ERR_NOT_JOINED',
    })
    await expect(joinMesh({ home, token: 'am1.nope' })).rejects.toMatchObject({
      code: 'MESH_ERR_MALFORMED_FRAME',
    })
    await expect(
      createMesh({ home, mesh: 'dead', coordinatorUrl: 'http://127.0.0.1:1', adminToken: ADMIN_TOKEN }),
    ).rejects.toMatchObject({ code: 'MESH_ERR_COORDINATOR_UNREACHABLE' })
    await expect(createMesh({ home, mesh: 'noauth', coordinatorUrl: url })).rejects.toMatchObject({
      code: 'MESH_ERR_UNAUTHENTICATED',
    })
    expect(await listMeshes(home)).toEqual([])
    await expect(createMesh({ home, mesh: 'Bad/Id', coordinatorUrl: url })).rejects.toMatchObject({
      code: 'MESH_ERR_MALFORMED_FRAME',
    })
  })

  it('keeps one session key per session id, and attests it with the member key for 12 h', async () => {
    const owner = await ownedMesh('sessions')
    const home = await invited(owner, 'sessions', 'bob')
    const config = await readMeshConfig(home, 'sessions')
    const now = Date.now()
    const a = await sessionAttestation(home, 'sessions', 'cli', now)
    const b = await sessionAttestation(home, 'sessions', 'cli', now + 1000)
    const other = await sessionAttestation(home, 'sessions', 'other/session', now)
    expect(toHex(b.identity.publicKey)).toBe(toHex(a.identity.publicKey))
    expect(toHex(other.identity.publicKey)).not.toBe(toHex(a.identity.publicKey))
    const path = sessionKeyPath(home, 'sessions', 'cli')
    expect((await stat(path)).mode & 0o777).toBe(0o600)
    expect(JSON.parse(await readFile(path, 'utf8'))).toMatchObject({
      kind: 'session',
      publicKey: toHex(a.identity.publicKey),
      labels: { mesh: 'sessions', sessionId: 'cli' },
    })
    expect(sessionKeyPath(home, 'sessions', 'other/session')).toMatch(/other%2Fsession\.key$/)
    const f = verifySessionAttestation(a.attestation, {
      mesh: 'sessions',
      memberPk: (await loadMemberKey(home, 'sessions')).publicKey,
      sessionPk: a.identity.publicKey,
      sessionId: 'cli',
      now,
    })
    expect(f.expiresAt).toBe(now + 12 * 60 * 60 * 1000)
    expect(toHex(f.memberPk)).toBe(config.memberPk)
  })

  it('opens peers from two homes: a session DMs the other member by its key', async () => {
    const owner = await ownedMesh('talk')
    const alice = await invited(owner, 'talk', 'alice')
    const bob = await invited(owner, 'talk', 'bob')
    const a = await openMeshPeer(alice, 'talk', { role: 'control-plane', p2p: false })
    const b = await openMeshPeer(bob, 'talk', { role: { sessionId: 'cli' }, p2p: false })
    peers.push(a, b)
    expect(a.storePath).toBe(join(alice, 'meshes', 'talk', 'stores', `${a.config.memberPk.slice(0, 16)}.db`))
    for (const dir of ['stores', 'sessions']) {
      expect((await stat(join(bob, 'meshes', 'talk', dir))).mode & 0o777).toBe(0o700)
    }
    await Promise.all([a.peer.start(), b.peer.start()])
    const signal = AbortSignal.timeout(15_000)
    await Promise.all([a.peer.whenConnected(signal), b.peer.whenConnected(signal)])
    const bobPeers = await b.peer.listPeers({ includeDaemons: true, signal })
    expect(bobPeers.map((p) => [p.displayName, p.role])).toContainEqual(['alice', 'control-plane'])

    const done = new Promise<string>((resolve) =>
      b.peer.on('outbox', (row) => row.state === 'done' && resolve(row.id)),
    )
    const sent = await b.peer.send(a.config.memberPk, { text: 'hello' }, { signal })
    expect(await done).toBe(sent.clientMessageId)
    expect(await b.peer.status(sent.clientMessageId)).toMatchObject({ state: 'done' })
    for await (const m of a.peer.messages({ signal })) {
      expect(m).toMatchObject({
        payload: { text: 'hello' },
        clientMessageId: sent.clientMessageId,
        e2e: true,
      })
      expect(toHex(m.from)).toBe(toHex(b.identity.publicKey))
      break
    }
    for (const file of await readdir(join(bob, 'meshes', 'talk', 'stores'))) {
      expect((await stat(join(bob, 'meshes', 'talk', 'stores', file))).mode & 0o777, file).toBe(0o600)
    }
    // The session key is the stable one on disk, not the member key.
    expect(toHex(b.identity.publicKey)).not.toBe(b.config.memberPk)
    expect(toHex(b.identity.publicKey)).toBe(
      toHex((await sessionAttestation(bob, 'talk', 'cli', Date.now())).identity.publicKey),
    )
  }, 30_000)

  it('derives the ws address from an http one and back', () => {
    expect(coordinatorUrls('http://127.0.0.1:7700')).toEqual({
      http: 'http://127.0.0.1:7700',
      ws: 'ws://127.0.0.1:7700/ws',
    })
    expect(coordinatorUrls('wss://mesh.example.com/ws')).toEqual({
      http: 'https://mesh.example.com',
      ws: 'wss://mesh.example.com/ws',
    })
    expect(coordinatorUrls('https://mesh.example.com/am/')).toEqual({
      http: 'https://mesh.example.com/am',
      ws: 'wss://mesh.example.com/am/ws',
    })
    expect(() => coordinatorUrls('ftp://x')).toThrow(/http\(s\) or ws\(s\)/)
  })
})
