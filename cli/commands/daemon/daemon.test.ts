import { readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { daemonPaths } from '../../../peer-runtime/node/daemon/files.js'
import { daemonWorld, type DaemonWorld } from '../../../test/support/daemon-world.js'
import {
  buildOnce,
  runAgentmesh,
  spawnAgentmesh,
  type AgentmeshProcess,
} from '../../../test/support/coordinator-process.js'

const BIN = fileURLToPath(new URL('../../../bin/agentmesh.js', import.meta.url))

describe('agentmesh daemon (the real binary)', () => {
  let world: DaemonWorld
  let home: string
  const running: AgentmeshProcess[] = []

  beforeAll(async () => {
    await buildOnce()
    world = await daemonWorld()
    home = await world.ownerHome('cli', 'alice')
  }, 60_000)

  afterAll(async () => {
    await Promise.all(running.map((p) => p.stop('SIGKILL')))
    await world?.close()
  })

  function up(): AgentmeshProcess {
    const p = spawnAgentmesh(['daemon', 'up', '--json', '--no-p2p', '--home', home])
    running.push(p)
    return p
  }

  it('up, status, a second up refused, down; SIGTERM closes cleanly', async () => {
    const daemon = up()
    const ready = await daemon.waitForJson((l) => typeof l['socket'] === 'string', 30_000)
    expect(ready).toMatchObject({
      pid: daemon.child.pid,
      socket: daemonPaths(home).socket,
      meshes: ['cli'],
      sessions: 0,
    })
    expect((await stat(daemonPaths(home).socket)).mode & 0o777).toBe(0o600)

    const status = await runAgentmesh(['daemon', 'status', '--json', '--home', home])
    expect(status.code, status.stderr).toBe(0)
    expect(JSON.parse(status.stdout)).toMatchObject({
      running: true,
      pid: daemon.child.pid,
      port: ready['port'],
      meshes: [{ mesh: 'cli' }],
      sessions: [],
    })
    const text = await runAgentmesh(['daemon', 'status', '--home', home])
    expect(text.stdout).toContain(`daemon pid ${daemon.child.pid}`)
    expect(text.stdout).toContain('mesh cli (')

    const second = await runAgentmesh(['daemon', 'up', '--no-p2p', '--home', home])
    expect(second.code).toBe(1)
    expect(second.stderr).toMatch(/^error: MESH_ERR_DAEMON_RUNNING: .*pid \d+/m)
    expect(second.stderr).not.toMatch(/^\s+at /m)

    const down = await runAgentmesh(['daemon', 'down', '--json', '--home', home])
    expect(down.code, down.stderr).toBe(0)
    expect(JSON.parse(down.stdout)).toEqual({ stopped: true, pid: daemon.child.pid })
    expect(await daemon.exited).toEqual({ code: 0, signal: null })
    for (const f of [daemonPaths(home).socket, daemonPaths(home).lock, daemonPaths(home).info]) {
      await expect(stat(f)).rejects.toMatchObject({ code: 'ENOENT' })
    }

    const none = await runAgentmesh(['daemon', 'status', '--json', '--home', home])
    expect(none.code).toBe(3)
    expect(JSON.parse(none.stdout)).toEqual({ running: false })
    const downAgain = await runAgentmesh(['daemon', 'down', '--json', '--home', home])
    expect(downAgain.code).toBe(0)
    expect(JSON.parse(downAgain.stdout)).toEqual({ stopped: false })

    const again = up()
    await again.waitForJson((l) => typeof l['socket'] === 'string', 30_000)
    expect(await again.stop('SIGTERM')).toEqual({ code: 0, signal: null })
    expect(again.stderr).toContain('daemon stopped')
    await expect(stat(daemonPaths(home).lock)).rejects.toMatchObject({ code: 'ENOENT' })
  }, 120_000)

  it('up --help says P2P is on by default and how to turn it off', async () => {
    const help = await runAgentmesh(['daemon', 'up', '--help'])
    expect(help.code).toBe(0)
    expect(help.stdout).toMatch(/on by default/)
    expect(help.stdout).toMatch(/--no-p2p/)
  })

  it('install --print shows a systemd unit and a launchd agent pinning node and the CLI', async () => {
    const linux = await runAgentmesh(['daemon', 'install', '--print', '--platform', 'linux', '--home', home])
    expect(linux.code, linux.stderr).toBe(0)
    expect(linux.stdout).toContain(`ExecStart=${process.execPath} ${BIN} daemon up --home ${home}\n`)
    expect(linux.stdout).toContain(`Environment=AGENTMESH_HOME=${home}\n`)
    expect(linux.stdout).toMatch(/^\[Service\]$/m)
    expect(linux.stdout).toContain('Restart=on-failure')
    expect(linux.stdout).toContain('WantedBy=default.target')

    const mac = await runAgentmesh(['daemon', 'install', '--print', '--platform', 'darwin', '--home', home])
    expect(mac.code, mac.stderr).toBe(0)
    expect(mac.stdout).toContain('<string>dev.agentmesh.daemon</string>')
    expect(mac.stdout).toContain(
      ['<array>', process.execPath, BIN, 'daemon', 'up', '--home', home]
        .map((a, i) => (i === 0 ? `  ${a}` : `    <string>${a}</string>`))
        .join('\n'),
    )
    expect(mac.stdout).toContain('<key>RunAtLoad</key>')
  })

  it('install writes the unit under $XDG_CONFIG_HOME (0600) and only prints how to start it', async () => {
    const config = join(world.root, 'xdg')
    const r = await runAgentmesh(['daemon', 'install', '--platform', 'linux', '--json', '--home', home], {
      XDG_CONFIG_HOME: config,
    })
    expect(r.code, r.stderr).toBe(0)
    const path = join(config, 'systemd', 'user', 'agentmesh-daemon.service')
    expect(JSON.parse(r.stdout)).toMatchObject({
      platform: 'linux',
      path,
      written: true,
      activate: ['systemctl --user daemon-reload', 'systemctl --user enable --now agentmesh-daemon.service'],
    })
    const text = await readFile(path, 'utf8')
    expect(text).toContain(`ExecStart=${process.execPath} ${BIN} daemon up --home ${home}`)
    expect((await stat(path)).mode & 0o777).toBe(0o600)
  })
})
