import { describe, expect, it } from 'vitest'
import { storeLegs } from '../store/testing.js'
import {
  createIdentity,
  decodeEnvelope,
  encodeEnvelope,
  openEnvelope,
  sealDirect,
  sealGroup,
  toHex,
  ulidFactory,
  type Channel,
  type FrameOf,
  type Identity,
} from '../../protocol/index.js'
import { worldsPerTest, type World } from '../../test/support/coordinator-world.js'
import type { MeshClient } from '../../test/support/mesh-client.js'
import { rejection } from '../../test/support/rejection.js'

const nextId = ulidFactory()
const wait = (): { signal: AbortSignal } => ({ signal: AbortSignal.timeout(5000) })

/** Matches pushes of one channel (members also get `system` pushes for every mesh change). */
const onChannel =
  (channel: Channel) =>
  (f: FrameOf<'push'>): boolean =>
    decodeEnvelope(f.envelope).channel === channel

describe.each(storeLegs())('group fan-out (%s)', (driver) => {
  const start = worldsPerTest(driver)
  let world: World

  /** Five members in group `team`, set by the owner (connected as control-plane). */
  async function team(): Promise<{ owner: MeshClient; members: Identity[]; rosterVersion: number }> {
    world = await start()
    const members: Identity[] = []
    for (let i = 0; i < 5; i++) members.push(await world.member(`m${i}`))
    const owner = await world.connectMember(world.owner)
    const set = await owner.admin('group_set', { name: 'team', members: members.map((m) => m.publicKey) })
    const rosterVersion = (set.result as { stateVersion: number }).stateVersion
    return { owner, members, rosterVersion }
  }

  function groupEnvelope(from: Identity, target: string, recipients: Uint8Array[], rosterVersion: number) {
    return sealGroup({
      mesh: world.mesh,
      from,
      target,
      recipients,
      rosterVersion,
      clientMessageId: nextId(),
      payload: { text: `to ${target}` },
    })
  }

  it('delivers one copy per member: online at once, offline on reconnect, each with its own key box', async () => {
    const { owner, members, rosterVersion } = await team()
    const online = members.slice(0, 4)
    const offline = members[4]!
    const clients = await Promise.all(online.map((m) => world.connectMember(m)))

    const env = groupEnvelope(
      world.owner,
      '@team',
      members.map((m) => m.publicKey),
      rosterVersion,
    )
    const ack = await owner.sendEnvelope(env, wait())
    expect(ack.state).toBe('partial')
    const expected = Object.fromEntries(online.map((m) => [toHex(m.publicKey), 'delivered']))
    expected[toHex(offline.publicKey)] = 'queued'
    expect(ack.recipients).toEqual(expected)

    const late = await world.connectMember(offline)
    const pushes = await Promise.all(
      [...clients, late].map((c) => c.waitFor('push', onChannel('group'), wait())),
    )
    expect(new Set(pushes.map((p) => p.deliveryId)).size).toBe(5)
    // The queued copy's ack reaches the sender as a receipt; the fast-path copies were acked in the send_ack.
    const receipt = await owner.waitFor('delivery_receipt', undefined, wait())
    expect(receipt).toMatchObject({ clientMessageId: env.clientMessageId, status: 'delivered' })
    expect(toHex(receipt.recipient)).toBe(toHex(offline.publicKey))

    pushes.forEach((push, i) => {
      const me = members[i]!
      const copy = decodeEnvelope(push.envelope)
      expect(Object.keys(copy.keys ?? {})).toEqual([toHex(me.publicKey)])
      expect(copy.clientMessageId).toBe(env.clientMessageId)
      const opened = openEnvelope(copy, me)
      expect(opened).toMatchObject({ ok: true, payload: { text: 'to @team' } })
      for (const other of [...members.filter((m) => m !== me), world.owner]) {
        expect(openEnvelope(copy, other)).toMatchObject({ ok: false, status: 'undecryptable' })
      }
    })
    const rows = await world.store.query<{ n: number }>('select count(*)::int as n from delivery')
    expect(rows[0]?.n).toBe(0)
  })

  it('refuses a group envelope sealed to a stale roster with {added, removed}', async () => {
    const { owner, members, rosterVersion } = await team()
    const missing = members[2]!
    const short = groupEnvelope(
      world.owner,
      '@team',
      members.filter((m) => m !== missing).map((m) => m.publicKey),
      rosterVersion,
    )
    const e1 = await rejection(owner.sendEnvelope(short))
    expect(e1.code).toBe('MESH_ERR_STALE_ROSTER')
    expect(e1.details).toMatchObject({ added: [toHex(missing.publicKey)], removed: [] })

    const stranger = createIdentity('member')
    const long = groupEnvelope(
      world.owner,
      '@team',
      [...members.map((m) => m.publicKey), stranger.publicKey],
      rosterVersion,
    )
    const e2 = await rejection(owner.sendEnvelope(long))
    expect(e2.code).toBe('MESH_ERR_STALE_ROSTER')
    expect(e2.details).toMatchObject({ added: [], removed: [toHex(stranger.publicKey)] })
    const rows = await world.store.query<{ n: number }>('select count(*)::int as n from delivery')
    expect(rows[0]?.n).toBe(0)
  })

  it('a session sender may list its own key and its member: neither gets a copy', async () => {
    const { members, rosterVersion } = await team()
    const [m0, ...rest] = members as [Identity, ...Identity[]]
    const clients = await Promise.all(rest.map((m) => world.connectMember(m)))
    const s0 = world.session(m0)
    const session = await world.connectSession(s0)
    const recipients = [s0.identity, m0, ...rest].map((m) => m.publicKey)
    const ack = await session.sendEnvelope(
      groupEnvelope(s0.identity, '@team', recipients, rosterVersion),
      wait(),
    )
    expect(ack.state).toBe('delivered')
    expect(Object.keys(ack.recipients ?? {}).sort()).toEqual(rest.map((m) => toHex(m.publicKey)).sort())
    for (const [i, c] of clients.entries()) {
      const push = await c.waitFor('push', onChannel('group'), wait())
      expect(openEnvelope(decodeEnvelope(push.envelope), rest[i]!)).toMatchObject({ ok: true })
    }
  })

  it('a `*` broadcast reaches every member, the owner included', async () => {
    const { owner, members, rosterVersion } = await team()
    const clients = await Promise.all(members.map((m) => world.connectMember(m)))
    const sender = members[0]!
    const everyone = [world.owner, ...members]
    const env = groupEnvelope(
      sender,
      '*',
      everyone.map((m) => m.publicKey),
      rosterVersion,
    )
    const ack = await clients[0]!.sendEnvelope(env, wait())
    expect(ack.state).toBe('delivered')
    expect(Object.keys(ack.recipients ?? {}).sort()).toEqual(
      everyone
        .filter((m) => m !== sender)
        .map((m) => toHex(m.publicKey))
        .sort(),
    )
    const receivers: [MeshClient, Identity][] = [[owner, world.owner]]
    for (let i = 1; i < members.length; i++) receivers.push([clients[i]!, members[i]!])
    for (const [client, me] of receivers) {
      const push = await client.waitFor('push', onChannel('group'), wait())
      expect(openEnvelope(decodeEnvelope(push.envelope), me)).toMatchObject({ ok: true })
    }
    // The sender's own key box is not delivered back to it.
    await clients[0]!.request({ t: 'list_peers' })
    expect(clients[0]!.pushes().filter((p) => p.envelope?.channel === 'group')).toEqual([])
  })

  it('nothing crosses between two meshes on one coordinator', async () => {
    const { members, rosterVersion } = await team()
    const ownerB = createIdentity('member')
    await world.createMesh('mesh-b', ownerB)
    const b = await world.connect({ identity: ownerB, mesh: 'mesh-b', role: 'control-plane' })
    const m0 = members[0]!
    const a = await world.connectMember(m0)

    const toB = world.dm(m0, ownerB, 'hi b')
    const e1 = await rejection(a.sendEnvelope(toB))
    expect(e1.code).toBe('MESH_ERR_UNKNOWN_KEY')

    const wrongMesh = sealDirect({
      mesh: 'mesh-b',
      channel: 'dm',
      from: m0,
      to: ownerB.publicKey,
      clientMessageId: nextId(),
      payload: 'hi b',
    })
    const e2 = await rejection(a.request({ t: 'send', envelope: encodeEnvelope(wrongMesh) }))
    expect(e2.code).toBe('MESH_ERR_WRONG_MESH')

    // A broadcast in mesh A stays in mesh A.
    const others = [world.owner, ...members.slice(1)].map((m) => m.publicKey)
    const ack = await a.sendEnvelope(groupEnvelope(m0, '*', others, rosterVersion))
    expect(ack.recipients?.[toHex(ownerB.publicKey)]).toBeUndefined()

    // A round trip on B's socket: any push sent to it before now would have arrived first.
    await b.request({ t: 'list_peers' })
    expect(b.pushes().filter((p) => p.envelope?.channel !== 'system')).toEqual([])
    const rows = await world.store.query<{ n: number }>(
      "select count(*)::int as n from delivery where mesh = 'mesh-b'",
    )
    expect(rows[0]?.n).toBe(0)
  })
})
