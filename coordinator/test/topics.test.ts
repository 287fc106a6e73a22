import { beforeAll, describe, expect, it } from 'vitest'
import { openTestStore, storeLegs } from '../store/testing.js'
import {
  decodeEnvelope,
  initCrypto,
  randomBytes,
  sealTopic,
  toHex,
  ulidFactory,
  type FrameOf,
  type Identity,
} from '../../protocol/index.js'
import { worldsPerTest, type World, type WorldOptions } from '../../test/support/coordinator-world.js'
import { eventually } from '../../test/support/eventually.js'
import type { MeshClient } from '../../test/support/mesh-client.js'
import { rejectionCode } from '../../test/support/rejection.js'

const nextId = ulidFactory()
const TOPIC = 'news'
let topicKey: Uint8Array

beforeAll(async () => {
  await initCrypto()
  topicKey = randomBytes(32)
})

function post(world: World, from: Identity, payload: unknown, name = TOPIC) {
  return sealTopic({
    mesh: world.mesh,
    from,
    target: `#${name}`,
    clientMessageId: nextId(),
    meta: { keyEpoch: 1 },
    topicKey,
    payload,
  })
}

/** Takes the next `n` topic pushes in arrival order; with `ack`, acks each one cumulatively. */
async function takeTopic(c: MeshClient, n: number, o: { ack?: boolean } = {}): Promise<FrameOf<'push'>[]> {
  const got: FrameOf<'push'>[] = []
  for (let i = 0; i < n; i++) {
    const push = await c.waitFor('push', (f) => f.deliveryId.startsWith('topic:'), { timeoutMs: 10_000 })
    got.push(push)
    if (o.ack === true) c.send({ t: 'topic_ack', topic: TOPIC, offset: push.topicOffset! + 1 })
  }
  return got
}

const offsets = (pushes: FrameOf<'push'>[]): number[] => pushes.map((p) => p.topicOffset!)
const range = (from: number, to: number): number[] => Array.from({ length: to - from }, (_, i) => from + i)

