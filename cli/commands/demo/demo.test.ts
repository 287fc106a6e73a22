import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { am } from '../../../test/support/cli-mesh.js'
import { buildOnce, spawnAgentmesh } from '../../../test/support/coordinator-process.js'
import { eventually } from '../../../test/support/eventually.js'

// `agentmesh demo` with the real binary, as a user runs it from a fresh clone: a HOME and a TMPDIR of its
// own, both empty before and (the demo leaves nothing behind) after.
describe('agentmesh demo (the real binary)', () => {
  let root: string
  let env: { HOME: string; TMPDIR: string }

  beforeAll(() => buildOnce(), 60_000)

  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'agentmesh-demo-test-'))
    env = { HOME: join(root, 'home'), TMPDIR: join(root, 'tmp') }
    await mkdir(env.HOME)
    await mkdir(env.TMPDIR)
  })

  afterEach(async () => {
    await rm(root, { recursive: true, force: true })
  })

  /** Nothing left in the demo's TMPDIR or HOME, and no process working in its TMPDIR. */
  async function nothingLeft(): Promise<void> {
    expect(await processesUnder(env.TMPDIR)).toEqual([])
    expect(await readdir(env.TMPDIR)).toEqual([])
    expect(await readdir(env.HOME)).toEqual([])
  }

  it('prints every step, names the transport of each message, checks the file, and leaves nothing behind', async () => {
    const r = await am(['demo'], env)
    expect(r.code, r.stderr).toBe(0)
    expect(r.stderr).toBe('')
    const lines = r.stdout.trimEnd().split('\n')
    const line = (label: string): string => {
      const found = lines.filter((l) => l.startsWith(`${label} `))
      expect(found, `one "${label}" line in:\n${r.stdout}`).toHaveLength(1)
      return found[0]!
    }
    expect(line('coordinator up')).toMatch(
      / \d+ ms {2}pglite store in .*, listening on http:\/\/127\.0\.0\.1:\d+$/,
    )
    expect(line('peers connected')).toMatch(/alice made mesh demo, bob joined .*both sessions said hello/)
    expect(line('found each other')).toMatch(
      /alice sees bob \(online, p2p\); bob sees alice \(online, p2p\)$/,
    )
    // On loopback with host candidates only, the data channel comes up; the first message went before it.
    expect(line('upgraded to P2P')).toMatch(
      /message alice → bob "hi bob" via relay .*; data channel up \d+ ms after it$/,
    )
    expect(line('DM')).toMatch(/message alice → bob "how is it going\?" via p2p$/)
    expect(line('file')).toMatch(
      /alice → bob 384 KiB over a stream in 7 chunks via p2p, sha-256 [0-9a-f]{16}… matches$/,
    )
    expect(line('offline message')).toMatch(
      /bob went offline; message alice → bob "are you there\?" via relay: queued — recipient offline$/,
    )
    expect(line('drained')).toMatch(
      /bob came back: message alice → bob "are you there\?" via relay, from the coordinator's queue/,
    )
    expect(line('done')).toMatch(
      /8 steps passed; P2P came up; messages 1 via p2p, 2 via relay; file chunks 7 via p2p; closed everything and removed /,
    )
    // Every line that tells of a message names its transport.
    const messages = lines.filter((l) => / message \w+ → /.test(l))
    expect(messages).toHaveLength(4)
    for (const m of messages) expect(m).toMatch(/ via (p2p|relay)\b/)
    await nothingLeft()
  }, 90_000)

  it('--json prints one object per step in order, each message with its transport', async () => {
    const r = await am(['demo', '--json'], env)
    expect(r.code, r.stderr).toBe(0)
    const records = r.stdout
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>)
    expect(records.map((x) => x['step'])).toEqual([
      'coordinator',
      'connected',
      'found',
      'p2p',
      'dm',
      'file',
      'offline',
      'drained',
      'summary',
    ])
    for (const x of records) expect(x).toMatchObject({ ok: true, ms: expect.any(Number) })
    const [coordinator, connected, found, p2p, dm, file, offline, drained, summary] = records
    expect(coordinator).toMatchObject({
      url: expect.stringMatching(/^http:\/\/127\.0\.0\.1:\d+$/),
      driver: 'pglite',
      dataDir: expect.stringContaining(env.TMPDIR),
    })
    expect(connected).toMatchObject({
      mesh: 'demo',
      peers: [
        { name: 'alice', pk: expect.stringMatching(/^[0-9a-f]{64}$/) },
        { name: 'bob', pk: expect.stringMatching(/^[0-9a-f]{64}$/) },
      ],
    })
    expect(found).toMatchObject({
      seen: [
        { by: 'alice', peer: 'bob', online: true, p2p: true },
        { by: 'bob', peer: 'alice', online: true, p2p: true },
      ],
    })
    const message = (text: string, via: string): Record<string, unknown> => ({
      from: 'alice',
      to: 'bob',
      text,
      clientMessageId: expect.stringMatching(/^[0-9A-HJKMNP-TV-Z]{26}$/),
      via,
    })
    expect(p2p).toMatchObject({ up: true, upMs: expect.any(Number), message: message('hi bob', 'relay') })
    expect(dm).toMatchObject({ message: message('how is it going?', 'p2p') })
    expect(file).toMatchObject({
      bytes: 384 * 1024,
      chunks: 7,
      via: 'p2p',
      chunksVia: { p2p: 7 },
      sha256: expect.stringMatching(/^[0-9a-f]{64}$/),
      match: true,
    })
    expect(file!['sha256']).toBe(file!['sentSha256'])
    expect(offline).toMatchObject({ message: { ...message('are you there?', 'relay'), state: 'queued' } })
    expect(drained).toMatchObject({ message: message('are you there?', 'relay') })
    expect((drained!['message'] as { clientMessageId: string }).clientMessageId).toBe(
      (offline!['message'] as { clientMessageId: string }).clientMessageId,
    )
    expect(summary).toMatchObject({
      steps: 8,
      p2p: true,
      messagesVia: { p2p: 1, relay: 2 },
      chunksVia: { p2p: 7 },
      cleanedUp: true,
      root: expect.stringContaining(env.TMPDIR),
    })
    await nothingLeft()
  }, 90_000)

  it('--relay-only says P2P is off and sends everything through the coordinator', async () => {
    const r = await am(['demo', '--relay-only', '--json'], env)
    expect(r.code, r.stderr).toBe(0)
    const records = r.stdout
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>)
    const byStep = new Map(records.map((x) => [x['step'], x]))
    expect(byStep.get('found')).toMatchObject({ seen: [{ p2p: false }, { p2p: false }] })
    expect(byStep.get('p2p')).toMatchObject({
      up: false,
      reason: { code: 'MESH_ERR_PEER_UNREACHABLE', message: 'P2P is off (--relay-only)' },
      message: { via: 'relay' },
    })
    expect(byStep.get('dm')).toMatchObject({ message: { via: 'relay' } })
    expect(byStep.get('file')).toMatchObject({ via: 'relay', chunksVia: { relay: 7 }, match: true })
    expect(byStep.get('summary')).toMatchObject({ steps: 8, p2p: false, messagesVia: { p2p: 0, relay: 3 } })
    await nothingLeft()
  }, 90_000)

  it('Ctrl-C during the coordinator step stops the demo, names the step and its code, and removes everything', async () => {
    const p = spawnAgentmesh(['demo', '--json'], env)
    // The store's directory exists while initdb runs (in a child process, for seconds).
    await eventually(async () => (await demoDirs()).some((d) => d.includes('coordinator')), {
      timeoutMs: 30_000,
      what: 'the coordinator data directory',
    })
    p.child.kill('SIGINT')
    const exit = await p.exited
    expect(exit, p.stdout + p.stderr).toEqual({ code: 1, signal: null })
    expect(p.stderr).toMatch(/^error: MESH_ERR_SHUTTING_DOWN: step coordinator failed: interrupted/m)
    expect(p.jsonLines()).toEqual([
      {
        step: 'coordinator',
        ok: false,
        ms: expect.any(Number),
        error: { code: 'MESH_ERR_SHUTTING_DOWN', message: expect.stringContaining('interrupted') },
      },
    ])
    await nothingLeft()
  }, 90_000)

  it('a step that fails exits 1 naming the step and its code', async () => {
    // TMPDIR names a file: the demo cannot make its directory.
    const file = join(root, 'not-a-dir')
    await writeFile(file, '')
    const r = await am(['demo'], { ...env, TMPDIR: file })
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/^error: ENOTDIR: step coordinator failed: cannot make a temp directory in /m)
    expect(r.stdout).toMatch(/^coordinator up +\d+ ms {2}FAILED: ENOTDIR: /m)
    expect(r.stdout).not.toMatch(/^done /m)
  }, 30_000)

  /** `agentmesh-demo-*` entries of the demo's TMPDIR, with their first level (`dir/coordinator`). */
  async function demoDirs(): Promise<string[]> {
    const out: string[] = []
    for (const d of await readdir(env.TMPDIR)) {
      out.push(d)
      for (const e of await readdir(join(env.TMPDIR, d)).catch(() => [])) out.push(`${d}/${e}`)
    }
    return out
  }
})

/** Live processes whose command line names a path under `dir` (an initdb child left running). */
async function processesUnder(dir: string): Promise<string[]> {
  const found: string[] = []
  for (const pid of await readdir('/proc')) {
    if (!/^\d+$/.test(pid)) continue
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')
    if (cmdline.includes(dir)) found.push(`${pid}: ${cmdline.replaceAll('\0', ' ')}`)
  }
  return found
}
