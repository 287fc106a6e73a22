import { createHash, randomBytes } from 'node:crypto'
import { createReadStream, createWriteStream } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { once } from 'node:events'
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
import { createCliMesh, daemonConnected, stderrSays } from '../../../test/support/cli-mesh.js'
import { connectDaemon } from '../daemon/connect.js'
import type { FileSendJson } from './send.js'

const MiB = 1024 * 1024

async function sha256Of(path: string): Promise<string> {
  const hash = createHash('sha256')
  for await (const piece of createReadStream(path)) hash.update(piece as Buffer)
  return hash.digest('hex')
}

/** A file of `bytes` random bytes at `path`, and its SHA-256. */
async function randomFile(path: string, bytes: number): Promise<string> {
  const out = createWriteStream(path)
  const hash = createHash('sha256')
  for (let left = bytes; left > 0; left -= MiB) {
    const block = randomBytes(Math.min(MiB, left))
    hash.update(block)
    if (!out.write(block)) await once(out, 'drain')
  }
  out.end()
  await once(out, 'finish')
  return hash.digest('hex')
}

/** Resolves once the child's stdout contains `text`; rejects if it exits first or after `timeoutMs`. */
async function stdoutSays(p: AgentmeshProcess, text: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!p.stdout.includes(text)) {
    if (p.child.exitCode !== null) throw new Error(`exited before printing ${text}:\n${p.stderr}`)
    if (Date.now() > deadline)
      throw new Error(`no ${JSON.stringify(text)} after ${timeoutMs} ms:\n${p.stdout}`)
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, Math.max(0, deadline - Date.now()))
      p.child.stdout?.once('data', () => {
        clearTimeout(timer)
        resolve(undefined)
      })
    })
  }
}

