import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { startWorld, type World } from '../../test/support/coordinator-world.js'
import { buildOnce, spawnAgentmesh, type AgentmeshProcess } from '../../test/support/coordinator-process.js'
import { am, createCliMesh, daemonConnected, stderrSays, type CliMesh } from '../../test/support/cli-mesh.js'
import { EXIT } from './exit-codes.js'

const HEX64 = /^[0-9a-f]{64}$/
const ULID = /^[0-9A-HJKMNP-TV-Z]{26}$/

// whoami, peer list and send with the real binary in temp homes against a real coordinator on port 0:
// carol sends; alice listens; two homes share the name "bob". First without a daemon on carol's home
// (the command connects itself), then with one (it goes through the daemon's IPC).
describe('one-shot commands (the real binary): whoami, peer list, send', () => {
  let root: string
  let world: World
  let m: CliMesh
  const running: AgentmeshProcess[] = []
  const home = (name: string): string => join(root, name)
  const carol = (args: string[]) => am([...args, '--home', home('carol')])

  function spawn(args: string[]): AgentmeshProcess {
    const p = spawnAgentmesh(args)
    running.push(p)
    return p
  }

  async function listening(): Promise<AgentmeshProcess> {
    const alice = spawn(['listen', '--count', '1', '--home', home('alice')])
    await stderrSays(alice, 'listening on mesh team')
    return alice
  }

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'agentmesh-oneshot-'))
    const [, started] = await Promise.all([buildOnce(), startWorld('pglite')])
    world = started
    m = await createCliMesh({
      root,
      coordinatorUrl: world.url,
      admin: { token: world.adminToken },
      members: ['alice', 'bob', { home: 'bob-2', name: 'bob' }, 'carol'],
    })
    // Each home listens once (its member presence) and lists the peers once (its `cli` session), so both
    // are verified, offline presences the others see.
    for (const name of ['alice', 'bob', 'bob-2']) {
      const listen = spawnAgentmesh(['listen', '--home', home(name)])
      await stderrSays(listen, 'listening on mesh team')
      expect(await listen.stop('SIGINT')).toEqual({ code: 0, signal: null })
      const r = await am(['peer', 'list', '--home', home(name)])
      expect(r.code, r.stderr).toBe(0)
    }
  }, 90_000)

  afterEach(async () => {
    await Promise.all(running.splice(0).map((p) => p.stop('SIGKILL')))
  })

  afterAll(async () => {
    await world?.close()
    await rm(root, { recursive: true, force: true })
  })

  describe('without a daemon', () => {
    it('whoami: the member key, name, mesh, coordinator, and no daemon; --json', async () => {
      const text = await carol(['whoami'])
      expect(text.code, text.stderr).toBe(0)
      const memberPk = m.joined['carol']!['memberPk'] as string
      expect(text.stdout).toBe(
        `home ${home('carol')}\ndaemon not running\nmesh team as carol (member)\n` +
          `  member key  ${memberPk}\n  coordinator ${world.url} (key ${(m.joined['carol']!['coordinatorPk'] as string).slice(0, 16)}…)\n`,
      )
      const json = await carol(['whoami', '--json'])
      expect(JSON.parse(json.stdout)).toEqual({
        home: home('carol'),
        daemon: { running: false },
        meshes: [
          {
            mesh: 'team',
            memberPk,
            displayName: 'carol',
            role: 'member',
            coordinatorUrl: world.url,
            coordinatorPk: expect.stringMatching(HEX64),
            joinedAt: expect.any(Number),
          },
        ],
      })
      const nope = await carol(['whoami', '--mesh', 'nope', '--json'])
      expect(nope.code).toBe(EXIT.ERROR)
      expect(JSON.parse(nope.stdout)).toMatchObject({ error: { code: 'MESH_ERR_NOT_JOINED' } })
    })

    it('peer list (and its alias peers): members online or not, --all adds offline sessions; --json', async () => {
      const r = await carol(['peer', 'list', '--json'])
      expect(r.code, r.stderr).toBe(0)
      expect(r.stderr).toContain('agentmesh: no daemon runs on this home: connecting directly\n')
      const listed = JSON.parse(r.stdout) as { mesh: string; via: string; peers: Record<string, unknown>[] }
      expect(listed).toMatchObject({ mesh: 'team', via: 'direct' })
      for (const p of listed.peers) {
        expect(Object.keys(p).sort()).toEqual(
          [
            'displayName',
            'memberPk',
            'mine',
            'online',
            'pk',
            'role',
            'sessionId',
            'status',
            'transport',
          ].sort(),
        )
      }
      const names = listed.peers.filter((p) => p['role'] === 'control-plane').map((p) => p['displayName'])
      expect(names.sort()).toEqual(['alice', 'bob', 'bob'])
      expect(listed.peers.every((p) => p['role'] === 'control-plane' || p['online'] === true)).toBe(true)
      // The others' `cli` sessions (the set-up's peer list) are offline: only --all shows them.
      const all = JSON.parse((await carol(['peers', '--all', '--json'])).stdout) as typeof listed
      expect(all.peers.filter((p) => p['sessionId'] === 'cli' && p['mine'] === false)).toHaveLength(3)
      const text = await carol(['peers'])
      expect(text.stdout).toMatch(/^alice +(online|offline) +member +[0-9a-f]{16}…$/m)
    })

    it('send bob, where two homes are named bob: both keys listed, exit 6, nothing sent', async () => {
      const r = await carol(['send', 'bob', 'hi'])
      expect(r.code, r.stderr).toBe(EXIT.NO_SUCH_PEER)
      expect(r.stderr).toMatch(/^error: MESH_ERR_UNKNOWN_KEY: "bob" matches 2 members; pass a key/m)
      for (const b of ['bob', 'bob-2']) expect(r.stderr).toContain(m.joined[b]!['memberPk'] as string)
      const json = await carol(['send', 'bob', 'hi', '--json'])
      expect(json.code).toBe(EXIT.NO_SUCH_PEER)
      const { error } = JSON.parse(json.stdout) as { error: { details: { candidates: unknown[] } } }
      expect(error).toMatchObject({
        code: 'MESH_ERR_UNKNOWN_KEY',
        details: { to: 'bob', reason: 'ambiguous' },
      })
      expect(error.details.candidates).toHaveLength(2)
      // A unique prefix of one bob's key picks that one.
      const bob2 = m.joined['bob-2']!['memberPk'] as string
      const byPrefix = await carol(['send', bob2.slice(0, 12), 'hi bob 2', '--json'])
      expect(byPrefix.code, byPrefix.stderr).toBe(0)
      expect(JSON.parse(byPrefix.stdout)).toMatchObject({ to: bob2, toName: 'bob', state: 'queued' })
    })

    it('send: queued — recipient offline, delivered (relay), --wait; #topic is refused; --json shape', async () => {
      const queued = await carol(['send', 'alice', 'while', 'you', 'were', 'out'])
      expect(queued.code, queued.stderr).toBe(0)
      expect(queued.stdout).toMatch(/^queued — recipient offline: alice, id [0-9A-Z]{26}\n$/)
      const queuedJson = await carol(['send', 'alice', 'and', 'this', '--json'])
      expect(JSON.parse(queuedJson.stdout)).toMatchObject({ state: 'queued', transport: 'relay' })
      const alice = spawn(['listen', '--count', '2', '--home', home('alice')])
      expect(await alice.exited).toEqual({ code: 0, signal: null })
      expect(alice.stdout).toBe('carol: while you were out\ncarol: and this\n')

      const alice2 = spawn(['listen', '--count', '2', '--home', home('alice')])
      await stderrSays(alice2, 'listening on mesh team')
      const human = await carol(['send', 'alice', 'hi', '--wait'])
      expect(human.code, human.stderr).toBe(0)
      expect(human.stdout).toMatch(/^delivered \(relay\): alice, id [0-9A-Z]{26}\n$/)
      const sent = await carol(['send', 'alice', 'hello', '--wait', '--json'])
      expect(sent.code, sent.stderr).toBe(0)
      expect(JSON.parse(sent.stdout)).toEqual({
        mesh: 'team',
        to: m.joined['alice']!['memberPk'],
        toName: 'alice',
        clientMessageId: expect.stringMatching(ULID),
        state: 'delivered',
        transport: 'relay',
        via: 'direct',
        recipients: { [m.joined['alice']!['memberPk'] as string]: 'delivered' },
      })
      expect(await alice2.exited).toEqual({ code: 0, signal: null })

      const late = await carol(['send', 'alice', 'still there?', '--wait', '--timeout', '2s'])
      expect(late.code).toBe(EXIT.ERROR)
      expect(late.stderr).toMatch(/^error: MESH_ERR_WAIT_TIMEOUT: not delivered within 2s/m)
      // It stays in the outbox (and at the coordinator): alice gets it when she listens.
      const drained = await listening()
      expect(await drained.exited).toEqual({ code: 0, signal: null })
      expect(drained.stdout).toBe('carol: still there?\n')

      const topic = await carol(['send', '#news', 'hi'])
      expect(topic.code).toBe(EXIT.USAGE)
      expect(topic.stdout).toMatch(/^Usage Error: #news: topics are not supported by the runtime yet/)
      const old = await carol(['send', 'alice', 'x', '--wait', 'delivered'])
      expect(old.code).toBe(EXIT.USAGE)
      expect(old.stdout).toMatch(/^Usage Error: --wait takes no value/)
    })

    it('msg status: the outbox row of a sent message, read from disk; an unknown id exits 1', async () => {
      const sent = await carol(['send', 'alice', 'status?', '--json'])
      expect(sent.code, sent.stderr).toBe(0)
      const { clientMessageId: id, to } = JSON.parse(sent.stdout) as { clientMessageId: string; to: string }
      const r = await carol(['msg', 'status', id, '--json'])
      expect(r.code, r.stderr).toBe(0)
      expect(r.stderr).toContain('no daemon runs on this home: reading the outbox on disk')
      expect(JSON.parse(r.stdout)).toEqual({
        id,
        mesh: 'team',
        to,
        channel: 'dm',
        state: 'accepted',
        recipients: { [to]: 'queued' },
        attempts: expect.any(Number),
        transport: 'relay',
        createdAt: expect.any(Number),
        updatedAt: expect.any(Number),
        via: 'direct',
      })
      const text = await carol(['msg', 'status', id])
      expect(text.stdout).toMatch(new RegExp(`^${id} queued — recipient offline \\(accepted\\) via relay, `))
      expect(text.stdout).toContain(`  ${to}  queued\n`)
      const unknown = await carol(['msg', 'status', '01JD3XK5Q6M8Z7Y2W9V4T1S0RP', '--json'])
      expect(unknown.code).toBe(EXIT.ERROR)
      expect(JSON.parse(unknown.stdout)).toMatchObject({ error: { code: 'MESH_ERR_UNKNOWN_MESSAGE' } })
      const drained = await listening()
      expect(await drained.exited).toEqual({ code: 0, signal: null })
      expect(drained.stdout).toBe('carol: status?\n')
    })

    it('send "*": one message to every member, counted by outcome', async () => {
      const r = await carol(['send', '*', 'standup', '--json'])
      expect(r.code, r.stderr).toBe(0)
      const sent = JSON.parse(r.stdout) as { to: string; recipients: Record<string, string> }
      expect(sent).toMatchObject({ to: '*', toName: null, via: 'direct', transport: 'relay' })
      expect(Object.keys(sent.recipients).length).toBeGreaterThanOrEqual(4)
      const text = await carol(['send', '*', 'again'])
      expect(text.stdout).toMatch(/^sent \(relay\): \d+ delivered, \d+ queued — recipient offline: \*, id /)
      const alice = spawn(['listen', '--count', '2', '--home', home('alice')])
      expect(await alice.exited).toEqual({ code: 0, signal: null })
      expect(alice.stdout).toBe('carol: standup\ncarol: again\n')
    })
  })

  describe("through carol's daemon", () => {
    let daemon: AgentmeshProcess
    beforeAll(async () => {
      daemon = spawnAgentmesh(['daemon', 'up', '--json', '--no-p2p', '--home', home('carol')])
      await daemon.waitForJson((l) => typeof l['socket'] === 'string', 30_000)
      await daemonConnected(daemon)
    }, 60_000)
    afterAll(async () => {
      await daemon?.stop('SIGTERM')
    })

    it('whoami says the daemon runs', async () => {
      const r = await carol(['whoami', '--json'])
      expect(JSON.parse(r.stdout)).toMatchObject({ daemon: { running: true, pid: daemon.child.pid } })
      expect((await carol(['whoami'])).stdout).toContain(`daemon running (pid ${daemon.child.pid})\n`)
    })

    it('peer list goes through the daemon and says so', async () => {
      const r = await carol(['peer', 'list', '--json'])
      expect(r.code, r.stderr).toBe(0)
      expect(r.stderr).toContain(`agentmesh: through the daemon (pid ${daemon.child.pid})\n`)
      const listed = JSON.parse(r.stdout) as { via: string; peers: Record<string, unknown>[] }
      expect(listed.via).toBe('daemon')
      // The daemon holds carol's own member presence: listed, and marked as hers.
      const members = listed.peers.filter((p) => p['role'] === 'control-plane')
      expect(members.map((p) => p['displayName']).sort()).toEqual(['alice', 'bob', 'bob', 'carol'])
      expect(members.find((p) => p['displayName'] === 'carol')).toMatchObject({ mine: true, online: true })
    })

    it('send: the same names, outcomes and shape through the daemon; the transport is the relay (--no-p2p)', async () => {
      const ambiguous = await carol(['send', 'bob', 'hi'])
      expect(ambiguous.code, ambiguous.stderr).toBe(EXIT.NO_SUCH_PEER)
      for (const b of ['bob', 'bob-2']) expect(ambiguous.stderr).toContain(m.joined[b]!['memberPk'] as string)

      const queued = await carol(['send', 'alice', 'via the daemon'])
      expect(queued.code, queued.stderr).toBe(0)
      expect(queued.stderr).toContain('through the daemon')
      expect(queued.stdout).toMatch(/^queued — recipient offline: alice, id [0-9A-Z]{26}\n$/)
      const alice = await listening()
      expect(await alice.exited).toEqual({ code: 0, signal: null })
      expect(alice.stdout).toBe('carol: via the daemon\n')

      const alice2 = spawn(['listen', '--count', '2', '--home', home('alice')])
      await stderrSays(alice2, 'listening on mesh team')
      const human = await carol(['send', 'alice', 'hi', '--wait'])
      expect(human.code, human.stderr).toBe(0)
      expect(human.stdout).toMatch(/^delivered \(relay\): alice, id [0-9A-Z]{26}\n$/)
      const sent = await carol(['send', 'alice', 'hello', '--wait', '--json'])
      expect(sent.code, sent.stderr).toBe(0)
      expect(JSON.parse(sent.stdout)).toMatchObject({
        toName: 'alice',
        state: 'delivered',
        transport: 'relay',
        via: 'daemon',
      })
      expect(await alice2.exited).toEqual({ code: 0, signal: null })
      const text = await carol(['send', 'alice', 'offline again', '--json'])
      const { clientMessageId: id } = JSON.parse(text.stdout) as { clientMessageId: string }
      expect(JSON.parse(text.stdout)).toMatchObject({ state: 'queued', transport: 'relay', via: 'daemon' })
      const status = await carol(['msg', 'status', id, '--json'])
      expect(status.code, status.stderr).toBe(0)
      expect(status.stderr).toContain('through the daemon')
      expect(JSON.parse(status.stdout)).toMatchObject({
        id,
        state: 'accepted',
        transport: 'relay',
        via: 'daemon',
      })

      const group = await carol(['send', '*', 'hi all'])
      expect(group.code).toBe(EXIT.ERROR)
      expect(group.stderr).toMatch(/^error: MESH_ERR_DAEMON_RUNNING: /m)
    })
  })

  // The daemon's P2P (node-datachannel on loopback, no STUN/TURN) to alice's `listen`, which has P2P too.
  describe("through carol's daemon with P2P", () => {
    let daemon: AgentmeshProcess
    beforeAll(async () => {
      daemon = spawnAgentmesh(['daemon', 'up', '--json', '--home', home('carol')])
      await daemon.waitForJson((l) => typeof l['socket'] === 'string', 30_000)
      await daemonConnected(daemon)
    }, 60_000)
    afterAll(async () => {
      await daemon?.stop('SIGTERM')
    })

    it('send: the first message goes by relay while a P2P session comes up, then delivered (p2p); msg status says so', async () => {
      const alice = spawn(['listen', '--home', home('alice')])
      await stderrSays(alice, 'listening on mesh team')
      const first = await carol(['send', 'alice', 'first', '--wait'])
      expect(first.code, first.stderr).toBe(0)
      expect(first.stdout).toMatch(/^delivered \(relay\): alice, id [0-9A-Z]{26}\n$/)
      // The first send started the handshake in the background; a send once it is up goes peer to peer.
      let sent: { transport: string; clientMessageId: string } | undefined
      for (let i = 0; i < 20 && sent?.transport !== 'p2p'; i++) {
        const r = await carol(['send', 'alice', `try ${i}`, '--wait', '--json'])
        expect(r.code, r.stderr).toBe(0)
        sent = JSON.parse(r.stdout) as typeof sent
      }
      expect(sent).toMatchObject({ state: 'delivered', transport: 'p2p', via: 'daemon' })
      const human = await carol(['send', 'alice', 'over the data channel', '--wait'])
      expect(human.code, human.stderr).toBe(0)
      const id = /^delivered \(p2p\): alice, id ([0-9A-Z]{26})\n$/.exec(human.stdout)?.[1]
      expect(id, human.stdout).toBeDefined()
      const status = await carol(['msg', 'status', id!, '--json'])
      expect(JSON.parse(status.stdout)).toMatchObject({ id, state: 'done', transport: 'p2p', via: 'daemon' })
      expect((await carol(['msg', 'status', id!])).stdout).toMatch(
        new RegExp(`^${id} delivered \\(done\\) via p2p, `),
      )
      expect(await alice.stop('SIGINT')).toEqual({ code: 0, signal: null })
      expect(alice.stdout).toContain('carol: first\n')
      expect(alice.stdout).toContain('carol: over the data channel\n')
    })
  })
})
