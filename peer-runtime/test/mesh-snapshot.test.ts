import { beforeAll, describe, expect, it } from 'vitest'
import { decode, encode } from '../../protocol/codec.js'
import {
  createIdentity,
  initCrypto,
  toHex,
  type Identity,
  type Invite,
  type MeshState,
} from '../../protocol/index.js'
import { MeshLog } from '../../bench/processes/mesh-log.js'
import { invite, joinRecord, newOwner, rosterRecord } from '../../test/support/mesh-fixture.js'
import { MeshView } from '../mesh-view.js'

const MESH = 'snap-mesh'

/** Everything a MeshState holds, as plain values to compare. */
function summary(s: MeshState): unknown {
  const sorted = <T>(xs: Iterable<T>): T[] => [...xs].sort()
  return {
    version: s.version,
    seq: s.roster.seq,
    rosterVersion: s.roster.version,
    members: s.roster.members().map((m) => [toHex(m.pk), m.role, m.displayName ?? null]),
    groups: [...s.groups].map(([k, v]) => [k, sorted(v)]).sort(),
    topics: [...s.topics].map(([k, t]) => [k, t.creator, t.acl && sorted(t.acl), t.keyEpoch, t.retentionMs]),
    revoked: sorted(s.revoked),
    displayNames: [...s.displayNames].sort(),
    proofs: [...s.proofs].map(([k, p]) => [k, p.map((x) => [x.kind, toHex(x.signer), toHex(x.sig)])]).sort(),
    services: [...s.services].sort(),
    allowPlaintext: s.allowPlaintext,
  }
}