/** `agentmesh file send` end to end: the real binary, a real coordinator, temp homes. */
describe('agentmesh file send (the real binary)', () => {
  let root: string
  let coordinator: RunningCoordinator
  let blob: string
  let blobSha: string
  const running: AgentmeshProcess[] = []
  const home = (name: string): string => join(root, name)

  function spawn(args: string[]): AgentmeshProcess {
    const p = spawnAgentmesh(args)
    running.push(p)
    return p
  }

  /** `bob` sends the blob to `to`; returns the parsed `--json` and the run's stderr. */
  async function send(
    to: string,
    extra: string[] = [],
  ): Promise<{ json: FileSendJson; stderr: string; ms: number }> {
    const began = performance.now()
    const r = await runAgentmesh(['file', 'send', to, blob, '--json', '--home', home('bob'), ...extra])
    expect(r.code, r.stderr).toBe(0)
    return { json: JSON.parse(r.stdout) as FileSendJson, stderr: r.stderr, ms: performance.now() - began }
  }

  /** What `bob` sent, as it lies under `name`'s home. */
  async function receivedAt(name: string, savedAs: string): Promise<string> {
    return sha256Of(join(home(name), 'files', 'team', 'bob', savedAs))
  }

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'agentmesh-file-'))
    coordinator = await startCoordinator(['--data-dir', join(root, 'coordinator'), '--log-level', 'warn'])
    await createCliMesh({
      root,
      coordinatorUrl: coordinator.ready.url,
      admin: { tokenFile: join(root, 'coordinator', 'admin-token') },
      members: ['alice', 'bob', 'carol'],
    })
    blob = join(root, 'blob.bin')
    blobSha = await randomFile(blob, 20 * MiB)
  }, 90_000)

  afterEach(async () => {
    await Promise.all(running.splice(0).map((p) => p.stop('SIGTERM')))
  })

  afterAll(async () => {
    await Promise.all(running.map((p) => p.stop('SIGKILL')))
    await coordinator?.process.stop('SIGKILL')
    await rm(root, { recursive: true, force: true })
  })

  it('20 MiB to a `listen`: over P2P, then with --no-p2p over the relay; intact, with progress on both sides', async () => {
    const alice = spawn(['listen', '--home', home('alice')])
    await stderrSays(alice, 'listening on mesh team')

    const p2p = await send('alice')
    expect(p2p.json).toMatchObject({
      toName: 'alice',
      name: 'blob.bin',
      savedAs: 'blob.bin',
      size: 20 * MiB,
      sha256: blobSha,
      transport: 'p2p',
    })
    expect(p2p.json.chunks['p2p']).toBeGreaterThan(0)
    expect(await receivedAt('alice', 'blob.bin')).toBe(blobSha)
    expect(p2p.stderr).toContain('connecting directly as session cli-file')
    for (const pct of ['10%', '50%', '100%']) expect(p2p.stderr).toContain(`agentmesh: blob.bin: ${pct} (`)
    await stderrSays(alice, 'received blob.bin (20.0 MiB) from bob')
    expect(alice.stderr).toContain('agentmesh: receiving blob.bin (20.0 MiB) from bob')
    expect(alice.stderr).toContain('agentmesh: blob.bin: 50% (')
    expect(alice.stderr).toContain(
      `sha-256 ${blobSha} ok: ${join(home('alice'), 'files', 'team', 'bob', 'blob.bin')}`,
    )

    const relay = await send('alice', ['--no-p2p'])
    expect(relay.json).toMatchObject({ savedAs: 'blob-1.bin', sha256: blobSha, transport: 'relay' })
    expect(relay.json.chunks).toEqual({ relay: Math.ceil((20 * MiB + 100) / (60 * 1024 - 64)) })
    expect(await receivedAt('alice', 'blob-1.bin')).toBe(blobSha)
    expect(relay.stderr).toContain('agentmesh: blob.bin: 100% (')
    await stderrSays(alice, 'received blob.bin (20.0 MiB) from bob', 30_000, 2)
    // The listener printed no message for the chunks: stdout is for messages.
    expect(alice.stdout).toBe('')
    if (process.env['FILE_TEST_SHOW'] !== undefined)
      console.log(`bob:\n${p2p.stderr}\nalice:\n${alice.stderr}`)
    console.log(
      `file send 20 MiB: p2p ${(p2p.json.ms / 1000).toFixed(1)} s (chunks ${JSON.stringify(p2p.json.chunks)}, ` +
        `run ${(p2p.ms / 1000).toFixed(1)} s); relay ${(relay.json.ms / 1000).toFixed(1)} s (run ${(relay.ms / 1000).toFixed(1)} s)`,
    )
  }, 120_000)

  it("the home's daemon receives too, its log says so, and a `listen` through it prints no chunk", async () => {
    const daemon = spawn(['daemon', 'up', '--json', '--home', home('carol')])
    await daemon.waitForJson((l) => typeof l['socket'] === 'string', 30_000)
    await daemonConnected(daemon)
    const listen = spawn(['listen', '--home', home('carol')])
    await stderrSays(listen, 'listening on mesh team through the daemon')
    const sent = await send('carol')
    expect(sent.json).toMatchObject({ toName: 'carol', savedAs: 'blob.bin', sha256: blobSha })
    expect(await receivedAt('carol', 'blob.bin')).toBe(blobSha)
    await stderrSays(daemon, '"msg":"file received"')
    expect(daemon.stderr).toContain('"msg":"file transfer progress"')
    // The daemon's events carry the chunks too: `listen` skips them and prints the next message only.
    const dm = await runAgentmesh(['send', 'carol', 'after the file', '--home', home('bob')])
    expect(dm.code, dm.stderr).toBe(0)
    await stdoutSays(listen, 'after the file')
    expect(listen.stdout).toBe('bob: after the file\n')
    // Nor does the daemon's IPC hand the chunks out: its inbox lists the DM only, and moves past them.
    const daemonIpc = await connectDaemon(home('carol'))
    try {
      const admin = daemonIpc!.client
      const { token } = await admin.call<{ token: string }>('POST', '/v1/sessions', {
        mesh: 'team',
        sessionId: 'probe',
      })
      const inbox = await admin
        .as(token)
        .call<{ messages: { channel: string }[]; next: number }>('GET', '/v1/inbox?limit=1000')
      expect(inbox.messages.map((m) => m.channel)).toEqual(['dm'])
      expect(inbox.next).toBeGreaterThan(300) // past the file's 342 chunks
    } finally {
      daemonIpc?.client.close()
    }
    console.log(
      `file send 20 MiB to a daemon: ${(sent.json.ms / 1000).toFixed(1)} s (${sent.json.transport})`,
    )
  }, 90_000)

  it('an unknown peer exits 6, a missing file or a bad --name is a usage error; nothing is sent', async () => {
    const unknown = await runAgentmesh(['file', 'send', 'zed', blob, '--home', home('bob')])
    expect(unknown.code).toBe(6)
    expect(unknown.stderr).toMatch(/^error: MESH_ERR_UNKNOWN_KEY: no verified peer is named "zed"/m)
    const missing = await runAgentmesh([
      'file',
      'send',
      'alice',
      join(root, 'nope.bin'),
      '--home',
      home('bob'),
    ])
    expect(missing.code).toBe(2)
    expect(missing.stdout).toContain('nope.bin: no such file')
    const bad = await runAgentmesh(['file', 'send', 'alice', blob, '--name', '../x', '--home', home('bob')])
    expect(bad.code).toBe(2)
    expect(bad.stdout).toContain('the name holds a path separator')
    // alice's `listen` stopped: refused within the timeout, not after a stall. (While the coordinator
    // keeps the closed presence's lease it still lists alice online; then the unanswered offer says it.)
    const began = performance.now()
    const offline = await runAgentmesh([
      'file',
      'send',
      'alice',
      blob,
      '--timeout',
      '3s',
      '--home',
      home('bob'),
    ])
    expect(offline.code).toBe(1)
    expect(offline.stderr).toMatch(
      /^error: MESH_ERR_PEER_UNREACHABLE: (alice is not online|the receiver did not answer the offer within 3000 ms)/m,
    )
    expect(performance.now() - began).toBeLessThan(15_000)
  }, 60_000)
})
