import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { am, createCliMesh, stderrSays } from '../../test/support/cli-mesh.js'
import {
  spawnAgentmesh,
  startCoordinator,
  type AgentmeshProcess,
  type RunningCoordinator,
} from '../../test/support/coordinator-process.js'

// The README's "Two peers" walkthrough, command for command, with the real binary and a real coordinator.
describe('the two-peer walkthrough (the real binary)', () => {
  let root: string
  let coordinator: RunningCoordinator
  const running: AgentmeshProcess[] = []
  const home = (name: string): string => join(root, name)

  function spawn(args: string[]): AgentmeshProcess {
    const p = spawnAgentmesh(args)
    running.push(p)
    return p
  }

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'agentmesh-walk-'))
    coordinator = await startCoordinator(['--data-dir', join(root, 'coordinator'), '--log-level', 'warn'])
  }, 90_000) // a first PGlite start runs initdb

  afterEach(async () => {
    await Promise.all(running.splice(0).map((p) => p.stop('SIGKILL')))
  })

  afterAll(async () => {
    await coordinator?.process.stop('SIGKILL')
    await rm(root, { recursive: true, force: true })
  })

  it('creates a mesh, invites, joins alice and bob; bob sends by name and alice prints it', async () => {
    const url = coordinator.ready.url
    // The README's set-up commands: mesh create (owner), invite create --uses 2, join alice and bob.
    const made = await createCliMesh({
      root,
      coordinatorUrl: url,
      admin: { tokenFile: join(root, 'coordinator', 'admin-token') },
      members: ['alice', 'bob'],
    })
    expect(made.created).toMatchObject({
      mesh: 'team',
      role: 'owner',
      coordinatorUrl: url,
      coordinatorPk: coordinator.ready.coordinatorPk,
    })
    const token = made.invite
    expect(token).toMatch(/^am1\.[A-Za-z0-9_-]+$/)
    for (const name of ['alice', 'bob']) {
      expect(made.joined[name]).toMatchObject({ mesh: 'team', role: 'member', displayName: name })
    }
    const again = await am(['join', token, '--name', 'alice', '--home', home('alice')])
    expect(again.code).toBe(1)
    expect(again.stderr).toMatch(/^error: MESH_ERR_ALREADY_JOINED: /)

    const alice = spawn(['listen', '--mesh', 'team', '--count', '1', '--json', '--home', home('alice')])
    await stderrSays(alice, 'listening on mesh team', 30_000)

    const sent = await am(['send', '--mesh', 'team', 'alice', 'hello', '--home', home('bob'), '--json'])
    expect(sent.code, sent.stderr).toBe(0)
    const receipt = JSON.parse(sent.stdout) as Record<string, unknown>
    expect(receipt).toMatchObject({ mesh: 'team', toName: 'alice', state: 'delivered' })

    const line = await alice.waitForJson((l) => 'clientMessageId' in l, 15_000)
    expect(line).toEqual({
      from: expect.stringMatching(/^[0-9a-f]{64}$/),
      fromName: 'bob',
      clientMessageId: receipt['clientMessageId'],
      payload: { text: 'hello' },
      via: 'relay',
      e2e: true,
    })
    expect(await alice.exited).toEqual({ code: 0, signal: null })

    const peers = await am(['peers', '--mesh', 'team', '--home', home('bob'), '--json'])
    expect(peers.code, peers.stderr).toBe(0)
    expect((JSON.parse(peers.stdout) as { peers: unknown[] }).peers).toContainEqual(
      expect.objectContaining({
        displayName: 'alice',
        role: 'control-plane',
        pk: receipt['to'],
        mine: false,
      }),
    )
  }, 90_000)

  it('queues a send to an offline alice, who prints it when she listens again', async () => {
    const sent = await am([
      'send',
      '--mesh',
      'team',
      'alice',
      'while',
      'you',
      'were',
      'out',
      '--home',
      home('bob'),
    ])
    expect(sent.code, sent.stderr).toBe(0)
    expect(sent.stdout).toMatch(/^queued — recipient offline: alice, id \w{26}\n$/)

    const alice = spawn(['listen', '--mesh', 'team', '--count', '1', '--home', home('alice')])
    expect(await alice.exited).toEqual({ code: 0, signal: null })
    expect(alice.stdout).toBe('bob: while you were out\n')

    // Both sends came from bob's one stable session key: alice sees one `cli` session of bob.
    const peers = await am(['peers', '--all', '--mesh', 'team', '--home', home('alice'), '--json'])
    expect(peers.code, peers.stderr).toBe(0)
    const bobs = (JSON.parse(peers.stdout) as { peers: Record<string, unknown>[] }).peers.filter(
      (p) => p['displayName'] === 'bob',
    )
    expect(bobs).toEqual([expect.objectContaining({ role: 'session', sessionId: 'cli', mine: false })])
  }, 60_000)

  it('listen: a second one on the same home is refused (MESH_ERR_STORE_LOCKED, exit 5); SIGTERM exits 0', async () => {
    const first = spawn(['listen', '--mesh', 'team', '--home', home('alice')])
    await stderrSays(first, 'listening on mesh team', 30_000)
    const second = spawn(['listen', '--mesh', 'team', '--home', home('alice')])
    expect(await second.exited).toEqual({ code: 5, signal: null })
    expect(second.stderr).toMatch(/^error: MESH_ERR_STORE_LOCKED: /m)
    expect(await first.stop('SIGTERM')).toEqual({ code: 0, signal: null })
  }, 60_000)

  it('reports mistakes with a code: no such mesh (1), no such peer (6), a send that times out (1)', async () => {
    const noMesh = await am(['send', '--mesh', 'nope', 'alice', 'hi', '--home', home('bob'), '--json'])
    expect(noMesh.code).toBe(1)
    expect(JSON.parse(noMesh.stdout)).toMatchObject({ error: { code: 'MESH_ERR_NOT_JOINED' } })

    const noPeer = await am(['send', '--mesh', 'team', 'carol', 'hi', '--home', home('bob')])
    expect(noPeer.code).toBe(6)
    expect(noPeer.stderr).toMatch(
      /^error: MESH_ERR_UNKNOWN_KEY: no verified peer is named "carol"; the candidates:\n {2}alice /m,
    )

    // alice is offline: the coordinator queues it, which is not "delivered".
    const late = await am([
      'send',
      '--mesh',
      'team',
      'alice',
      'are you there',
      '--wait',
      '--timeout',
      '2s',
      '--home',
      home('bob'),
    ])
    expect(late.code).toBe(1)
    expect(late.stderr).toMatch(
      /^error: MESH_ERR_WAIT_TIMEOUT: not delivered within 2s \(outbox state accepted/m,
    )

    const usage = await am(['send', '--mesh', 'team', 'alice', 'x', '--wait=soon', '--home', home('bob')])
    expect(usage.code).toBe(2)
    expect(usage.stdout).toMatch(/^Usage Error: --wait takes no value, or =queued or =delivered/)
  }, 60_000)
})
