import { describe, expect, it } from 'vitest'
import { isPeerNameError, resolvePeer, type PeerEntry } from './resolve.js'
import { EXIT, exitCodeOf } from '../exit-codes.js'

const key = (c: string): string => c.repeat(64)

function member(name: string | null, pk: string, online = true): PeerEntry {
  return { pk, memberPk: pk, role: 'control-plane', sessionId: null, displayName: name, online, status: null }
}

function session(name: string, pk: string, memberPk: string, online: boolean, id = 'cli'): PeerEntry {
  return { pk, memberPk, role: 'session', sessionId: id, displayName: name, online, status: null }
}

const alice = member('alice', key('a'))
const bob1 = member('bob', 'b1' + key('0').slice(2))
const bob2 = member('bob', 'b2' + key('0').slice(2), false)
const carolCli = session('carol', key('c'), key('d'), false)

function refusal(peers: PeerEntry[], to: string): { message: string; details: Record<string, unknown> } {
  try {
    resolvePeer(peers, to)
  } catch (err) {
    expect(isPeerNameError(err as never)).toBe(true)
    expect(exitCodeOf(err)).toBe(EXIT.NO_SUCH_PEER)
    expect(err).toMatchObject({ code: 'MESH_ERR_UNKNOWN_KEY' })
    return err as never
  }
  throw new Error(`${to} resolved`)
}

describe('resolvePeer: names, keys and prefixes', () => {
  it('finds a display name exactly, then case-insensitively', () => {
    expect(resolvePeer([alice, bob1], 'alice')).toEqual({ pk: alice.pk, displayName: 'alice' })
    expect(resolvePeer([alice, bob1], 'ALICE')).toEqual({ pk: alice.pk, displayName: 'alice' })
  })

  it('two members of one name: an error listing both keys, with the candidates in details', () => {
    const err = refusal([alice, bob1, bob2], 'bob')
    expect(err.message).toContain(bob1.pk)
    expect(err.message).toContain(bob2.pk)
    expect(err.message).not.toContain(alice.pk)
    expect(err.details).toMatchObject({
      to: 'bob',
      reason: 'ambiguous',
      candidates: [
        { displayName: 'bob', pk: bob1.pk, online: true },
        { displayName: 'bob', pk: bob2.pk, online: false },
      ],
    })
  })

  it('an unknown name lists the members it could have meant', () => {
    const err = refusal([alice, bob1], 'zed')
    expect(err.details).toMatchObject({ reason: 'unknown' })
    expect(err.message).toMatch(
      /^no verified peer is named "zed"; the candidates:\n {2}alice +a{64} {2}member, online\n/,
    )
    expect(refusal([], 'zed').message).toContain('no other verified peers yet')
  })

  it('a unique key prefix (4 hex or more), of a presence key or of a member key', () => {
    expect(resolvePeer([alice, bob1, bob2], 'b1000').pk).toBe(bob1.pk)
    expect(resolvePeer([alice, bob1, bob2], 'AAAA').pk).toBe(alice.pk)
    expect(resolvePeer([alice, carolCli], 'dddd').pk).toBe(key('d'))
    expect(resolvePeer([alice, carolCli], 'cccc').pk).toBe(carolCli.pk)
    expect(refusal([alice, bob1, bob2], 'b1b2').details).toMatchObject({ reason: 'unknown' })
    // Shorter than 4: read as a name only.
    expect(refusal([alice, bob1, bob2], 'b1').details).toMatchObject({ reason: 'unknown' })
  })

  it('a prefix of two members is ambiguous and lists both', () => {
    const x = member('x', 'abcd1' + key('1').slice(5))
    const y = member('y', 'abcd2' + key('2').slice(5))
    const err = refusal([x, y], 'abcd')
    expect(err.details).toMatchObject({ reason: 'ambiguous' })
    expect(err.message).toContain(x.pk)
    expect(err.message).toContain(y.pk)
    expect(resolvePeer([x, y], 'abcd2').pk).toBe(y.pk)
  })

  it('a full key is taken as it is, even when nobody lists it yet', () => {
    expect(resolvePeer([alice], key('e').toUpperCase())).toEqual({ pk: key('e') })
    expect(resolvePeer([alice], alice.pk)).toEqual({ pk: alice.pk, displayName: 'alice' })
  })

  it("a name stands for the member key, whichever of the member's presences are listed", () => {
    // carol was seen only as an offline `cli` session: a DM to her member key reaches her listen later.
    expect(resolvePeer([carolCli], 'carol')).toEqual({ pk: key('d'), displayName: 'carol' })
    const online = session('carol', key('f'), key('d'), true, 'claude')
    expect(resolvePeer([carolCli, online, member('carol', key('d'), false)], 'carol').pk).toBe(key('d'))
    // A session is addressed by its own key (or a prefix of it).
    expect(resolvePeer([carolCli, online], 'ffff').pk).toBe(online.pk)
  })
})
