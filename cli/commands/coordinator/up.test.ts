import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { toHex } from '../../../protocol/index.js'
import {
  buildOnce,
  runAgentmesh,
  startCoordinator,
  type RunningCoordinator,
} from '../../../test/support/coordinator-process.js'
import { MeshClient } from '../../../test/support/mesh-client.js'

// The tests run in order on one home: the first start creates the data directory the others reuse.
describe('agentmesh coordinator up (the real binary)', () => {
  let home: string
  let dataDir: string
  let first: RunningCoordinator | undefined
  const running: RunningCoordinator[] = []

  beforeAll(async () => {
    home = await mkdtemp(join(tmpdir(), 'agentmesh-up-'))
    dataDir = join(home, 'coordinator')
    await buildOnce()
  })

  afterAll(async () => {
    await Promise.all(running.map((c) => c.process.stop('SIGKILL')))
    await rm(home, { recursive: true, force: true })
  })

  async function start(args: string[] = [], env: Record<string, string> = {}): Promise<RunningCoordinator> {
    const c = await startCoordinator(args, { AGENTMESH_HOME: home, ...env })
    running.push(c)
    return c
  }

  it('starts in <home>/coordinator: key and admin token 0600, the token printed once, /health 200', async () => {
    // No --port, no --data-dir: $AGENTMESH_PORT and $AGENTMESH_HOME decide.
    first = await start([], { AGENTMESH_PORT: '0' })
    const { ready } = first
    expect(ready).toMatchObject({ driver: 'pglite', dataDir, nodeId: expect.any(String) })
    expect(ready.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/)

    const key = join(dataDir, 'coordinator.key')
    const token = join(dataDir, 'admin-token')
    expect((await stat(key)).mode & 0o777).toBe(0o600)
    expect((await stat(token)).mode & 0o777).toBe(0o600)
    expect((await stat(dataDir)).mode & 0o777).toBe(0o700)
    expect(JSON.parse(await readFile(key, 'utf8'))).toMatchObject({
      kind: 'coordinator',
      publicKey: ready.coordinatorPk,
    })
    const tokenText = (await readFile(token, 'utf8')).trim()
    expect(first.process.stderr).toContain(tokenText)
    expect(first.process.stderr).toContain(`listening on ${ready.url}`)

    const res = await fetch(`${ready.url}/health`, { signal: AbortSignal.timeout(5000) })
    expect(res.status).toBe(200)
    expect(await res.json()).toMatchObject({
      ok: true,
      store: 'reachable',
      driver: 'pglite',
      nodeId: ready.nodeId,
    })
    // Logs are pino JSON lines on stdout.
    expect(first.process.jsonLines()).toContainEqual(
      expect.objectContaining({ level: 30, msg: 'coordinator up' }),
    )
  }, 60_000) // a first start runs PGlite's initdb: seconds, more on a busy machine

  it('refuses a second coordinator on the same data dir with MESH_ERR_STORE_LOCKED', async () => {
    const second = await runAgentmesh(['coordinator', 'up', '--port', '0', '--data-dir', dataDir], {
      AGENTMESH_HOME: home,
    })
    expect(second.code).toBe(1)
    expect(second.stderr).toMatch(/^error: MESH_ERR_STORE_LOCKED: .*in use by pid \d+.*\n$/)
    expect(second.stderr).not.toMatch(/^\s+at /m)
    const res = await fetch(`${first!.ready.url}/health`, { signal: AbortSignal.timeout(5000) })
    expect(res.status).toBe(200)
  })

  it('on SIGTERM closes connected sockets with 1001 and exits 0', async () => {
    const c = first!
    const client = await MeshClient.open(c.wsUrl)
    expect(toHex(client.challenge.coordinatorPk)).toBe(c.ready.coordinatorPk)
    const exit = await c.process.stop('SIGTERM')
    expect(exit).toEqual({ code: 0, signal: null })
    expect((await client.closed).code).toBe(1001)
    expect(c.process.jsonLines()).toContainEqual(expect.objectContaining({ msg: 'stopped' }))
    await expect(stat(join(dataDir, 'coordinator.lock'))).rejects.toMatchObject({ code: 'ENOENT' })
  })

  it('keeps the key and the admin token across a restart, and does not print the token again', async () => {
    const tokenBefore = await readFile(join(dataDir, 'admin-token'), 'utf8')
    const again = await start(['--data-dir', dataDir])
    expect(again.ready.coordinatorPk).toBe(first!.ready.coordinatorPk)
    const client = await MeshClient.open(again.wsUrl)
    expect(toHex(client.challenge.coordinatorPk)).toBe(first!.ready.coordinatorPk)
    expect(await readFile(join(dataDir, 'admin-token'), 'utf8')).toBe(tokenBefore)
    expect((await stat(join(dataDir, 'admin-token'))).mode & 0o777).toBe(0o600)
    expect((await stat(join(dataDir, 'coordinator.key'))).mode & 0o777).toBe(0o600)
    expect(again.process.stderr).not.toContain(tokenBefore.trim())
    expect(again.process.stderr).toContain(`admin token in ${join(dataDir, 'admin-token')}`)
    expect(await again.process.stop('SIGINT')).toEqual({ code: 0, signal: null })
    expect((await client.closed).code).toBe(1001)
  })

  it('reports user mistakes in one line with a code, exit 1 (2 for usage) and no stack trace', async () => {
    const file = join(home, 'not-a-dir')
    await writeFile(file, '')
    const cases = [
      {
        args: ['--port', '70000'],
        code: 2,
        out: 'stdout',
        line: /^Usage Error: --port must be a port number/,
      },
      {
        args: ['--log-level', 'loud'],
        code: 2,
        out: 'stdout',
        line: /^Usage Error: --log-level must be one of/,
      },
      {
        args: ['--data-dir', file],
        code: 1,
        out: 'stderr',
        line: /^error: ENOTDIR: cannot use the data directory/,
      },
      {
        // Port 1 on loopback: nothing listens there, so the connection is refused at once.
        args: ['--data-dir', join(home, 'pg'), '--database-url', 'postgres://postgres@127.0.0.1:1/none'],
        code: 1,
        out: 'stderr',
        line: /^error: MESH_ERR_STORE_UNAVAILABLE: .*ECONNREFUSED/,
      },
    ] as const
    for (const c of cases) {
      const r = await runAgentmesh(['coordinator', 'up', ...c.args], { AGENTMESH_HOME: home })
      expect(r.code, `${c.args.join(' ')}: ${r.stdout}${r.stderr}`).toBe(c.code)
      expect(r[c.out]).toMatch(c.line)
      expect(r.stdout + r.stderr).not.toMatch(/^\s+at /m)
    }
    const json = await runAgentmesh(['coordinator', 'up', '--json', '--data-dir', file], {
      AGENTMESH_HOME: home,
    })
    expect(JSON.parse(json.stdout)).toMatchObject({ error: { code: 'ENOTDIR' } })
  })
})
