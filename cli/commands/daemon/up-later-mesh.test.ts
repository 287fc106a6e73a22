import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { meshDir } from '../../../peer-runtime/node/home.js'
import { daemonWorld, type DaemonWorld } from '../../../test/support/daemon-world.js'
import { eventually } from '../../../test/support/eventually.js'
import {
  buildOnce,
  spawnAgentmesh,
  type AgentmeshProcess,
} from '../../../test/support/coordinator-process.js'

describe('agentmesh daemon up (the real binary): a mesh opened later', () => {
  let world: DaemonWorld
  const running: AgentmeshProcess[] = []

  beforeAll(async () => {
    await buildOnce()
    world = await daemonWorld()
  }, 60_000)

  afterAll(async () => {
    await Promise.all(running.map((p) => p.stop('SIGKILL')))
    await world?.close()
  })

  it('a mesh whose config is repaired while the daemon runs reports its outage and its reconnect', async () => {
    const home = await world.ownerHome('later', 'dora')
    const configPath = join(meshDir(home, 'later'), 'mesh.json')
    const config = await readFile(configPath)
    await writeFile(configPath, '{ not json')

    const daemon = spawnAgentmesh(['daemon', 'up', '--json', '--no-p2p', '--home', home])
    running.push(daemon)
    await daemon.waitForJson((l) => typeof l['socket'] === 'string', 10_000)
    expect(daemon.stderr).not.toContain('mesh later: opened')
    await writeFile(configPath, config) // the background retry (1 s, then 2 s) opens it
    await eventually(() => daemon.stderr.includes('mesh later: opened'), {
      timeoutMs: 8_000,
      what: 'the mesh opened',
    })

    await world.stopCoordinator()
    await eventually(() => daemon.stderr.includes('mesh later: coordinator unreachable, retrying in'), {
      timeoutMs: 5_000,
      what: 'the outage said',
    })
    await world.startCoordinator()
    await eventually(() => daemon.stderr.includes('mesh later: reconnected'), {
      timeoutMs: 8_000,
      what: 'the reconnect said',
    })
    expect(await daemon.stop('SIGTERM')).toEqual({ code: 0, signal: null })
  }, 30_000)
})
