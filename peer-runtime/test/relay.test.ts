import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { createIdentity, mintSessionAttestation, toHex, ulidFactory } from '../../protocol/index.js'
import { storeLegs } from '../../coordinator/store/testing.js'
import { worldsPerTest } from '../../test/support/coordinator-world.js'
import { sample, scrape } from '../../test/support/metrics.js'
import { closePeers, memberPeer, nextMessages, sessionPeer, tempDir } from '../../test/support/peer-world.js'
import { rejectionCode } from '../../test/support/rejection.js'
import { sqliteStore } from '../node/sqlite-store.js'
import { memoryStore } from '../store/memory.js'

describe.each(storeLegs())('Peer over the relay (%s)', (driver) => {
  const start = worldsPerTest(driver)
  afterEach(closePeers)

  it('two session peers DM each other both ways; the outbox rows end done, the inbox holds each once', async () => {
    const world = await start()
    const alice = await sessionPeer(world, await world.member('alice'), { store: 'sqlite' })
    const bob = await sessionPeer(world, await world.member('bob'), { store: 'sqlite' })
    await Promise.all([alice.whenConnected(), bob.whenConnected()])

    const sent = await alice.send(bob.identity.publicKey, { text: 'hello bob' })
    const [atBob] = await nextMessages(bob, 1)
    expect(atBob).toMatchObject({ payload: { text: 'hello bob' }, status: 'ok', via: 'relay', e2e: true })
    expect(toHex(atBob!.from)).toBe(toHex(alice.identity.publicKey))
    expect(atBob!.clientMessageId).toBe(sent.clientMessageId)

    await bob.send(toHex(alice.identity.publicKey), { text: 'hello alice' })
    const [atAlice] = await nextMessages(alice, 1)
    expect(atAlice).toMatchObject({ payload: { text: 'hello alice' } })

    await alice.settled(AbortSignal.timeout(5_000))
    const row = await alice.status(sent.clientMessageId)
    expect(row?.state).toBe('done')
    expect(row?.recipients).toEqual({ [toHex(bob.identity.publicKey)]: 'delivered' })
    // No P2P here: the coordinator pushed it live, and the row says so.
    expect(row?.via).toBe('relay')
  })

  it("a first relay send of an id the peer drew skips the coordinator's store lookup; a caller's own id does not", async () => {
    const world = await start()
    const alice = await sessionPeer(world, await world.member('alice'))
    const bob = await sessionPeer(world, await world.member('bob'))
    await Promise.all([alice.whenConnected(), bob.whenConnected()])
    const checks = async (): Promise<{ memory: number; store: number }> => {
      const text = await scrape(world.url)
      const count = (where: string): number =>
        sample(text, 'agentmesh_dedupe_checks_total', `where="${where}"`)
      return { memory: count('memory'), store: count('store') }
    }
    const before = await checks()
    for (let i = 0; i < 3; i++) await alice.send(bob.identity.publicKey, { n: i })
    // A caller's own id may have been sent by an earlier process: the coordinator must look it up.
    await alice.send(bob.identity.publicKey, { n: 3 }, { clientMessageId: ulidFactory()() })
    expect((await nextMessages(bob, 4)).map((m) => (m.payload as { n: number }).n).sort()).toEqual([
      0, 1, 2, 3,
    ])
    await alice.settled(AbortSignal.timeout(5_000))
    const after = await checks()
    expect(after.memory - before.memory).toBe(3)
    expect(after.store - before.store).toBe(1)
  })

  it('a DM to an offline session is accepted (queued), arrives once when it connects, and the receipt makes it done', async () => {
    const world = await start()
    const bobMember = await world.member('bob')
    const alice = await sessionPeer(world, await world.member('alice'))
    // Bob's session was online once (the coordinator lists its leased presence), then went away.
    const bobFirst = await sessionPeer(world, bobMember, { sessionId: 'bob-1', store: 'sqlite' })
    await bobFirst.whenConnected()
    const bobKey = bobFirst.identity
    await bobFirst.close()
    await alice.whenConnected()

    const sent = await alice.send(bobKey.publicKey, { text: 'while you were out' })
    await expect
      .poll(async () => (await alice.status(sent.clientMessageId))?.state, { timeout: 5_000 })
      .toBe('accepted')
    expect((await alice.status(sent.clientMessageId))?.via).toBe('relay')

    const bob = await sessionPeer(world, bobMember, { sessionId: 'bob-1', identity: bobKey })
    const [got] = await nextMessages(bob, 1)
    expect(got).toMatchObject({ payload: { text: 'while you were out' }, via: 'relay' })
    await expect
      .poll(async () => (await alice.status(sent.clientMessageId))?.state, { timeout: 5_000 })
      .toBe('done')
    // The receipt finished it; the coordinator carried it all the way.
    expect((await alice.status(sent.clientMessageId))?.via).toBe('relay')
  })

  it("a DM to a member key that never connected is queued, and reaches the member's daemon when it comes", async () => {
    const world = await start()
    const carol = await world.member('carol')
    const alice = await sessionPeer(world, await world.member('alice'))
    await alice.whenConnected()

    const sent = await alice.send(carol.publicKey, { text: 'for your daemon' })
    await expect
      .poll(async () => (await alice.status(sent.clientMessageId))?.state, { timeout: 5_000 })
      .toBe('accepted')
    const daemon = await memberPeer(world, carol)
    const [got] = await nextMessages(daemon, 1)
    expect(got).toMatchObject({ payload: { text: 'for your daemon' }, status: 'ok' })
  })

  it('a group message reaches every member of the group once (the offline one later); the sender sees each recipient', async () => {
    const world = await start()
    const [alice, bob, carol] = [
      await world.member('alice'),
      await world.member('bob'),
      await world.member('carol'),
    ]
    const owner = await world.connectMember(world.owner)
    await owner.admin('group_set', {
      name: 'team',
      members: [alice.publicKey, bob.publicKey, carol.publicKey],
    })
    const a = await memberPeer(world, alice)
    const b = await memberPeer(world, bob)
    await Promise.all([a.whenConnected(), b.whenConnected()])

    const sent = await a.sendGroup('@team', { text: 'standup in 5' })
    const [atBob] = await nextMessages(b, 1)
    expect(atBob).toMatchObject({ channel: 'group', payload: { text: 'standup in 5' }, status: 'ok' })
    await expect
      .poll(async () => (await a.status(sent.clientMessageId))?.recipients, { timeout: 5_000 })
      .toMatchObject({ [toHex(bob.publicKey)]: 'delivered', [toHex(carol.publicKey)]: 'queued' })

    const c = await memberPeer(world, carol)
    const [atCarol] = await nextMessages(c, 1)
    expect(atCarol).toMatchObject({ channel: 'group', payload: { text: 'standup in 5' } })
    await expect
      .poll(async () => (await a.status(sent.clientMessageId))?.state, { timeout: 5_000 })
      .toBe('done')
    expect((await a.status(sent.clientMessageId))?.via).toBe('relay')
    expect(await rejectionCode(a.sendGroup('@nobody', 'x'))).toBe('MESH_ERR_UNKNOWN_GROUP')
  })

  it('refuses to seal to a key the coordinator lists but no admin signed for (nothing is stored)', async () => {
    const world = await start()
    const store = memoryStore()
    const alice = await sessionPeer(world, await world.member('alice'), { store })
    await alice.whenConnected()
    // The test hook: a presence row in the store for a key no member attested: it names carol's member
    // (so the coordinator, which checks only that the member exists, lists it), but its attestation was
    // signed by a key the roster never admitted, as a compromised coordinator or store would serve it.
    const carol = await world.member('carol')
    const outsider = createIdentity('member')
    const ghost = createIdentity('session')
    const att = mintSessionAttestation({
      mesh: world.mesh,
      member: outsider,
      sessionPk: ghost.publicKey,
      sessionId: 'ghost',
      now: world.clock.now(),
    })
    await world.store.query(
      `insert into presence (mesh, pk, member_pk, role, session_id, instance_id, presence_id, connected, status,
         attestation_signed, attestation_sig, updated_at)
       values ($1, $2, $3, 'session', 'ghost', 'i-ghost', 'p-ghost', true, 'idle', $4, $5, $6)`,
      [world.mesh, ghost.publicKey, carol.publicKey, att.signed, att.sig, world.clock.now()],
    )

    const refused: string[] = []
    alice.on('refused', (record, err) =>
      refused.push(`${toHex(record.pk)}:${(err as { code?: string }).code}`),
    )
    const code = await rejectionCode(alice.send(ghost.publicKey, { text: 'secret' }))
    expect(code).toBe('MESH_ERR_UNKNOWN_KEY')
    expect(refused).toEqual([`${toHex(ghost.publicKey)}:MESH_ERR_WRONG_SIGNER`])
    expect(await store.listOutbox(['pending', 'inflight', 'accepted', 'done', 'dead'], 10)).toEqual([])
  })
})

