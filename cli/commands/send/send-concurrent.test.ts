import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startWorld, type World } from '../../../test/support/coordinator-world.js'
import { loadOrCreateSessionKey, storePath } from '../../../peer-runtime/node/home.js'
import { sqliteStore } from '../../../peer-runtime/node/sqlite-store.js'
import { eventually } from '../../../test/support/eventually.js'
import {
  buildOnce,
  runAgentmesh,
  spawnAgentmesh,
  type AgentmeshProcess,
} from '../../../test/support/coordinator-process.js'
import { createCliMesh } from '../../../test/support/cli-mesh.js'

// Two one-shot commands at once on one home share the `cli` session's store: the second waits for the
// first's lock instead of failing with MESH_ERR_STORE_LOCKED (exit 5).
describe('agentmesh send (the real binary): two at once on one home', () => {
  let root: string
  let world: World
  const running: AgentmeshProcess[] = []
  const home = (name: string): string => join(root, name)

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'agentmesh-send2-'))
    const [, started] = await Promise.all([buildOnce(), startWorld('pglite')])
    world = started
    await createCliMesh({
      root,
      coordinatorUrl: world.url,
      admin: { token: world.adminToken },
      members: ['alice', 'bob'],
    })
  }, 90_000)

  afterAll(async () => {
    await Promise.all(running.map((p) => p.stop('SIGKILL')))
    await world?.close()
    await rm(root, { recursive: true, force: true })
  })

  it('a send waits for the process holding the cli store; concurrent sends all exit 0 and all arrive', async () => {
    const alice = spawnAgentmesh(['listen', '--mesh', 'team', '--count', '3', '--home', home('alice')])
    running.push(alice)
    await eventually(() => alice.stderr.includes('listening on mesh team'), {
      timeoutMs: 10_000,
      what: 'alice listening',
    })
    // This process holds bob's `cli` store first, so the sends must wait (for it, then for each other).
    const key = await loadOrCreateSessionKey(home('bob'), 'team', 'cli')
    const held = sqliteStore({ path: storePath(home('bob'), 'team', key.publicKey) })
    await held.nextDue()
    const first = spawnAgentmesh(['send', '--mesh', 'team', 'alice', 'zero', '--home', home('bob')])
    running.push(first)
    const line = `agentmesh: waiting for ${process.pid}, which holds this presence's store\n`
    await eventually(() => first.stderr.includes(line), {
      timeoutMs: 10_000,
      what: 'the waiting line',
    })
    const sends = ['one', 'two'].map((text) =>
      runAgentmesh(['send', '--mesh', 'team', 'alice', text, '--home', home('bob')]),
    )
    await held.close()
    expect(await first.exited, first.stderr).toEqual({ code: 0, signal: null })
    expect(first.stderr.split(line)).toHaveLength(2) // said once
    const [one, two] = await Promise.all(sends)
    expect(one!.code, one!.stderr).toBe(0)
    expect(two!.code, two!.stderr).toBe(0)
    expect(await alice.exited).toEqual({ code: 0, signal: null })
    expect(alice.stdout.split('\n').sort()).toEqual(['', 'bob: one', 'bob: two', 'bob: zero'])
  }, 30_000)
})
