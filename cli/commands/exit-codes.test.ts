import { createServer } from 'node:net'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import type { Identity } from '../../protocol/index.js'
import { newOwner } from '../../test/support/mesh-fixture.js'
import { startWorld, type World } from '../../test/support/coordinator-world.js'
import { buildOnce, spawnAgentmesh, type AgentmeshProcess } from '../../test/support/coordinator-process.js'
import { am, createCliMesh, stderrSays } from '../../test/support/cli-mesh.js'
import { loadMemberKey } from '../../peer-runtime/node/home.js'
import {
  scriptedCoordinator,
  type ScriptedCoordinator,
} from '../../peer-runtime/test/scripted-coordinator.js'
import { EXIT } from './exit-codes.js'

/** A loopback port nothing listens on. */
async function deadPort(): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const address = server.address()
  await new Promise((resolve) => server.close(resolve))
  return typeof address === 'object' && address !== null ? address.port : 1
}

// README.md's exit-code table, row by row: each code from the case it names, with the real binary in
// temp homes against a real coordinator on port 0 (in this process, so the test can revoke and replace).
describe("the CLI's exit codes (README.md, Exit codes)", () => {
  let root: string
  let world: World
  const others: World[] = []
  let scripted: ScriptedCoordinator | undefined
  const running: AgentmeshProcess[] = []
  const home = (name: string): string => join(root, name)
  let owner: Identity

  function spawn(args: string[]): AgentmeshProcess {
    const p = spawnAgentmesh(args)
    running.push(p)
    return p
  }

  /** Another coordinator with this one's key: a home pinned to it trusts it, whatever it holds. */
  async function twin(mesh: string): Promise<World> {
    const other = await startWorld('pglite', { coordinatorIdentity: world.coordinatorIdentity, mesh })
    others.push(other)
    return other
  }

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'agentmesh-exit-'))
    const [, started] = await Promise.all([buildOnce(), startWorld('pglite')])
    world = started
    await createCliMesh({
      root,
      coordinatorUrl: world.url,
      admin: { token: world.adminToken },
      members: ['alice', 'bob', 'carol'],
    })
    owner = await loadMemberKey(home('owner'), 'team')
  }, 90_000)

  afterEach(async () => {
    await Promise.all(running.splice(0).map((p) => p.stop('SIGKILL')))
  })

  afterAll(async () => {
    await scripted?.close()
    for (const w of others) await w.close()
    await world?.close()
    await rm(root, { recursive: true, force: true })
  })

  /** An admin of mesh `team`: the owner's own key, from its home. */
  function ownerClient() {
    return world.connect({ identity: owner, mesh: 'team', role: 'control-plane' })
  }

  it('0: done (listen --count 1), and a long-running command stopped by SIGINT', async () => {
    const once = spawn(['listen', '--mesh', 'team', '--count', '1', '--home', home('alice')])
    await stderrSays(once, 'listening on mesh team')
    const sent = await am(['send', '--mesh', 'team', 'alice', 'hi', '--home', home('bob')])
    expect(sent.code, sent.stderr).toBe(0)
    expect(await once.exited).toEqual({ code: EXIT.OK, signal: null })
    expect(once.stdout).toBe('bob: hi\n')
    const listen = spawn(['listen', '--mesh', 'team', '--home', home('alice')])
    await stderrSays(listen, 'listening on mesh team')
    expect(await listen.stop('SIGINT')).toEqual({ code: EXIT.OK, signal: null })
  })

  it('1: an error with its code; 2: usage; 3: daemon status with no daemon; 6: no such peer', async () => {
    const noMesh = await am(['send', '--mesh', 'nope', 'alice', 'hi', '--home', home('bob')])
    expect(noMesh.code).toBe(EXIT.ERROR)
    expect(noMesh.stderr).toMatch(/^error: MESH_ERR_NOT_JOINED: /m)
    const noPeer = await am(['send', '--mesh', 'team', 'nobody', 'hi', '--home', home('bob')])
    expect(noPeer.code).toBe(EXIT.NO_SUCH_PEER)
    expect(noPeer.stderr).toMatch(/^error: MESH_ERR_UNKNOWN_KEY: no verified peer is named "nobody"/m)
    const usage = await am(['send', '--mesh', 'team', 'alice', 'x', '--wait=soon', '--home', home('bob')])
    expect(usage.code).toBe(EXIT.USAGE)
    expect(usage.stdout).toMatch(/^Usage Error: /)
    const unknownOption = await am(['listen', '--no-such-option', '--home', home('bob')])
    expect(unknownOption.code).toBe(EXIT.USAGE)
    const status = await am(['daemon', 'status', '--home', home('bob')])
    expect(status.code).toBe(EXIT.NOT_RUNNING)
  })

  it('4: a one-shot command that cannot reach the coordinator', async () => {
    const port = await deadPort()
    const r = await am([
      'peers',
      '--mesh',
      'team',
      '--coordinator',
      `http://127.0.0.1:${port}`,
      '--timeout',
      '1s',
      '--home',
      home('bob'),
    ])
    expect(r.code, r.stderr).toBe(EXIT.UNREACHABLE)
    expect(r.stderr).toMatch(/^error: MESH_ERR_COORDINATOR_UNREACHABLE: /m)
    // A long-running command gives up only when asked to (--connect-timeout is opt-in).
    const listen = await am([
      'listen',
      '--mesh',
      'team',
      '--coordinator',
      `http://127.0.0.1:${port}`,
      '--connect-timeout',
      '1s',
      '--home',
      home('bob'),
    ])
    expect(listen.code, listen.stderr).toBe(EXIT.UNREACHABLE)
    expect(listen.stderr).toMatch(/coordinator unreachable, retrying in/)
  })

  it('5: a second listen on a home whose store another listen holds', async () => {
    const first = spawn(['listen', '--mesh', 'team', '--home', home('alice')])
    await stderrSays(first, 'listening on mesh team')
    const second = await am(['listen', '--mesh', 'team', '--home', home('alice')])
    expect(second.code, second.stderr).toBe(EXIT.STORE_LOCKED)
    expect(second.stderr).toMatch(new RegExp(`^error: MESH_ERR_STORE_LOCKED: .*${first.child.pid}`, 'm'))
    expect(first.child.exitCode).toBe(null)
  })

  it('22: listen replaced by another process holding the member key (4003)', async () => {
    const listen = spawn(['listen', '--mesh', 'team', '--home', home('alice')])
    await stderrSays(listen, 'listening on mesh team')
    const alice = await loadMemberKey(home('alice'), 'team')
    await world.connect({ identity: alice, mesh: 'team', role: 'control-plane' })
    expect((await listen.exited).code, listen.stderr).toBe(EXIT.REPLACED)
    expect(listen.stderr).toMatch(/^error: MESH_ERR_SESSION_REPLACED: /m)
  })

  it('23: not a member; 24: mesh gone (a coordinator with the pinned key that does not know them)', async () => {
    const gone = await twin('elsewhere')
    const r24 = await am(['listen', '--mesh', 'team', '--coordinator', gone.url, '--home', home('bob')])
    expect(r24.code, r24.stderr).toBe(EXIT.MESH_GONE)
    expect(r24.stderr).toMatch(/^error: MESH_ERR_UNKNOWN_MESH: /m)
    await gone.createMesh('team', newOwner())
    const r23 = await am(['listen', '--mesh', 'team', '--coordinator', gone.url, '--home', home('bob')])
    expect(r23.code, r23.stderr).toBe(EXIT.NOT_A_MEMBER)
    expect(r23.stderr).toMatch(/^error: MESH_ERR_UNKNOWN_KEY: /m)
  })

  it('25: no protocol version in common (close 4010)', async () => {
    scripted = await scriptedCoordinator({
      identity: world.coordinatorIdentity,
      refuseHello: { code: 'MESH_ERR_UNSUPPORTED_VERSION', message: 'speaks 9 only', close: 4010 },
    })
    const url = scripted.url.replace(/^ws/, 'http').replace(/\/ws$/, '')
    const r = await am(['listen', '--mesh', 'team', '--coordinator', url, '--home', home('bob')])
    expect(r.code, r.stderr).toBe(EXIT.UNSUPPORTED_VERSION)
  })

  // Last: revocation is for good.
  it('20: revoked, while listening (itself, and through the daemon) and when starting', async () => {
    const listen = spawn(['listen', '--mesh', 'team', '--home', home('carol')])
    await stderrSays(listen, 'listening on mesh team')
    const daemon = spawn(['daemon', 'up', '--json', '--no-p2p', '--home', home('bob')])
    await daemon.waitForJson((l) => typeof l['socket'] === 'string', 30_000)
    const viaDaemon = spawn(['listen', '--mesh', 'team', '--home', home('bob')])
    await stderrSays(viaDaemon, 'listening on mesh team through the daemon')
    const admin = await ownerClient()
    for (const name of ['carol', 'bob']) {
      await admin.admin('revoke', { pk: (await loadMemberKey(home(name), 'team')).publicKey })
    }
    expect((await listen.exited).code, listen.stderr).toBe(EXIT.REVOKED)
    expect(listen.stderr).toMatch(/^error: MESH_ERR_REVOKED: /m)
    expect((await viaDaemon.exited).code, viaDaemon.stderr).toBe(EXIT.REVOKED)
    const again = await am(['listen', '--mesh', 'team', '--home', home('carol')])
    expect(again.code, again.stderr).toBe(EXIT.REVOKED)
  })
})
