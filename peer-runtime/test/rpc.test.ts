import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { createIdentity, decode, mintSessionAttestation, toHex, ulidFactory } from '../../protocol/index.js'
import { worldsPerTest, type World } from '../../test/support/coordinator-world.js'
import { closePeers, sessionPeer, tempDir } from '../../test/support/peer-world.js'
import { rejectionCode } from '../../test/support/rejection.js'
import { rpcCalleeProcess } from '../../test/support/rpc-callee-process.js'
import { MeshError } from '../../protocol/errors.js'
import { sqliteStore } from '../node/sqlite-store.js'
import { RPC_INTERRUPTED_MESSAGE, rpcEndpoint, RpcRemoteError, RpcTimeoutError } from '../rpc.js'
import type { Peer } from '../peer.js'
import type { RuntimeStore } from '../store/types.js'

const nextId = ulidFactory()

/** A promise and the function that settles it: a handler that waits until the test says so. */
function gate(): { opened: Promise<void>; open: () => void } {
  let open = (): void => undefined
  const opened = new Promise<void>((resolve) => (open = resolve))
  return { opened, open }
}

describe('rpc over a Peer', () => {
  const start = worldsPerTest('pglite')
  const stores: RuntimeStore[] = []
  afterEach(async () => {
    await closePeers()
    for (const s of stores.splice(0)) await s.close()
  })

  it('answers by method; a throwing handler gives its code to the caller, a missing one NO_HANDLER', async () => {
    const world = await start()
    const alice = await sessionPeer(world, await world.member('alice'))
    const bob = await sessionPeer(world, await world.member('bob'))
    await Promise.all([alice.whenConnected(), bob.whenConnected()])
    const server = rpcEndpoint(bob)
    server.handle('add', (p) => {
      const { a, b } = p as { a: number; b: number }
      return a + b
    })
    server.handle('who', (_p, ctx) => ({ from: toHex(ctx.from), method: ctx.method, via: ctx.via }))
    server.handle('deny', () => {
      throw new MeshError('MESH_ERR_NOT_AUTHORIZED', 'not you', { details: { why: 'test' } })
    })
    server.handle('crash', () => {
      throw new Error('boom')
    })
    const client = rpcEndpoint(alice)
    expect(rpcEndpoint(alice)).toBe(client)
    const to = bob.identity.publicKey

    expect(await client.call(to, { a: 2, b: 3 }, { method: 'add' })).toBe(5)
    expect(await client.call(to, null, { method: 'who' })).toEqual({
      from: toHex(alice.identity.publicKey),
      method: 'who',
      via: 'relay',
    })
    const denied = await client.call(to, null, { method: 'deny' }).catch((e: unknown) => e)
    expect(denied).toBeInstanceOf(RpcRemoteError)
    expect(denied).toMatchObject({
      code: 'MESH_ERR_NOT_AUTHORIZED',
      message: 'not you',
      details: { why: 'test' },
    })
    expect(await rejectionCode(client.call(to, null, { method: 'crash' }))).toBe('MESH_ERR_RPC_HANDLER')
    expect(await rejectionCode(client.call(to, null, { method: 'nope' }))).toBe('MESH_ERR_RPC_NO_HANDLER')
    // Rows read by the endpoints are consumed and never show up among the DMs.
    const dms = alice.messages({ signal: AbortSignal.timeout(200) })
    expect((await dms.next()).done).toBe(true)
  })

  it('a call with no answer rejects with RpcTimeoutError (MESH_ERR_RPC_TIMEOUT) after timeoutMs', async () => {
    const world = await start()
    const alice = await sessionPeer(world, await world.member('alice'))
    const bob = await sessionPeer(world, await world.member('bob'))
    await Promise.all([alice.whenConnected(), bob.whenConnected()])
    // Bob serves no rpc at all: the request sits in his inbox.
    const began = Date.now()
    const err = await rpcEndpoint(alice)
      .call(bob.identity.publicKey, { q: 1 }, { timeoutMs: 400 })
      .catch((e: unknown) => e)
    expect(err).toBeInstanceOf(RpcTimeoutError)
    expect(err).toMatchObject({ code: 'MESH_ERR_RPC_TIMEOUT', details: { timeoutMs: 400 } })
    expect(Date.now() - began).toBeGreaterThanOrEqual(390)

    // A handler slower than the caller's timeout sees its signal abort.
    let aborted: Promise<boolean> = Promise.resolve(false)
    rpcEndpoint(bob).handle((_p, ctx) => {
      aborted = new Promise((resolve) => ctx.signal.addEventListener('abort', () => resolve(true)))
      return aborted
    })
    expect(await rejectionCode(rpcEndpoint(alice).call(bob.identity.publicKey, 1, { timeoutMs: 300 }))).toBe(
      'MESH_ERR_RPC_TIMEOUT',
    )
    expect(await aborted).toBe(true)
  })

  it('the caller closes before the answer comes; relaunched with its key and store it calls again with the id: one run', async () => {
    const world = await start()
    const aliceMember = await world.member('alice')
    const store = sqliteStore({ path: join(tempDir(), 'alice.db') })
    stores.push(store)
    const bob = await sessionPeer(world, await world.member('bob'))
    const alice1 = await sessionPeer(world, aliceMember, { sessionId: 'alice', store })
    await Promise.all([alice1.whenConnected(), bob.whenConnected()])
    const release = gate()
    const runs: unknown[] = []
    const server = rpcEndpoint(bob)
    server.handle('work', async (p) => {
      runs.push(p)
      await release.opened
      return { done: p }
    })

    const id = nextId()
    const first = rpcEndpoint(alice1)
      .call(bob.identity.publicKey, { job: 7 }, { method: 'work', id, timeoutMs: 30_000 })
      .catch((e: unknown) => e)
    await expect.poll(() => runs.length, { timeout: 10_000 }).toBe(1)
    await alice1.close()
    expect(await first).toMatchObject({ code: 'MESH_ERR_TRANSPORT_CLOSED' })
    await expect.poll(() => world.leased(alice1.identity.publicKey), { timeout: 10_000 }).toBe(true)

    // The answer goes out while alice is away: the coordinator queues it for her key.
    release.open()
    await expect.poll(() => server.cachedAnswers, { timeout: 10_000 }).toBe(1)
    await bob.settled(AbortSignal.timeout(10_000))

    const alice2 = await sessionPeer(world, aliceMember, {
      sessionId: 'alice',
      identity: alice1.identity,
      store,
    })
    const answer = await rpcEndpoint(alice2).call(
      bob.identity.publicKey,
      { job: 7 },
      { method: 'work', id, timeoutMs: 10_000 },
    )
    expect(answer).toEqual({ done: { job: 7 } })
    expect(runs).toEqual([{ job: 7 }])
  })

  it('a request that comes again after its answer was lost gets the cached answer re-sent, not a second run (P2P)', async () => {
    const world = await start()
    const aliceMember = await world.member('alice')
    const bob = await sessionPeer(world, await world.member('bob'), { p2p: true, store: 'sqlite' })
    let runs = 0
    rpcEndpoint(bob).handle(() => ++runs)
    // The first alice stores (and so acks) the answer but never reads her rpc rows; her relaunch comes
    // with an empty store: the answer is lost.
    const alice1 = await sessionPeer(world, aliceMember, { sessionId: 'alice', store: 'sqlite' })
    await Promise.all([alice1.whenConnected(), bob.whenConnected()])
    const id = nextId()
    await alice1.send(
      bob.identity.publicKey,
      { p: 'once' },
      {
        channel: 'rpc',
        clientMessageId: id,
        meta: { rpc: 'req', timeoutMs: 10_000 },
      },
    )
    await expect.poll(() => runs, { timeout: 10_000 }).toBe(1)
    await expect.poll(() => rpcEndpoint(bob).cachedAnswers, { timeout: 10_000 }).toBe(1)
    await bob.settled(AbortSignal.timeout(10_000))
    await alice1.close()

    // Relaunched with the same key and an empty store, over a warm P2P session: the coordinator's
    // dedupe is not in the way, so the retried request reaches bob's inbox, which sees a duplicate.
    const alice2 = await sessionPeer(world, aliceMember, {
      sessionId: 'alice',
      identity: alice1.identity,
      p2p: true,
      store: 'sqlite',
    })
    await alice2.whenConnected()
    const duplicates: string[] = []
    bob.on('duplicate', (m) => duplicates.push(m.clientMessageId))
    await alice2.send(bob.identity.publicKey, { warm: true })
    await alice2.settled(AbortSignal.timeout(10_000))
    await expect.poll(() => alice2.p2pWarm(bob.identity.publicKey), { timeout: 10_000 }).toBe(true)

    const answer = await rpcEndpoint(alice2).call(bob.identity.publicKey, 'once', { id, timeoutMs: 10_000 })
    expect(answer).toBe(1)
    expect(runs).toBe(1)
    expect(duplicates).toEqual([id])
  })

  describe('across a restart of the callee (its sqlite store closed and opened again)', () => {
    /**
     * Bob's store file, alice's first session (which sends the request raw and never reads the answer,
     * so it is lost with her store), and what relaunching each of them takes.
     */
    async function callers(world: World) {
      const aliceMember = await world.member('alice')
      const bobMember = await world.member('bob')
      const bobFile = join(tempDir(), 'bob.db')
      const bobAt = async (): Promise<Peer> => {
        const store = sqliteStore({ path: bobFile })
        stores.push(store)
        return sessionPeer(world, bobMember, { sessionId: 'bob', identity: bobKey, p2p: true, store })
      }
      const bobKey = createIdentity('session')
      const alice1 = await sessionPeer(world, aliceMember, { sessionId: 'alice', store: 'sqlite' })
      /** Alice relaunched with an empty store, the P2P session to bob warm (the coordinator's dedupe
       * would answer a resent id itself; P2P takes it to bob's inbox, which sees a duplicate). */
      const alice2 = async (bob: Peer): Promise<Peer> => {
        const alice = await sessionPeer(world, aliceMember, {
          sessionId: 'alice',
          identity: alice1.identity,
          p2p: true,
          store: 'sqlite',
        })
        await Promise.all([alice.whenConnected(), bob.whenConnected()])
        await alice.send(bob.identity.publicKey, { warm: true })
        await alice.settled(AbortSignal.timeout(10_000))
        await expect.poll(() => alice.p2pWarm(bob.identity.publicKey), { timeout: 10_000 }).toBe(true)
        return alice
      }
      const request = async (id: string): Promise<void> => {
        await alice1.send(
          bobKey.publicKey,
          { p: 'once' },
          { channel: 'rpc', clientMessageId: id, meta: { rpc: 'req', timeoutMs: 10_000 } },
        )
      }
      return { alice1, alice2, bobAt, request, bobKey, bobFile, bobMember }
    }

    /** Closes a peer and its store, as a process that exits would leave them. */
    async function stop(peer: Peer): Promise<void> {
      await peer.close()
      await peer.store.close()
    }

    it('a retried request gets the stored answer; the handler does not run again', async () => {
      const world = await start()
      const { alice1, alice2, bobAt, request } = await callers(world)
      let runs = 0
      const bob1 = await bobAt()
      rpcEndpoint(bob1).handle(() => ++runs)
      await alice1.whenConnected()
      const id = nextId()
      await request(id)
      await expect.poll(() => runs, { timeout: 10_000 }).toBe(1)
      await bob1.settled(AbortSignal.timeout(10_000))
      await stop(bob1)
      await alice1.close()

      const bob2 = await bobAt()
      const duplicates: string[] = []
      bob2.on('duplicate', (m) => duplicates.push(m.clientMessageId))
      rpcEndpoint(bob2).handle(() => ++runs)
      const alice = await alice2(bob2)
      expect(await rpcEndpoint(alice).call(bob2.identity.publicKey, 'once', { id, timeoutMs: 10_000 })).toBe(
        1,
      )
      expect(runs).toBe(1)
      expect(duplicates).toEqual([id])
    })

    it('kill -9 of the callee process while its handler runs: the callee started again answers interrupted and runs nothing', async () => {
      const world = await start()
      const c = await callers(world)
      const bob1 = rpcCalleeProcess({
        url: world.wsUrl,
        mesh: world.mesh,
        ownerPk: world.owner.publicKey,
        coordinatorPk: world.coordinatorIdentity.publicKey,
        identity: c.bobKey,
        sessionId: 'bob',
        attestation: mintSessionAttestation({
          mesh: world.mesh,
          member: c.bobMember,
          sessionPk: c.bobKey.publicKey,
          sessionId: 'bob',
          now: world.clock.now(),
        }),
        storePath: c.bobFile,
        hang: true,
      })
      try {
        await bob1.ready
        await c.alice1.whenConnected()
        const ran = bob1.next('run', 10_000)
        const id = nextId()
        await c.request(id)
        await ran
        await bob1.kill()
        await c.alice1.close()

        const bob2 = await c.bobAt()
        let runs = 0
        rpcEndpoint(bob2).handle(() => ++runs)
        const alice = await c.alice2(bob2)
        const err = await rpcEndpoint(alice)
          .call(bob2.identity.publicKey, 'once', { id, timeoutMs: 10_000 })
          .catch((e: unknown) => e)
        expect(err).toMatchObject({ code: 'MESH_ERR_RPC_HANDLER', details: { interrupted: true, id } })
        expect(runs).toBe(0)
      } finally {
        await bob1.kill()
      }
    })

    it('a request whose handler the restart cut off is answered MESH_ERR_RPC_HANDLER {interrupted}, never run twice', async () => {
      const world = await start()
      const { alice1, alice2, bobAt, request } = await callers(world)
      let runs = 0
      const bob1 = await bobAt()
      const never = gate()
      rpcEndpoint(bob1).handle(async () => {
        runs++
        await never.opened
        return 'too late'
      })
      await alice1.whenConnected()
      const id = nextId()
      await request(id)
      await expect.poll(() => runs, { timeout: 10_000 }).toBe(1)
      await stop(bob1)
      await alice1.close()
      // The old process's handler returns after its store closed: its answer is neither kept nor sent.
      never.open()

      const bob2 = await bobAt()
      rpcEndpoint(bob2).handle(() => ++runs)
      const alice = await alice2(bob2)
      const err = await rpcEndpoint(alice)
        .call(bob2.identity.publicKey, 'once', { id, timeoutMs: 10_000 })
        .catch((e: unknown) => e)
      expect(err).toBeInstanceOf(RpcRemoteError)
      expect(err).toMatchObject({
        code: 'MESH_ERR_RPC_HANDLER',
        message: RPC_INTERRUPTED_MESSAGE,
        details: { interrupted: true, id },
      })
      // The error is now the request's answer in bob's store: every later copy gets the same one.
      const row = await bob2.store.getRpcAnswer(world.mesh, alice.identity.publicKey, id)
      expect(row?.answer).toBeDefined()
      expect(decode(row!.answer!)).toMatchObject({
        meta: { rpc: 'err' },
        payload: { details: { interrupted: true } },
      })
      expect(runs).toBe(1)
    })
  })
})