describe.each(storeLegs())('a duplicate push over the relay (%s)', (driver) => {
  const start = worldsPerTest(driver)
  afterEach(closePeers)

  it('a real Peer acks a push of a message it already holds (else the coordinator would hold it forever)', async () => {
    const world = await start()
    const bobMember = await world.member('bob')
    const bobKey = createIdentity('session')
    // A durable store acks on storing (a volatile one on consumption, holding only the newest ack).
    const store = sqliteStore({ path: join(tempDir(), 'bob.db') })
    const bob = await sessionPeer(world, bobMember, { identity: bobKey, sessionId: 'bob', store })
    const alice = await sessionPeer(world, await world.member('alice'))
    await Promise.all([alice.whenConnected(), bob.whenConnected()])
    await alice.listPeers({ includeOffline: true })
    await bob.close()
    const sent = await alice.send(bobKey.publicKey, { text: 'twice' })
    const owed = async (): Promise<number> =>
      Number(
        (
          await world.store.query<{ n: string }>('select count(*) as n from delivery where recipient = $1', [
            bobKey.publicKey,
          ])
        )[0]?.n,
      )
    await expect.poll(owed, { timeout: 10_000 }).toBe(1)
    // The same message owed twice: what a redelivery after a lost ack looks like to the receiver.
    await world.store.query(
      `insert into delivery (id, mesh, recipient, sender, client_message_id, envelope, size, queued_at,
         expires_at, attempts, receipt)
       select id || '-again', mesh, recipient, sender, client_message_id, envelope, size, queued_at + 1,
         expires_at, attempts, receipt from delivery where recipient = $1`,
      [bobKey.publicKey],
    )
    expect(await owed()).toBe(2)

    const again = await sessionPeer(world, bobMember, { identity: bobKey, sessionId: 'bob', store })
    const [got] = await nextMessages(again, 1)
    expect(got?.clientMessageId).toBe(sent.clientMessageId)
    // Both pushes acked (the second as a duplicate): nothing owed, and the inbox holds it once.
    await expect.poll(owed, { timeout: 10_000 }).toBe(0)
    const rows = await store.readInbox({
      mesh: world.mesh,
      recipients: [bobKey.publicKey],
      afterSeq: 0,
      limit: 10,
    })
    expect(rows.map((r) => r.clientMessageId)).toEqual([sent.clientMessageId])
    await store.close()
  })
})
