import { describe, expect, it, onTestFinished } from 'vitest'
import { openEnvelope } from '../../protocol/index.js'
import { worldsPerTest, type World } from '../../test/support/coordinator-world.js'
import { eventually } from '../../test/support/eventually.js'
import type { MeshClient } from '../../test/support/mesh-client.js'
import { openTestStore, storeLegs } from '../store/testing.js'

async function queueFor(world: World, n: number) {
  const s1 = world.session(await world.member())
  const s2 = world.session(await world.member())
  const a = await world.connectSession(s1)
  await (await world.connectSession(s2)).close()
  const ids: string[] = []
  for (let i = 0; i < n; i++) {
    const env = world.dm(s1.identity, s2.identity, i)
    ids.push(env.clientMessageId)
    expect((await a.sendEnvelope(env)).state).toBe('queued')
  }
  return { a, s1, s2, ids }
}

describe.each(storeLegs())('claims (%s)', (driver) => {
  const start = worldsPerTest(driver)

  /**
   * A world on a store whose next transaction, once `holdNext()` is called, waits until `release()`:
   * `taken` resolves when that transaction has started waiting.
   */
  async function worldWithHeldStore() {
    const base = await openTestStore(driver)
    let next: { gate: Promise<void>; taken: () => void } | undefined
    const store = new Proxy(base, {
      get(target, prop, receiver) {
        if (prop === 'transaction') {
          return async (fn: Parameters<typeof base.transaction>[0]) => {
            const held = next
            next = undefined
            if (held !== undefined) {
              held.taken()
              await held.gate
            }
            return target.transaction(fn)
          }
        }
        const v: unknown = Reflect.get(target, prop, receiver)
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v
      },
    })
    const world = await start({ store })
    onTestFinished(() => base.close())
    await world.createMesh(world.mesh, world.owner, 'owner')
    const holdNext = () => {
      let release!: () => void
      let taken!: () => void
      const gate = new Promise<void>((r) => (release = r))
      const takenP = new Promise<void>((r) => (taken = r))
      next = { gate, taken }
      return { release, taken: takenP }
    }
    return { world, holdNext }
  }

  it('pushes again after the claim lease when no client_ack came', async () => {
    const world = await start()
    const clock = world.clock
    const { s2 } = await queueFor(world, 1)
    const b = await world.connectSession(s2, { autoAck: false })
    const first = await b.waitFor('push')
    await clock.advance(29_000)
    expect(b.frames('push')).toHaveLength(1)
    await clock.advance(6_000)
    const again = await b.waitFor('push')
    expect(again.deliveryId).toBe(first.deliveryId)
    b.send({ t: 'client_ack', deliveryId: again.deliveryId, status: 'ok' })
    await clock.advance(60_000)
    expect(b.frames('push')).toHaveLength(2)
  })

  it('a fast push whose connection goes while it is being stored reaches the next connection at once', async () => {
    // The store holds the commit of the timed-out push until the recipient's connection has gone.
    const { world, holdNext } = await worldWithHeldStore()
    const s1 = world.session(await world.member())
    const s2 = world.session(await world.member())
    const a = await world.connectSession(s1)
    const b = await world.connectSession(s2, { autoAck: false })
    const env = world.dm(s1.identity, s2.identity)
    const ack = a.sendEnvelope(env)
    await b.waitFor('push')
    const commit = holdNext()
    await world.clock.advance(500) // the fast push times out: the coordinator stores it, claimed by b
    await commit.taken
    await b.close()
    await eventually(async () => world.leased(s2.identity.publicKey), { what: 'b seen gone' })
    // The key is back before the row is: its hello finds no claim to take over.
    const again = await world.connectSession(s2)
    commit.release()
    expect(await ack).toMatchObject({ state: 'queued' })
    // No clock movement: only giving the claim back at once lets the reconnect have it.
    await again.waitFor('push', undefined, { timeoutMs: 5_000 })
    expect(openEnvelope(again.pushes()[0]!.envelope!, s2.identity)).toMatchObject({ ok: true })
  })

  it('a DM sent while its recipient is still saying hello is pushed after the hello_ack, at once', async () => {
    // The store holds the recipient's attach (after the coordinator registered its connection, before the
    // hello_ack) while the DM comes in.
    const { world, holdNext } = await worldWithHeldStore()
    const s1 = world.session(await world.member())
    const s2 = world.session(await world.member())
    const a = await world.connectSession(s1)
    await (await world.connectSession(s2)).close()
    await eventually(async () => world.leased(s2.identity.publicKey), { what: 's2 gone' })
    const attach = holdNext()
    const connecting = world.connectSession(s2)
    await attach.taken
    const ack = a.sendEnvelope(world.dm(s1.identity, s2.identity, 'during the hello'))
    await new Promise((r) => setTimeout(r, 200)) // the send reaches the coordinator meanwhile
    attach.release()
    const b = await connecting
    // No clock movement: a push sent before the hello_ack (dropped by a real peer) would wait it out.
    await b.waitFor('push', undefined, { timeoutMs: 5_000 })
    const log = b.frames().map((f) => f.t)
    expect(log.indexOf('push')).toBeGreaterThan(log.indexOf('hello_ack'))
    expect(await ack).toMatchObject({ state: expect.stringMatching(/^(queued|delivered)$/) })
  })

  it('closing a connection releases its claims at once for the reattached one', async () => {
    const world = await start()
    const { s2 } = await queueFor(world, 3)
    const b1 = await world.connectSession(s2, { autoAck: false })
    for (let i = 0; i < 3; i++) await b1.waitFor('push')
    await b1.terminate()
    // No clock movement: the claims go back when the socket goes, not when their lease ends.
    const b2 = await world.connectSession(s2)
    for (let i = 0; i < 3; i++) await b2.waitFor('push')
    expect(
      b2
        .frames('push')
        .map((p) => p.deliveryId)
        .sort(),
    ).toEqual(
      b1
        .frames('push')
        .map((p) => p.deliveryId)
        .sort(),
    )
  })

  it('a hello takes over the claims a former presence of its key still holds (its coordinator died with them), without waiting for their lease', async () => {
    const world = await start()
    const { s2, ids } = await queueFor(world, 2)
    // What a coordinator killed mid-push leaves behind: claims owned by a presence no socket holds.
    await world.store.query('update delivery set claim_owner = $1, claim_until = $2', [
      'p-of-a-dead-node',
      world.clock.now() + 30_000,
    ])
    const b = await world.connectSession(s2)
    for (let i = 0; i < 2; i++) await b.waitFor('push')
    expect(
      b
        .frames('push')
        .map((f) => f.deliveryId)
        .sort(),
    ).toHaveLength(ids.length)
    await eventually(async () => (await world.store.query('select id from delivery')).length === 0)
  })

  it('an ack from another presence changes nothing', async () => {
    const world = await start()
    const { a, s2 } = await queueFor(world, 1)
    const b = await world.connectSession(s2, { autoAck: false })
    const push = await b.waitFor('push')
    a.send({ t: 'client_ack', deliveryId: push.deliveryId, status: 'ok' })
    const intruder = await world.connectMember(await world.member())
    intruder.send({ t: 'client_ack', deliveryId: push.deliveryId, status: 'ok' })
    await intruder.request({ t: 'list_peers' })
    await a.request({ t: 'list_peers' })
    // Acks are handled as they come; the real one below is the control for these two.
    const rows = await world.store.query('select id from delivery')
    expect(rows.map((r) => r['id'])).toEqual([push.deliveryId])
    expect(a.frames('delivery_receipt')).toHaveLength(0)
    b.send({ t: 'client_ack', deliveryId: push.deliveryId, status: 'ok' })
    await a.waitFor('delivery_receipt')
    await eventually(async () => (await world.store.query('select id from delivery')).length === 0)
  })

  it('6 concurrent reconnects of a recipient never have one delivery on two open connections', async () => {
    const world = await start()
    const n = 20
    const { s2 } = await queueFor(world, n)
    const settled = await Promise.allSettled(
      Array.from({ length: 6 }, (_, i) => world.connectSession(s2, { instanceId: `i${i}`, autoAck: false })),
    )
    const conns = settled.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []))
    const replacedOf = (c: MeshClient) =>
      c.frames('error').some((e) => e.code === 'MESH_ERR_SESSION_REPLACED')
    // Every connection but one is told it was replaced, and then closed 4003.
    const replaced = await Promise.all(
      conns.map(async (c) => {
        const closed = await Promise.race([c.closed, new Promise<undefined>((r) => setTimeout(r, 2_000))])
        return closed?.code === 4003
      }),
    )
    expect(replaced.filter(Boolean)).toHaveLength(conns.length - 1)
    const survivor = conns[replaced.indexOf(false)]!
    expect(replacedOf(survivor)).toBe(false)
    for (const c of conns) {
      // Within one socket, order is exact: nothing is pushed to a connection after it was replaced.
      const log = c.frames()
      const cut = log.findIndex((f) => f.t === 'error' && f.code === 'MESH_ERR_SESSION_REPLACED')
      if (cut >= 0) expect(log.slice(cut).filter((f) => f.t === 'push')).toEqual([])
      const ids = c.frames('push').map((p) => p.deliveryId)
      expect(new Set(ids).size).toBe(ids.length)
    }
    // The survivor holds every delivery; acking them empties the queue.
    const wanted = new Set<string>()
    for (let i = 0; i < n; i++)
      wanted.add((await survivor.waitFor('push', (p) => !wanted.has(p.deliveryId))).deliveryId)
    for (const id of wanted) survivor.send({ t: 'client_ack', deliveryId: id, status: 'ok' })
    await eventually(async () => (await world.store.query('select 1 from delivery')).length === 0, {
      what: 'every delivery acked',
    })
  })
})