describe('MeshView snapshot', () => {
  let owner: Identity
  let coordinator: Identity
  let log: MeshLog
  let alice: Identity, bob: Identity, carol: Identity, dave: Identity, erin: Identity
  /** The owner's two-use invite: alice takes the first use, erin the second (after the snapshot). */
  let twoUses: Invite
  const inviteBase = () => ({
    mesh: MESH,
    coordinatorUrl: 'http://127.0.0.1:1',
    coordinatorPk: coordinator.publicKey,
    ownerPk: owner.publicKey,
  })

  beforeAll(async () => {
    await initCrypto()
    owner = newOwner()
    coordinator = createIdentity('coordinator')
    ;[alice, bob, carol, dave, erin] = [0, 1, 2, 3, 4].map(() => createIdentity('member')) as [
      Identity,
      Identity,
      Identity,
      Identity,
      Identity,
    ]
    log = new MeshLog({ mesh: MESH, owner, coordinator, displayName: 'owner' })
    twoUses = invite({ ...inviteBase(), signer: owner, maxUses: 2 })
    log.append('join', { invite: twoUses, join: joinRecord(alice, twoUses), displayName: 'alice' })
    const add = (
      seq: number,
      action: 'add' | 'set-role' | 'remove',
      subject: Identity,
      role?: 'admin' | 'member',
    ) =>
      log.append('roster', {
        record: rosterRecord({ signer: owner, mesh: MESH, seq, action, subjectPk: subject.publicKey, role }),
      })
    add(1, 'add', bob, 'member')
    add(2, 'set-role', bob, 'admin')
    const byBob = invite({ ...inviteBase(), signer: bob })
    log.append('join', { invite: byBob, join: joinRecord(carol, byBob), displayName: 'carol' })
    log.append('group', { name: 'ops', members: [alice.publicKey, carol.publicKey] })
    log.append('group', { name: 'all', members: [alice.publicKey, bob.publicKey, carol.publicKey] })
    log.append('topic', {
      name: 'news',
      acl: [alice.publicKey],
      retentionMs: 60_000,
      creator: alice.publicKey,
      keyEpoch: 2,
    })
    log.append('service', { id: 'svc', pk: dave.publicKey, memberPk: carol.publicKey, scopes: ['dm'] })
    log.append('revoke', { pk: carol.publicKey })
    log.append('settings', { allowPlaintext: false })
    add(3, 'remove', alice)
    // The same invite's second use comes after the snapshot (below).
    log.append('join', { invite: twoUses, join: joinRecord(erin, twoUses) })
  })

  const fresh = (coordinatorPk = coordinator.publicKey, mesh = MESH, ownerPk = owner.publicKey): MeshView =>
    new MeshView({ mesh, ownerPk, coordinatorPk })

  it('restores exactly the state a replay built, and the log goes on from it the same way', () => {
    const replayed = fresh()
    const cut = log.version - 1
    expect(replayed.applyEvents(log.since(0).slice(0, cut))).toEqual({ applied: cut, gap: false })
    const restored = fresh()
    restored.restore(replayed.snapshot())
    expect(restored.restored).toBe(true)
    expect(summary(restored.state)).toEqual(summary(replayed.state))
    expect(restored.version).toBe(cut)
    expect(toHex(restored.lastSig!)).toBe(toHex(log.events[cut - 1]!.record.sig))

    // The next event is the invite's second use: the restored roster counted the first.
    expect(restored.applyEvents(log.since(cut))).toEqual({ applied: 1, gap: false })
    expect(replayed.applyEvents(log.since(cut))).toEqual({ applied: 1, gap: false })
    expect(summary(restored.state)).toEqual(summary(replayed.state))
    expect(restored.state.isMember(erin.publicKey)).toBe(true)
    // A third use is refused by both (maxUses 2), and the next roster seq is 4 on both.
    const next = (view: MeshView, kind: string, body: unknown) =>
      view.applyEvent({ mesh: MESH, version: view.version + 1, prevVersion: view.version, kind, body })
    const third = { invite: twoUses, join: joinRecord(createIdentity('member'), twoUses) }
    const seq5 = rosterRecord({
      signer: owner,
      mesh: MESH,
      seq: 5,
      action: 'add',
      subjectPk: alice.publicKey,
      role: 'member',
    })
    for (const view of [restored, replayed]) {
      expect(() => next(view, 'join', third)).toThrow(
        expect.objectContaining({ code: 'MESH_ERR_INVITE_EXHAUSTED' }) as Error,
      )
      expect(() => next(view, 'roster', { record: seq5 })).toThrow(
        expect.objectContaining({ code: 'MESH_ERR_OUT_OF_ORDER' }) as Error,
      )
    }
  })

  it('logHolds: the log from version - 1 holds our event only if it is the one we applied', () => {
    const view = fresh()
    view.applyEvents(log.since(0).slice(0, 5))
    const restored = fresh()
    restored.restore(view.snapshot())
    for (const v of [view, restored]) {
      expect(v.logHolds(log.since(4))).toBe(true)
      expect(v.logHolds([])).toBe(false)
      // The same version with another body (a log that was rewritten): not ours.
      const other = new MeshLog({ mesh: MESH, owner, coordinator })
      other.appendGroupChanges(4, [owner.publicKey])
      expect(v.logHolds(other.since(4))).toBe(false)
    }
  })

  it('refuses a snapshot of another mesh, owner or coordinator, a tampered roster record, garbage and another format', () => {
    const view = fresh()
    view.applyEvents(log.since(0))
    const bytes = view.snapshot()
    const reject = (target: MeshView, b: Uint8Array, code: string): void => {
      const before = summary(target.state)
      expect(() => target.restore(b)).toThrow(expect.objectContaining({ code }) as Error)
      expect(summary(target.state)).toEqual(before)
      expect(target.restored).toBe(false)
    }
    reject(fresh(createIdentity('coordinator').publicKey), bytes, 'MESH_ERR_WRONG_MESH')
    reject(fresh(coordinator.publicKey, 'other-mesh'), bytes, 'MESH_ERR_WRONG_MESH')
    reject(fresh(coordinator.publicKey, MESH, newOwner().publicKey), bytes, 'MESH_ERR_WRONG_MESH')

    // Bob's promotion to admin rewritten to carry another signature: the roster refuses the record.
    const doc = decode(bytes) as { authority: [string, { record: { sig: Uint8Array } }][]; format: number }
    const promotion = doc.authority.filter(([kind]) => kind === 'roster')[1]![1].record
    const sig = Uint8Array.from(promotion.sig)
    sig[0] = sig[0]! ^ 1
    promotion.sig = sig
    reject(fresh(), encode(doc), 'MESH_ERR_BAD_SIGNATURE')

    reject(fresh(), new Uint8Array([0xc1, 0x00]), 'MESH_ERR_MALFORMED_FRAME')
    reject(fresh(), encode({ ...(decode(bytes) as object), format: 2 }), 'MESH_ERR_MALFORMED_FRAME')
  })
})
