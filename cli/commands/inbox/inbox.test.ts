import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { startWorld, type World } from '../../../test/support/coordinator-world.js'
import {
  buildOnce,
  spawnAgentmesh,
  type AgentmeshProcess,
} from '../../../test/support/coordinator-process.js'
import { am, createCliMesh, stderrSays } from '../../../test/support/cli-mesh.js'
import { EXIT } from '../exit-codes.js'

const ULID = /^[0-9A-HJKMNP-TV-Z]{26}$/
const HEX64 = /^[0-9a-f]{64}$/
const INBOX_KEYS = [
  'channel',
  'clientMessageId',
  'e2e',
  'from',
  'fromName',
  'payload',
  'read',
  'receivedAt',
  'seq',
  'status',
  'via',
].sort()

interface Listed {
  mesh: string
  via: string
  messages: Record<string, unknown>[]
  cursor: number
}

// `inbox` with the real binary in temp homes against a real coordinator on port 0: carol sends, alice
// reads. First without a daemon on alice's home (the inbox on disk; --follow connects as her member),
// then through her daemon.
describe('inbox [--unread] [--follow] (the real binary)', () => {
  let root: string
  let world: World
  const running: AgentmeshProcess[] = []
  const home = (name: string): string => join(root, name)
  const alice = (args: string[]) => am([...args, '--home', home('alice')])
  const texts = (l: Listed): unknown[] => l.messages.map((x) => (x['payload'] as { text?: unknown }).text)

  async function send(text: string): Promise<void> {
    const r = await am(['send', 'alice', text, '--home', home('carol')])
    expect(r.code, r.stderr).toBe(0)
  }

  async function listed(args: string[]): Promise<Listed> {
    const r = await alice(['inbox', '--json', ...args])
    expect(r.code, r.stderr).toBe(0)
    return JSON.parse(r.stdout) as Listed
  }

  function spawn(args: string[]): AgentmeshProcess {
    const p = spawnAgentmesh(args)
    running.push(p)
    return p
  }

  /** Resolves once `p` printed `n` lines on stdout. */
  async function lines(p: AgentmeshProcess, n: number, timeoutMs = 20_000): Promise<string[]> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const got = p.stdout.split('\n').filter((l) => l !== '')
      if (got.length >= n) return got
      if (p.child.exitCode !== null) throw new Error(`exited: ${p.stderr}`)
      if (Date.now() > deadline)
        throw new Error(`no ${n} lines after ${timeoutMs} ms:\n${p.stdout}\n${p.stderr}`)
      await new Promise((resolve) => p.child.stdout?.once('data', resolve).once('close', resolve))
    }
  }

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'agentmesh-inbox-'))
    const [, started] = await Promise.all([buildOnce(), startWorld('pglite')])
    world = started
    await createCliMesh({
      root,
      coordinatorUrl: world.url,
      admin: { token: world.adminToken },
      members: ['alice', 'carol'],
    })
    // Alice's member presence once, so carol can address her while she is offline.
    const listen = spawnAgentmesh(['listen', '--home', home('alice')])
    await stderrSays(listen, 'listening on mesh team')
    expect(await listen.stop('SIGINT')).toEqual({ code: 0, signal: null })
  }, 90_000)

  afterEach(async () => {
    await Promise.all(running.splice(0).map((p) => p.stop('SIGKILL')))
  })

  afterAll(async () => {
    await world?.close()
    await rm(root, { recursive: true, force: true })
  })

  describe('without a daemon', () => {
    it('lists what arrived (names, ids, transport), newest last; --unread is what listen did not print', async () => {
      await send('one')
      await send('two')
      // Queued at the coordinator, not on this home yet: the inbox on disk is empty.
      const before = await alice(['inbox', '--json'])
      expect(before.stderr).toContain('agentmesh: no daemon runs on this home: reading the inbox on disk\n')
      expect(JSON.parse(before.stdout)).toEqual({ mesh: 'team', via: 'direct', messages: [], cursor: 0 })

      // listen takes both in, prints one: the first is read, the second not.
      const listen = spawn(['listen', '--count', '1', '--home', home('alice')])
      expect(await listen.exited).toEqual({ code: 0, signal: null })
      expect(listen.stdout).toBe('carol: one\n')

      const all = await listed([])
      expect(all).toMatchObject({ mesh: 'team', via: 'direct' })
      expect(texts(all)).toEqual(['one', 'two'])
      for (const x of all.messages) expect(Object.keys(x).sort()).toEqual(INBOX_KEYS)
      expect(all.messages[0]).toEqual({
        seq: expect.any(Number),
        receivedAt: expect.any(Number),
        from: expect.stringMatching(HEX64),
        fromName: 'carol',
        clientMessageId: expect.stringMatching(ULID),
        channel: 'dm',
        payload: { text: 'one' },
        status: 'ok',
        e2e: true,
        via: 'relay',
        read: true,
      })
      expect(all.messages[1]).toMatchObject({ read: false, fromName: 'carol' })
      expect(all.cursor).toBe(all.messages[0]!['seq'])

      const text = await alice(['inbox'])
      expect(text.code, text.stderr).toBe(0)
      const id = all.messages[1]!['clientMessageId'] as string
      expect(text.stdout).toMatch(
        new RegExp(`^\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d  carol: two  \\(relay, ${id}\\)$`, 'm'),
      )
      expect(text.stdout.split('\n').filter((l) => l !== '')).toHaveLength(2)
      expect((await alice(['inbox', '--limit', '1'])).stdout).toContain('carol: two')

      // --unread prints the second and marks it read; again, nothing.
      const unread = await listed(['--unread'])
      expect(texts(unread)).toEqual(['two'])
      expect(unread.messages[0]).toMatchObject({ read: false })
      expect(unread.cursor).toBe(unread.messages[0]!['seq'])
      const none = await alice(['inbox', '--unread'])
      expect(none.code, none.stderr).toBe(0)
      expect(none.stdout).toBe('')
      expect(none.stderr).toContain('agentmesh: no unread messages\n')

      // The cursor is listen's too: it does not print "two" again.
      await send('three')
      const listen2 = spawn(['listen', '--count', '1', '--home', home('alice')])
      expect(await listen2.exited).toEqual({ code: 0, signal: null })
      expect(listen2.stdout).toBe('carol: three\n')
      expect(texts(await listed(['--unread']))).toEqual([])
    }, 60_000)

    it('--follow prints the backlog, then a message sent later; SIGINT exits 0', async () => {
      const follow = spawn(['inbox', '--follow', '--limit', '1', '--json', '--home', home('alice')])
      await stderrSays(follow, 'following the inbox of mesh team')
      expect(follow.stderr).toContain('no daemon runs on this home: following the inbox as the member itself')
      const [backlog] = await lines(follow, 1)
      expect(JSON.parse(backlog!)).toMatchObject({ payload: { text: 'three' }, fromName: 'carol' })
      await send('four')
      const [, live] = await lines(follow, 2)
      const four = JSON.parse(live!) as Record<string, unknown>
      expect(Object.keys(four).sort()).toEqual(INBOX_KEYS)
      expect(four).toMatchObject({ payload: { text: 'four' }, fromName: 'carol', via: 'relay', read: false })
      expect(await follow.stop('SIGINT')).toEqual({ code: 0, signal: null })
      // Without --unread it marked nothing read.
      expect(texts(await listed(['--unread']))).toEqual(['four'])
    }, 60_000)
  })

  describe("through alice's daemon", () => {
    let daemon: AgentmeshProcess
    const up = async (): Promise<AgentmeshProcess> => {
      const d = spawnAgentmesh(['daemon', 'up', '--json', '--no-p2p', '--home', home('alice')])
      await d.waitForJson((l) => typeof l['socket'] === 'string', 30_000)
      // The log line: a restarted daemon may be connected before its reporter says so in words.
      await stderrSays(d, '"role":"control-plane","msg":"connected"')
      return d
    }
    beforeAll(async () => {
      daemon = await up()
    }, 60_000)
    afterAll(async () => {
      await daemon?.stop('SIGTERM')
    })

    it('the same inbox and cursor through the daemon, which says so', async () => {
      await send('five')
      const r = await alice(['inbox', '--json'])
      expect(r.code, r.stderr).toBe(0)
      expect(r.stderr).toContain(`agentmesh: through the daemon (pid ${daemon.child.pid})\n`)
      const all = JSON.parse(r.stdout) as Listed
      expect(all.via).toBe('daemon')
      expect(texts(all)).toEqual(['one', 'two', 'three', 'four', 'five'])
      expect(all.messages.at(-1)).toMatchObject({ fromName: 'carol', read: false, via: 'relay' })
      for (const x of all.messages) expect(Object.keys(x).sort()).toEqual(INBOX_KEYS)
      const unread = await alice(['inbox', '--unread'])
      expect(unread.code, unread.stderr).toBe(0)
      expect(unread.stdout).toMatch(/^\S+ \S+ {2}carol: five {2}\(relay, [0-9A-Z]{26}\)\n$/)
      expect(texts(await listed(['--unread']))).toEqual([])
    }, 60_000)

    it('--unread --follow: a message sent later, across a restart of the daemon; SIGINT exits 0', async () => {
      const follow = spawn(['inbox', '--follow', '--unread', '--home', home('alice')])
      await stderrSays(follow, 'following the inbox of mesh team')
      expect(follow.stderr).toContain(`through the daemon (pid ${daemon.child.pid})`)
      await send('six')
      expect((await lines(follow, 1))[0]).toMatch(/ {2}carol: six {2}\(relay, /)

      expect(await daemon.stop('SIGTERM')).toMatchObject({ code: 0 })
      await stderrSays(follow, 'daemon unreachable, retrying in')
      daemon = await up()
      await stderrSays(follow, 'reconnected')
      await send('seven')
      expect((await lines(follow, 2))[1]).toMatch(/ {2}carol: seven {2}\(relay, /)
      expect(await follow.stop('SIGINT')).toEqual({ code: 0, signal: null })
      // What it printed is read.
      expect(texts(await listed(['--unread']))).toEqual([])
      const no = await alice(['inbox', '--limit', '0'])
      expect(no.code).toBe(EXIT.USAGE)
    }, 60_000)
  })
})