describe.each(storeLegs())('topics (%s)', (driver) => {
  const start = worldsPerTest(driver)
  let world: World
  // The first store of a process builds the migrated snapshot: paid here, not inside a test's budget.
  beforeAll(async () => {
    await (await openTestStore(driver)).close()
  })

  /** Three members in the ACL of `news`, and an outsider who is a member of the mesh but not of the ACL. */
  async function setup(limits?: WorldOptions['limits']) {
    world = await start(limits === undefined ? {} : { limits })
    const members = [await world.member('one'), await world.member('two'), await world.member('three')]
    const outsider = await world.member('outsider')
    const owner = await world.connectMember(world.owner)
    await owner.admin('topic_create', { name: TOPIC, acl: members.map((m) => m.publicKey) })
    return { members, outsider }
  }

  it('3 subscribers get offsets 0..89 gap-free and in order under 3 × 30 concurrent posts', async () => {
    const { members } = await setup({ pushWindow: 16 })
    const posters = await Promise.all(members.map((m) => world.connectMember(m)))
    const sessions = members.map((m) => world.session(m))
    const subscribers = await Promise.all(sessions.map((s) => world.connectSession(s)))
    for (const s of subscribers) {
      const sub = await s.request({ t: 'subscribe', topic: TOPIC })
      expect(sub).toMatchObject({ topic: TOPIC, fromOffset: 0, headOffset: 0 })
    }

    const sent = posters.flatMap((c, i) =>
      range(0, 30).map((j) => c.sendEnvelope(post(world, members[i]!, `m${i}-${j}`))),
    )
    // Subscribers ack as they go: with a window of 16 nothing past the window arrives without acks.
    const received = await Promise.all(subscribers.map((s) => takeTopic(s, 90, { ack: true })))
    const acks = await Promise.all(sent)
    expect(acks.every((a) => a.state === 'queued')).toBe(true)

    const ids = new Set(acks.map((a) => a.clientMessageId))
    for (const pushes of received) {
      expect(offsets(pushes)).toEqual(range(0, 90))
      expect(pushes.map((p) => p.deliveryId)).toEqual(range(0, 90).map((n) => `topic:${TOPIC}:${n}`))
      expect(new Set(pushes.map((p) => decodeEnvelope(p.envelope).clientMessageId))).toEqual(ids)
    }
    const rows = await world.store.query<{ offset: number }>(
      'select "offset" from topic_message where topic = $1 order by "offset"',
      [TOPIC],
    )
    expect(rows.map((r) => r.offset)).toEqual(range(0, 90))
    const head = await world.store.query<{ next_offset: number }>(
      'select next_offset from topic where name = $1',
      [TOPIC],
    )
    expect(head[0]?.next_offset).toBe(90)
    // The harness's client_ack of each topic push was ignored without an error.
    for (const s of subscribers) expect(s.frames('error')).toEqual([])
    await eventually(
      async () => {
        const r = await world.store.query<{ committed_offset: number }>(
          'select committed_offset from topic_subscription where topic = $1',
          [TOPIC],
        )
        return r.length === 3 && r.every((x) => x.committed_offset === 90)
      },
      { what: 'all 3 subscriptions to commit offset 90' },
    )
  })

  it('a subscriber that comes back from its committed offset gets exactly what it missed', async () => {
    const { members } = await setup()
    const poster = await world.connectMember(members[0]!)
    const implicit = world.session(members[1]!)
    const explicit = world.session(members[2]!)
    let a = await world.connectSession(implicit)
    let b = await world.connectSession(explicit)
    await a.request({ t: 'subscribe', topic: TOPIC })
    await b.request({ t: 'subscribe', topic: TOPIC })
    for (let i = 0; i < 5; i++) await poster.sendEnvelope(post(world, members[0]!, `before-${i}`))

    // a acks 0..3 and leaves with 4 received but not acked; b acks all five and keeps its cursor itself.
    const firstA = await takeTopic(a, 5)
    expect(offsets(firstA)).toEqual(range(0, 5))
    a.send({ t: 'topic_ack', topic: TOPIC, offset: 4 })
    expect(offsets(await takeTopic(b, 5, { ack: true }))).toEqual(range(0, 5))
    await a.close()
    await b.close()

    for (let i = 5; i < 10; i++) await poster.sendEnvelope(post(world, members[0]!, `during-${i}`))

    a = await world.connectSession(implicit)
    b = await world.connectSession(explicit)
    const subA = await a.request({ t: 'subscribe', topic: TOPIC })
    expect(subA).toMatchObject({ fromOffset: 4, headOffset: 10 })
    const subB = await b.request({ t: 'subscribe', topic: TOPIC, fromOffset: 5 })
    expect(subB).toMatchObject({ fromOffset: 5, headOffset: 10 })
    expect(offsets(await takeTopic(a, 6, { ack: true }))).toEqual(range(4, 10))
    expect(offsets(await takeTopic(b, 5, { ack: true }))).toEqual(range(5, 10))

    // No more: the next push each one sees is the sentinel, not a replay.
    await poster.sendEnvelope(post(world, members[0]!, 'sentinel'))
    expect(offsets(await takeTopic(a, 1))).toEqual([10])
    expect(offsets(await takeTopic(b, 1))).toEqual([10])
    expect(offsets(a.pushes().map((p) => p.frame))).toEqual(range(4, 11))
    expect(offsets(b.pushes().map((p) => p.frame))).toEqual(range(5, 11))
  })

  it('refuses members outside the ACL and unknown topics, on subscribe and on post', async () => {
    const { members, outsider } = await setup()
    const out = await world.connectMember(outsider)
    expect(await rejectionCode(out.request({ t: 'subscribe', topic: TOPIC }))).toBe('MESH_ERR_NOT_AUTHORIZED')
    expect(await rejectionCode(out.sendEnvelope(post(world, outsider, 'let me in')))).toBe(
      'MESH_ERR_NOT_AUTHORIZED',
    )

    const inside = await world.connectMember(members[0]!)
    expect(await rejectionCode(inside.request({ t: 'subscribe', topic: 'nope' }))).toBe(
      'MESH_ERR_UNKNOWN_TOPIC',
    )
    expect(await rejectionCode(inside.sendEnvelope(post(world, members[0]!, 'x', 'nope')))).toBe(
      'MESH_ERR_UNKNOWN_TOPIC',
    )
    const rows = await world.store.query('select 1 from topic_message')
    expect(rows).toEqual([])

    // Re-creating an existing topic to open its ACL is refused to a plain member.
    expect(await rejectionCode(out.admin('topic_create', { name: TOPIC, acl: null }))).toBe(
      'MESH_ERR_NOT_AUTHORIZED',
    )
    expect(await rejectionCode(out.request({ t: 'subscribe', topic: TOPIC }))).toBe('MESH_ERR_NOT_AUTHORIZED')

    // An open topic (no ACL) takes every member; unsubscribe ends the subscription.
    const owner = await world.connectMember(world.owner)
    await owner.admin('topic_create', { name: 'lobby', acl: null })
    const sub = await out.request({ t: 'subscribe', topic: 'lobby' })
    expect(sub).toMatchObject({ fromOffset: 0, headOffset: 0 })
    await out.request({ t: 'unsubscribe', topic: 'lobby' })
    expect(await world.store.query('select 1 from topic_subscription where topic = $1', ['lobby'])).toEqual(
      [],
    )
  })

  it('relays key requests to the other subscribers and keeps a grant until its offline addressee subscribes', async () => {
    const { members, outsider } = await setup()
    const holder = world.session(members[0]!)
    const late = world.session(members[1]!)
    const h = await world.connectSession(holder)
    await h.request({ t: 'subscribe', topic: TOPIC })

    const sealed = randomBytes(72)
    h.send({ t: 'topic_key_grant', topic: TOPIC, epoch: 1, to: late.identity.publicKey, sealed })
    await eventually(
      async () =>
        (await world.store.query('select 1 from topic_key_grant where to_pk = $1', [late.identity.publicKey]))
          .length === 1,
      { what: 'the grant to be kept for its offline addressee' },
    )

    const l = await world.connectSession(late)
    await l.request({ t: 'subscribe', topic: TOPIC })
    const grant = await l.waitFor('topic_key_grant')
    expect(grant).toMatchObject({ topic: TOPIC, epoch: 1 })
    expect(toHex(grant.sealed)).toBe(toHex(sealed))
    expect(toHex(grant.from!)).toBe(toHex(holder.identity.publicKey))
    await eventually(async () => (await world.store.query('select 1 from topic_key_grant')).length === 0, {
      what: 'the delivered grant to be deleted',
    })

    // A request goes to the other live subscribers, stamped with the requester's key.
    l.send({ t: 'topic_key_request', topic: TOPIC, epoch: 2 })
    const req = await h.waitFor('topic_key_request')
    expect(req.epoch).toBe(2)
    expect(toHex(req.from!)).toBe(toHex(late.identity.publicKey))
    // A live addressee gets its grant at once.
    const sealed2 = randomBytes(72)
    h.send({ t: 'topic_key_grant', topic: TOPIC, epoch: 2, to: late.identity.publicKey, sealed: sealed2 })
    const grant2 = await l.waitFor('topic_key_grant', (g) => g.epoch === 2)
    expect(toHex(grant2.sealed)).toBe(toHex(sealed2))
    expect(l.frames('topic_key_request')).toEqual([])

    // Outside the ACL: neither a request nor a grant.
    const out = await world.connectMember(outsider)
    out.send({ t: 'topic_key_request', topic: TOPIC, epoch: 2 })
    expect((await out.waitFor('error')).code).toBe('MESH_ERR_NOT_AUTHORIZED')
    out.send({ t: 'topic_key_grant', topic: TOPIC, epoch: 2, to: holder.identity.publicKey, sealed: sealed2 })
    expect((await out.waitFor('error')).code).toBe('MESH_ERR_NOT_AUTHORIZED')
    expect(h.frames('topic_key_grant')).toEqual([])
  })
})
