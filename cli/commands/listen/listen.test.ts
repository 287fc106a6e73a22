import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import {
  runAgentmesh,
  spawnAgentmesh,
  startCoordinator,
  type AgentmeshProcess,
  type RunningCoordinator,
} from '../../../test/support/coordinator-process.js'
import { createCliMesh, stderrSays } from '../../../test/support/cli-mesh.js'

/** Resolves once stdout holds `n` lines. */
async function stdoutLines(p: AgentmeshProcess, n: number, timeoutMs = 30_000): Promise<string[]> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const lines = p.stdout.split('\n').filter((l) => l !== '')
    if (lines.length >= n) return lines
    if (p.child.exitCode !== null) throw new Error(`exited with ${lines.length} of ${n} lines:\n${p.stderr}`)
    if (Date.now() > deadline)
      throw new Error(`${lines.length} of ${n} lines after ${timeoutMs} ms:\n${p.stderr}`)
    await new Promise((resolve) => p.child.stdout?.once('data', resolve).once('close', resolve))
  }
}

// `listen` as a user runs it for days: through coordinator outages (kill -9 and restart), and beside
// the home's daemon. The real binary, a real coordinator process.
describe('agentmesh listen rides out outages (the real binary)', () => {
  let root: string
  let coordinator: RunningCoordinator
  let port: number
  const running: AgentmeshProcess[] = []
  const home = (name: string): string => join(root, name)

  async function am(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
    const r = await runAgentmesh(args)
    return { code: r.code, stdout: r.stdout, stderr: r.stderr }
  }
  function spawn(args: string[]): AgentmeshProcess {
    const p = spawnAgentmesh(args)
    running.push(p)
    return p
  }
  async function startOnPort(): Promise<void> {
    coordinator = await startCoordinator([
      '--data-dir',
      join(root, 'coordinator'),
      '--log-level',
      'warn',
      ...(port === undefined ? [] : ['--port', String(port)]),
    ])
    port = Number(new URL(coordinator.ready.url).port)
  }
  async function send(text: string): Promise<void> {
    const r = await am(['send', '--mesh', 'team', 'alice', text, '--home', home('bob')])
    expect(r.code, r.stderr).toBe(0)
  }

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'agentmesh-listen-'))
    await startOnPort()
    await createCliMesh({
      root,
      coordinatorUrl: coordinator.ready.url,
      admin: { tokenFile: join(root, 'coordinator', 'admin-token') },
      members: ['alice', 'bob'],
    })
  }, 90_000)

  afterEach(async () => {
    await Promise.all(running.splice(0).map((p) => p.stop('SIGKILL')))
  })

  afterAll(async () => {
    await coordinator?.process.stop('SIGKILL')
    await rm(root, { recursive: true, force: true })
  })

  it("beside the home's daemon it goes through it and never displaces the daemon's presence", async () => {
    const daemon = spawn(['daemon', 'up', '--json', '--no-p2p', '--home', home('alice')])
    await daemon.waitForJson((l) => typeof l['socket'] === 'string', 30_000)
    await stderrSays(daemon, 'mesh team: connected')
    const listen = spawn(['listen', '--mesh', 'team', '--json', '--home', home('alice')])
    await stderrSays(listen, `a daemon runs on this home (pid ${daemon.child.pid}): listening through it`)
    await stderrSays(listen, 'listening on mesh team through the daemon')
    await send('via the daemon')
    const [line] = await stdoutLines(listen, 1)
    expect(JSON.parse(line!)).toMatchObject({
      fromName: 'bob',
      payload: { text: 'via the daemon' },
      e2e: true,
    })

    // The daemon dies (kill -9) and comes back: listen re-dials it and resumes, nothing twice.
    await daemon.stop('SIGKILL')
    await stderrSays(listen, 'agentmesh: daemon unreachable, retrying in ')
    const daemon2 = spawn(['daemon', 'up', '--json', '--no-p2p', '--home', home('alice')])
    await daemon2.waitForJson((l) => typeof l['socket'] === 'string', 30_000)
    await stderrSays(listen, 'agentmesh: reconnected')
    await send('after the restart')
    const lines = await stdoutLines(listen, 2)
    expect(lines.map((l) => (JSON.parse(l) as { payload: { text: string } }).payload.text)).toEqual([
      'via the daemon',
      'after the restart',
    ])
    expect(await listen.stop('SIGINT')).toEqual({ code: 0, signal: null })

    // Started again, it resumes after what it printed: nothing twice, the one sent meanwhile once.
    await send('while it was off')
    const again = spawn(['listen', '--mesh', 'team', '--home', home('alice')])
    expect(await stdoutLines(again, 1)).toEqual(['bob: while it was off'])
    expect(await again.stop('SIGTERM')).toEqual({ code: 0, signal: null })

    // The daemon's presence stayed the daemon's all along: no 4003, no reconnect.
    for (const d of [daemon, daemon2]) expect(d.stderr).not.toMatch(/disconnected|stopped|REPLACED/)
    const status = await am(['daemon', 'status', '--json', '--home', home('alice')])
    expect(JSON.parse(status.stdout)).toMatchObject({ running: true, pid: daemon2.child.pid })
    expect(await daemon2.stop('SIGTERM')).toEqual({ code: 0, signal: null })
  })

  it('started while the coordinator is down it waits and says so; it survives kill -9 and restarts, printing each message once; SIGINT exits 0', async () => {
    await coordinator.process.stop('SIGKILL')
    // bob's daemon rides the same outages (per mesh), with the same helper.
    const daemon = spawn(['daemon', 'up', '--no-p2p', '--home', home('bob')])
    const listen = spawn(['listen', '--mesh', 'team', '--home', home('alice')])
    await stderrSays(listen, 'agentmesh: coordinator unreachable, retrying in ')
    expect(listen.stderr).toMatch(/coordinator unreachable, retrying in \d+\.\d s\n/)
    await stderrSays(daemon, 'agentmesh: mesh team: coordinator unreachable, retrying in ')
    await startOnPort()
    await stderrSays(listen, 'listening on mesh team')
    await stderrSays(daemon, 'mesh team: reconnected')
    await send('one')
    expect(await stdoutLines(listen, 1)).toEqual(['bob: one'])

    await coordinator.process.stop('SIGKILL')
    await stderrSays(listen, 'coordinator unreachable, retrying in ', 30_000, 2)
    await stderrSays(daemon, 'mesh team: coordinator unreachable, retrying in ', 30_000, 2)
    await startOnPort()
    await stderrSays(listen, 'agentmesh: reconnected', 30_000, 2)
    await stderrSays(daemon, 'mesh team: reconnected', 30_000, 2)
    await send('two')
    expect(await stdoutLines(listen, 2)).toEqual(['bob: one', 'bob: two'])
    // One line per outage, not one per retry.
    expect(listen.stderr.split('coordinator unreachable').length - 1).toBeLessThanOrEqual(4)
    expect(await listen.stop('SIGINT')).toEqual({ code: 0, signal: null })
    expect(listen.stdout).toBe('bob: one\nbob: two\n')
    expect(await daemon.stop('SIGTERM')).toEqual({ code: 0, signal: null })
  })
})
