import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { initCrypto } from '../../../protocol/crypto.js'
import { openMeshPeer, type MeshPeer } from '../../../peer-runtime/node/home-peer.js'
import { rpcEndpoint } from '../../../peer-runtime/rpc.js'
import { startWorld, type World } from '../../../test/support/coordinator-world.js'
import {
  buildOnce,
  spawnAgentmesh,
  type AgentmeshProcess,
} from '../../../test/support/coordinator-process.js'
import { am, createCliMesh, stderrSays, type CliMesh } from '../../../test/support/cli-mesh.js'
import { EXIT } from '../exit-codes.js'

const ULID = /^[0-9A-HJKMNP-TV-Z]{26}$/

// `rpc` with the real binary: carol calls methods on bob, whose member presence is a Peer in this test
// process serving `echo` (and `never`, which does not answer); first without a daemon on carol's home,
// then through hers.
describe('rpc <peer> <method> [json] (the real binary)', () => {
  let root: string
  let world: World
  let m: CliMesh
  let bob: MeshPeer
  const home = (name: string): string => join(root, name)
  const carol = (args: string[]) => am([...args, '--home', home('carol')])

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'agentmesh-rpc-'))
    const [, started] = await Promise.all([buildOnce(), startWorld('pglite'), initCrypto()])
    world = started
    m = await createCliMesh({
      root,
      coordinatorUrl: world.url,
      admin: { token: world.adminToken },
      members: ['bob', 'carol'],
    })
    bob = await openMeshPeer(home('bob'), m.mesh, { role: 'control-plane', p2p: false })
    const rpc = rpcEndpoint(bob.peer)
    rpc.handle('echo', (params, ctx) => ({ echoed: params, via: ctx.via }))
    rpc.handle(
      'never',
      (_params, ctx) => new Promise((resolve) => ctx.signal.addEventListener('abort', resolve)),
    )
    await bob.peer.start()
    await bob.peer.whenConnected(AbortSignal.timeout(10_000))
  }, 90_000)

  afterAll(async () => {
    await bob?.close()
    await world?.close()
    await rm(root, { recursive: true, force: true })
  })

  function expectRpcPaths(via: 'daemon' | 'direct'): void {
    it(`the handler's answer is printed (JSON), --json wraps it; unknown method and timeout exit 1 (${via})`, async () => {
      const text = await carol(['rpc', 'bob', 'echo', '{"hello":"world","n":[1,2]}'])
      expect(text.code, text.stderr).toBe(0)
      expect(JSON.parse(text.stdout)).toEqual({ echoed: { hello: 'world', n: [1, 2] }, via: 'relay' })
      expect(text.stderr).toContain(
        via === 'daemon'
          ? 'agentmesh: through the daemon'
          : 'agentmesh: no daemon runs on this home: connecting directly',
      )

      const json = await carol(['rpc', 'bob', 'echo', '--json'])
      expect(json.code, json.stderr).toBe(0)
      expect(JSON.parse(json.stdout)).toEqual({
        mesh: 'team',
        to: m.joined['bob']!['memberPk'],
        toName: 'bob',
        method: 'echo',
        id: expect.stringMatching(ULID),
        result: { echoed: null, via: 'relay' },
        via,
      })

      const unknown = await carol(['rpc', 'bob', 'nope', '--json'])
      expect(unknown.code).toBe(EXIT.ERROR)
      expect(unknown.stderr).toMatch(/^error: MESH_ERR_RPC_NO_HANDLER: no handler for nope$/m)
      expect(JSON.parse(unknown.stdout)).toMatchObject({
        error: { code: 'MESH_ERR_RPC_NO_HANDLER', details: { method: 'nope', remote: true } },
      })

      const slow = await carol(['rpc', 'bob', 'never', '--timeout', '1s'])
      expect(slow.code).toBe(EXIT.ERROR)
      expect(slow.stderr).toMatch(
        /^error: MESH_ERR_RPC_TIMEOUT: no answer to rpc [0-9A-Z]{26} within 1000 ms$/m,
      )

      const nobody = await carol(['rpc', 'zed', 'echo'])
      expect(nobody.code).toBe(EXIT.NO_SUCH_PEER)
      const bad = await carol(['rpc', 'bob', 'echo', '{not json'])
      expect(bad.code).toBe(EXIT.USAGE)
      expect(bad.stdout).toMatch(/^Usage Error: \[json\] is not JSON/)
    }, 60_000)
  }

  describe('without a daemon', () => {
    expectRpcPaths('direct')
  })

  describe("through carol's daemon", () => {
    let daemon: AgentmeshProcess
    beforeAll(async () => {
      daemon = spawnAgentmesh(['daemon', 'up', '--json', '--no-p2p', '--home', home('carol')])
      await daemon.waitForJson((l) => typeof l['socket'] === 'string', 30_000)
      // The log line: the daemon may be connected before its reporter says so in words.
      await stderrSays(daemon, '"role":"control-plane","msg":"connected"')
    }, 60_000)
    afterAll(async () => {
      await daemon?.stop('SIGTERM')
    })

    expectRpcPaths('daemon')
  })
})
