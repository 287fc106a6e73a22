import { execFile } from 'node:child_process'
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { createServer, type Server, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import {
  spawnAgentmesh,
  startCoordinator,
  type AgentmeshProcess,
  type RunningCoordinator,
} from '../../../test/support/coordinator-process.js'
import { am, createCliMesh } from '../../../test/support/cli-mesh.js'
import { EXIT } from '../exit-codes.js'
import type { DoctorJson } from './doctor.js'

const NAMES = [
  'home permissions',
  'coordinator reachable (team)',
  'coordinator key (team)',
  'clock skew (team)',
  'daemon',
  'node-datachannel',
  'p2p loopback',
]

/** The stdout line of check `name` (human output). */
function lineOf(stdout: string, name: string): string {
  const line = stdout.split('\n').find((l) => l.slice(5).startsWith(`${name}: `))
  if (line === undefined) throw new Error(`no line for ${name} in:\n${stdout}`)
  return line
}

// `agentmesh doctor` with the real binary in temp homes joined to a real coordinator (`coordinator up` on
// port 0, so its clock is the real one), then with what breaks: a readable file, a changed pinned key, a
// daemon, a coordinator that never answers and one that stopped.
describe('agentmesh doctor (the real binary)', () => {
  let root: string
  let coordinator: RunningCoordinator
  const running: AgentmeshProcess[] = []
  const home = (name: string): string => join(root, name)
  const doctor = (name: string, ...args: string[]) => am(['doctor', '--home', home(name), ...args])

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'agentmesh-doctor-'))
    coordinator = await startCoordinator(['--data-dir', home('coordinator-data')], {
      AGENTMESH_HOME: home('operator'),
    })
    await createCliMesh({
      root,
      coordinatorUrl: coordinator.ready.url,
      admin: { tokenFile: join(home('coordinator-data'), 'admin-token') },
      members: ['alice', 'bob', 'carol'],
    })
  }, 90_000)

  afterEach(async () => {
    await Promise.all(running.splice(0).map((p) => p.stop('SIGKILL')))
  })

  afterAll(async () => {
    await coordinator?.process.stop('SIGKILL')
    await rm(root, { recursive: true, force: true })
  })

  it('passes every check on a healthy home, in text and in --json', async () => {
    const text = await doctor('alice')
    expect(text.code, text.stdout + text.stderr).toBe(EXIT.OK)
    const lines = text.stdout.trimEnd().split('\n')
    expect(lines).toHaveLength(NAMES.length)
    for (const [i, name] of NAMES.entries()) expect(lines[i]).toMatch(new RegExp(`^ok   ${escape(name)}: `))
    expect(lineOf(text.stdout, 'coordinator reachable (team)')).toContain(coordinator.ready.url)
    expect(lineOf(text.stdout, 'coordinator key (team)')).toContain(
      coordinator.ready.coordinatorPk.slice(0, 16),
    )
    expect(lineOf(text.stdout, 'daemon')).toMatch(/not running/)
    expect(lineOf(text.stdout, 'node-datachannel')).toMatch(/: \d+\.\d+\.\d+ loads \(libdatachannel \d/)
    expect(lineOf(text.stdout, 'p2p loopback')).toMatch(/one message crossed a data channel on 127\.0\.0\.1/)

    const json = await doctor('alice', '--json')
    expect(json.code, json.stderr).toBe(EXIT.OK)
    const out = JSON.parse(json.stdout) as DoctorJson
    expect(Object.keys(out).sort()).toEqual(['checks', 'ok'])
    expect(out.ok).toBe(true)
    expect(out.checks.map((c) => c.name)).toEqual(NAMES)
    for (const c of out.checks) {
      expect(Object.keys(c).sort()).toEqual(['detail', 'name', 'status'])
      expect(c).toMatchObject({ status: 'ok', detail: expect.any(String) })
    }
    // The clock the skew is read from: the coordinator's own, in ms.
    const health = (await (await fetch(`${coordinator.ready.url}/health`)).json()) as { time: number }
    expect(Math.abs(health.time - Date.now())).toBeLessThan(60_000)
  })

  it('on a home that joined nothing, says so as a warning with the command that fixes it', async () => {
    const r = await doctor('nobody', '--json')
    expect(r.code, r.stderr).toBe(EXIT.OK)
    const out = JSON.parse(r.stdout) as DoctorJson
    expect(out.ok).toBe(true)
    expect(out.checks.find((c) => c.name === 'coordinator reachable')).toMatchObject({
      status: 'warn',
      detail: expect.stringMatching(/has joined no mesh/),
      fix: expect.stringMatching(/agentmesh join <token>/),
    })
    // --coordinator checks one without a membership: reachability (and the clock), no key.
    const direct = await doctor('nobody', '--coordinator', coordinator.ready.url, '--json')
    expect(direct.code, direct.stderr).toBe(EXIT.OK)
    const names = (JSON.parse(direct.stdout) as DoctorJson).checks.map((c) => c.name)
    expect(names).toContain(`coordinator reachable (${coordinator.ready.url})`)
    expect(names.some((n) => n.startsWith('coordinator key'))).toBe(false)
  })

  it('fails a home whose files or folders others can read, with the fix; the fix fixes it', async () => {
    const key = join(home('bob'), 'meshes', 'team', 'member.key')
    await chmod(key, 0o644)
    await chmod(join(home('bob'), 'meshes', 'team'), 0o755)
    const r = await doctor('bob')
    expect(r.code, r.stdout).toBe(EXIT.DOCTOR_FAILED)
    const line = lineOf(r.stdout, 'home permissions')
    expect(line).toMatch(/^fail /)
    expect(line).toContain(`${key} (mode 0644)`)
    expect(line).toContain(`${join(home('bob'), 'meshes', 'team')} (mode 0755)`)
    expect(line).toContain(`→ fix: chmod -R go-rwx ${home('bob')}`)
    // The other checks still ran and passed.
    expect(lineOf(r.stdout, 'coordinator key (team)')).toMatch(/^ok /)
    const fix = /→ fix: (.*)$/.exec(line)![1]!
    await promisify(execFile)('sh', ['-c', fix])
    const again = await doctor('bob')
    expect(again.code, again.stdout).toBe(EXIT.OK)
  })

  it('fails the key check naming both keys when the pinned coordinatorPk differs', async () => {
    const path = join(home('carol'), 'meshes', 'team', 'mesh.json')
    const original = await readFile(path, 'utf8')
    const other = 'ab'.repeat(32)
    await writeFile(path, JSON.stringify({ ...JSON.parse(original), coordinatorPk: other }))
    try {
      const r = await doctor('carol', '--json')
      expect(r.code, r.stdout).toBe(EXIT.DOCTOR_FAILED)
      const out = JSON.parse(r.stdout) as DoctorJson
      expect(out.ok).toBe(false)
      const check = out.checks.find((c) => c.name === 'coordinator key (team)')
      expect(check).toMatchObject({
        status: 'fail',
        fix: expect.stringMatching(/agentmesh join <token> --force/),
      })
      expect(check!.detail).toContain(`presents key ${coordinator.ready.coordinatorPk}`)
      expect(check!.detail).toContain(`pinned ${other}`)
      expect(out.checks.filter((c) => c.status === 'fail').map((c) => c.name)).toEqual([
        'coordinator key (team)',
      ])
    } finally {
      await writeFile(path, original)
    }
  })

  it('reports a running daemon by its pid, and none once it stopped', async () => {
    const daemon = spawnAgentmesh(['daemon', 'up', '--json', '--no-p2p', '--home', home('alice')])
    running.push(daemon)
    await daemon.waitForJson((l) => typeof l['socket'] === 'string', 30_000)
    const up = await doctor('alice')
    expect(up.code, up.stdout).toBe(EXIT.OK)
    expect(lineOf(up.stdout, 'daemon')).toMatch(
      new RegExp(`^ok   daemon: pid ${daemon.child.pid} answers on ${escape(home('alice'))}/daemon\\.sock`),
    )
    expect(await daemon.stop('SIGTERM')).toEqual({ code: 0, signal: null })
    const down = await doctor('alice')
    expect(lineOf(down.stdout, 'daemon')).toMatch(/^ok {3}daemon: not running/)
  })

  it('gives up on a coordinator that never answers within --timeout', async () => {
    const silent = await silentServer()
    try {
      const url = `http://127.0.0.1:${silent.port}`
      const started = Date.now()
      const r = await doctor('alice', '--mesh', 'team', '--coordinator', url, '--timeout', '2s')
      const took = Date.now() - started
      expect(r.code, r.stdout).toBe(EXIT.DOCTOR_FAILED)
      expect(lineOf(r.stdout, 'coordinator reachable (team)')).toMatch(
        new RegExp(
          `^fail coordinator reachable \\(team\\): no answer from ${escape(url)} \\(no answer within 2 s\\)`,
        ),
      )
      expect(lineOf(r.stdout, 'coordinator key (team)')).toMatch(/^warn .*not checked/)
      // 2 s for the checks (in parallel) and the binary's own start and exit.
      expect(took).toBeLessThan(10_000)
    } finally {
      await silent.close()
    }
  })

  // Last: the coordinator does not come back.
  it('fails reachability naming the URL once the coordinator stopped', async () => {
    expect((await coordinator.process.stop('SIGTERM')).code).toBe(0)
    const url = coordinator.ready.url
    const r = await doctor('alice')
    expect(r.code, r.stdout).toBe(EXIT.DOCTOR_FAILED)
    const line = lineOf(r.stdout, 'coordinator reachable (team)')
    expect(line).toMatch(new RegExp(`^fail coordinator reachable \\(team\\): no answer from ${escape(url)} `))
    expect(line).toMatch(/→ fix: start the coordinator/)
    expect(line).toContain(`meshes/team/mesh.json names ${url}`)
    expect(lineOf(r.stdout, 'p2p loopback')).toMatch(/^ok /)
    const direct = await doctor('nobody', '--coordinator', url)
    expect(direct.code).toBe(EXIT.DOCTOR_FAILED)
    expect(lineOf(direct.stdout, `coordinator reachable (${url})`)).toMatch(
      new RegExp(`^fail .*no answer from ${escape(url)} `),
    )
  })
})

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
}

/** A TCP server on 127.0.0.1 that accepts connections and never says a word. */
async function silentServer(): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>()
  const server: Server = createServer((s) => {
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const address = server.address()
  const port = typeof address === 'object' && address !== null ? address.port : 0
  return {
    port,
    async close() {
      for (const s of sockets) s.destroy()
      await new Promise((resolve) => server.close(resolve))
    },
  }
}
