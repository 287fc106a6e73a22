import { beforeAll, describe, expect, it } from 'vitest'
import { plain } from '../test/support/arbitrary.js'
import { BoxKeyCache, sealBox } from './box-key-cache.js'
import { encode } from './codec.js'
import { hash, initCrypto } from './crypto.js'
import { concatBytes, toHex } from './encoding.js'
import { decodeEnvelope, encodeEnvelope, type Envelope, type Meta } from './envelope.js'
import { createIdentity, type Identity } from './keys.js'
import {
  openDirect,
  openEnvelope,
  openGroup,
  openSystemEnvelope,
  openTopic,
  sealDirect,
  sealGroup,
  sealPlaintext,
  sealSystemEnvelope,
  sealTopic,
  type OpenResult,
} from './seal.js'
import { signFields } from './signing.js'
import { ulidFactory } from './ulid.js'

const MESH = 'acme'
let alice: Identity, bob: Identity, carol: Identity, eve: Identity, coordinator: Identity
let members: Identity[]
const nextId = ulidFactory(() => 1_700_000_000_000, counterRandom(7))

/** Deterministic bytes, so two seals with the same source produce the same envelope. */
function counterRandom(start: number): (n: number) => Uint8Array {
  let counter = start
  return (n) => Uint8Array.from({ length: n }, () => counter++ & 0xff)
}

function identity(n: number): Identity {
  return createIdentity('session', new Uint8Array(32).fill(n))
}

/** The envelope as the receiver gets it: encoded, carried, decoded. */
function wire(env: Envelope): Envelope {
  return decodeEnvelope(encodeEnvelope(env))
}

function flipLastBit(bytes: Uint8Array): Uint8Array {
  const out = bytes.slice()
  out[out.length - 1]! ^= 1
  return out
}

function body(env: Envelope): Uint8Array {
  if (!(env.body instanceof Uint8Array)) throw new Error('expected a sealed body')
  return env.body
}

function expectOpened(result: OpenResult, payload: unknown): void {
  if (!result.ok) throw new Error(`expected to open, got ${result.status}: ${result.error.message}`)
  expect(plain(result.payload)).toEqual(plain(payload))
  expect(result.e2e).toBe(true)
}

function expectFailure(result: OpenResult, status: 'undecryptable' | 'rejected', code: string): void {
  expect(result.ok).toBe(false)
  expect(result.payload).toBeNull()
  if (result.ok) return
  expect(result.status).toBe(status)
  expect(result.error.code).toBe(code)
}

const undecryptable = (r: OpenResult): void => expectFailure(r, 'undecryptable', 'MESH_ERR_UNDECRYPTABLE')
const mismatch = (r: OpenResult): void => expectFailure(r, 'rejected', 'MESH_ERR_HEADER_MISMATCH')

function dm(meta: Meta = { priority: 'now' }, payload: unknown = { text: 'hi bob', n: 1 }): Envelope {
  return sealDirect({
    mesh: MESH,
    channel: 'dm',
    from: alice,
    to: bob.publicKey,
    clientMessageId: nextId(),
    meta,
    payload,
  })
}

function group(target = '@team', recipients = members): Envelope {
  return sealGroup({
    mesh: MESH,
    from: alice,
    target,
    clientMessageId: nextId(),
    payload: 'hello team',
    recipients: recipients.map((m) => m.publicKey),
    rosterVersion: 12,
  })
}

const topicKeys = [new Uint8Array(32).fill(0xa0), new Uint8Array(32).fill(0xa1)]
function topic(meta: Meta & { keyEpoch: number } = { keyEpoch: 1 }): Envelope {
  const topicKey = topicKeys[meta.keyEpoch]!
  return sealTopic({
    mesh: MESH,
    from: alice,
    target: '#deploys',
    clientMessageId: nextId(),
    meta,
    payload: 'v1.2 shipped',
    topicKey,
  })
}

beforeAll(async () => {
  await initCrypto()
  ;[alice, bob, carol, eve, coordinator] = [1, 2, 3, 4, 5].map(identity) as [
    Identity,
    Identity,
    Identity,
    Identity,
    Identity,
  ]
  members = [alice, bob, carol, identity(6), identity(7)]
})

describe('sealing round trips', () => {
  it('opens a dm, an rpc request and reply, and a stream chunk sealed to the receiver', () => {
    expectOpened(openDirect(wire(dm()), bob), { text: 'hi bob', n: 1 })
    const req = sealDirect({
      mesh: MESH,
      channel: 'rpc',
      from: alice,
      to: bob.publicKey,
      clientMessageId: nextId(),
      meta: { rpc: 'req', timeoutMs: 5000 },
      payload: { method: 'ping', args: [1, 'two'] },
    })
    expectOpened(openEnvelope(wire(req), bob), { method: 'ping', args: [1, 'two'] })
    const res = sealDirect({
      mesh: MESH,
      channel: 'rpc',
      from: bob,
      to: alice.publicKey,
      clientMessageId: nextId(),
      meta: { rpc: 'res', correlationId: req.clientMessageId },
      payload: 'pong',
    })
    expectOpened(openEnvelope(wire(res), alice), 'pong')
    const chunk = new Uint8Array(1000).fill(9)
    const stream = sealDirect({
      mesh: MESH,
      channel: 'stream',
      from: alice,
      to: bob.publicKey,
      clientMessageId: nextId(),
      meta: { streamId: 'upload-1', seq: 0, fin: true },
      payload: chunk,
    })
    expectOpened(openEnvelope(wire(stream), bob), chunk)
  })

  it('opens a plaintext dm with e2e false', () => {
    const env = sealPlaintext({
      mesh: MESH,
      from: alice.publicKey,
      to: bob.publicKey,
      clientMessageId: nextId(),
      text: 'cron done',
    })
    expect(env.meta.e2e).toBe(false)
    const result = openEnvelope(wire(env), bob)
    expect(result).toMatchObject({ ok: true, payload: 'cron done', e2e: false })
  })

  it('opens a group envelope for each of 5 members, the sender included, and for nobody else', () => {
    const env = wire(group())
    expect(Object.keys(env.keys ?? {})).toHaveLength(5)
    for (const member of members) expectOpened(openGroup(env, member), 'hello team')
    undecryptable(openGroup(env, eve))
  })

  it('opens a copy trimmed to one member key box for that member only', () => {
    const env = wire(group())
    const id = toHex(carol.publicKey)
    const trimmed = wire({ ...env, keys: { [id]: env.keys![id]! } })
    expectOpened(openEnvelope(trimmed, carol), 'hello team')
    undecryptable(openEnvelope(trimmed, bob))
  })

  it('opens a broadcast', () => {
    expectOpened(openEnvelope(wire(group('*')), bob), 'hello team')
  })

  it('opens a topic post with the key of its epoch', () => {
    const keyOf = (name: string, epoch: number): Uint8Array | undefined =>
      name === '#deploys' ? topicKeys[epoch] : undefined
    expectOpened(openEnvelope(wire(topic()), bob, { topicKey: keyOf }), 'v1.2 shipped')
    expectOpened(openTopic(wire(topic({ keyEpoch: 0, priority: 'low' })), topicKeys[0]), 'v1.2 shipped')
  })

  it('gives the same bytes for the same random source', () => {
    const input = {
      mesh: MESH,
      channel: 'dm',
      from: alice,
      to: bob.publicKey,
      clientMessageId: nextId(),
      payload: 'x',
    } as const
    const a = encodeEnvelope(sealDirect(input, { random: counterRandom(1) }))
    const b = encodeEnvelope(sealDirect(input, { random: counterRandom(1) }))
    expect(toHex(a)).toBe(toHex(b))
    expect(toHex(a)).not.toBe(toHex(encodeEnvelope(sealDirect(input))))
  })
})

describe('a body that does not open yields null, never garbage', () => {
  it('dm: wrong key, flipped ciphertext bit, truncated nonce', () => {
    const env = wire(dm())
    undecryptable(openDirect(env, carol))
    undecryptable(openDirect({ ...env, body: flipLastBit(body(env)) }, bob))
    undecryptable(openDirect({ ...env, body: body(env).subarray(0, 20) }, bob))
    undecryptable(openDirect({ ...env, body: new Uint8Array() }, bob))
  })

  it('dm: a `from` that is not a valid key', () => {
    const env = wire(dm())
    undecryptable(openDirect({ ...env, from: new Uint8Array(32).fill(0xff) }, bob))
    undecryptable(
      openDirect({ ...env, from: new Uint8Array(32).fill(0xff) }, bob, { cache: new BoxKeyCache(bob) }),
    )
  })

  it('group: wrong key box, flipped body bit, flipped key box bit, truncated nonce', () => {
    const env = wire(group())
    const bobId = toHex(bob.publicKey)
    const eveHoldsBobsBox = { ...env, keys: { ...env.keys, [toHex(eve.publicKey)]: env.keys![bobId]! } }
    undecryptable(openGroup(eveHoldsBobsBox, eve))
    undecryptable(openGroup({ ...env, body: flipLastBit(body(env)) }, bob))
    undecryptable(openGroup({ ...env, keys: { [bobId]: flipLastBit(env.keys![bobId]!) } }, bob))
    undecryptable(openGroup({ ...env, body: body(env).subarray(0, 23) }, bob))
  })

  it('topic: wrong epoch key, flipped ciphertext bit, truncated nonce, no key', () => {
    const env = wire(topic())
    undecryptable(openTopic(env, topicKeys[0]))
    undecryptable(openTopic({ ...env, body: flipLastBit(body(env)) }, topicKeys[1]))
    undecryptable(openTopic({ ...env, body: body(env).subarray(0, 10) }, topicKeys[1]))
    undecryptable(openEnvelope(env, bob, { topicKey: () => undefined }))
  })
})

describe('an outer header that differs from the sealed one is rejected', () => {
  it('dm: target, clientMessageId, meta, channel', () => {
    const env = wire(dm())
    const cases: [Envelope, string][] = [
      [{ ...env, target: carol.publicKey }, 'target'],
      [{ ...env, clientMessageId: nextId() }, 'clientMessageId'],
      [{ ...env, meta: { priority: 'low' } }, 'meta'],
      [{ ...env, meta: { ...env.meta, replyTo: nextId() } }, 'meta'],
      [{ ...env, channel: 'stream', meta: { ...env.meta, streamId: 's', seq: 0 } }, 'channel'],
    ]
    for (const [tampered, field] of cases) {
      const result = openDirect(tampered, bob)
      mismatch(result)
      expect(!result.ok && result.error.details).toEqual({ field })
    }
  })

  it('compares meta as values, not encodings: key order does not matter', () => {
    const env = wire(dm({ priority: 'now', mentions: ['bob'], expiresAt: 1_700_000_000_000 }))
    const reordered: Meta = { expiresAt: 1_700_000_000_000, mentions: ['bob'], priority: 'now' }
    expectOpened(openDirect({ ...env, meta: reordered }, bob), { text: 'hi bob', n: 1 })
  })

  it('dm sealed to me but addressed to another key', () => {
    const cid = nextId()
    const meta = {}
    const sealed = encode(['dm', carol.publicKey, cid, meta, 'hi'])
    const nonce = new Uint8Array(24).fill(3)
    const forged: Envelope = {
      ...wire(dm()),
      target: carol.publicKey,
      clientMessageId: cid,
      meta,
      body: concatBytes(nonce, sealBox(sealed, nonce, bob.publicKey, alice)),
    }
    mismatch(openDirect(forged, bob))
  })

  it('refuses sealed content that is not a 5-item array', () => {
    const nonce = new Uint8Array(24).fill(4)
    for (const content of [encode(['dm', bob.publicKey]), encode('hello'), new Uint8Array([0xc1])]) {
      const forged = {
        ...wire(dm()),
        body: concatBytes(nonce, sealBox(content, nonce, bob.publicKey, alice)),
      }
      expectFailure(openDirect(forged, bob), 'rejected', 'MESH_ERR_HEADER_MISMATCH')
    }
  })

  it('group: target and rosterVersion-independent header fields', () => {
    const env = wire(group())
    mismatch(openGroup({ ...env, target: '*' }, bob))
    mismatch(openGroup({ ...env, meta: { priority: 'now' } }, bob))
    mismatch(openGroup({ ...env, clientMessageId: nextId() }, bob))
  })

  it('topic: outer fields that differ from the signed ones', () => {
    const env = wire(topic())
    const result = openTopic({ ...env, meta: { keyEpoch: 1, priority: 'now' } }, topicKeys[1])
    mismatch(result)
    expect(!result.ok && result.error.details).toEqual({ field: 'meta' })
    mismatch(openTopic({ ...env, target: '#other' }, topicKeys[1]))
  })
})

describe('topic signatures', () => {
  const bad = (r: OpenResult): void => expectFailure(r, 'rejected', 'MESH_ERR_BAD_SIGNATURE')

  function signedFieldsOf(env: Envelope): unknown[] {
    const parts = { nonce: body(env).subarray(0, 24), hash: hash(body(env).subarray(24)) }
    return [
      MESH,
      'topic',
      '#deploys',
      alice.publicKey,
      env.clientMessageId,
      env.meta,
      parts.nonce,
      parts.hash,
    ]
  }

  it('refuses a signature by another key, a flipped signature byte and a missing signature', () => {
    const env = wire(topic())
    const byEve = signFields('envelope', signedFieldsOf(env), eve.secretKey)
    bad(openTopic({ ...env, signed: env.signed!, sig: byEve.sig }, topicKeys[1]))
    bad(openTopic({ ...env, sig: flipLastBit(env.sig!) }, topicKeys[1]))
    const { signed: _signed, sig: _sig, ...unsigned } = env
    bad(openTopic(unsigned, topicKeys[1]))
  })

  it('refuses signed fields that differ from the envelope, each field in turn', () => {
    const env = wire(topic())
    const good = signedFieldsOf(env)
    const variants: unknown[] = [
      'other',
      'group',
      '#other',
      bob.publicKey,
      nextId(),
      { keyEpoch: 0 },
      new Uint8Array(24),
      new Uint8Array(32),
    ]
    variants.forEach((variant, i) => {
      const fields = good.map((f, j) => (j === i ? variant : f))
      const resigned = signFields('envelope', fields, alice.secretKey)
      mismatch(openTopic({ ...env, ...resigned }, topicKeys[1]))
    })
    mismatch(
      openTopic({ ...env, ...signFields('envelope', ['too', 'short'], alice.secretKey) }, topicKeys[1]),
    )
    expectOpened(
      openTopic({ ...env, ...signFields('envelope', good, alice.secretKey) }, topicKeys[1]),
      'v1.2 shipped',
    )
  })
})

describe('system envelopes', () => {
  const event = (by: Identity, mesh = MESH): Envelope =>
    sealSystemEnvelope({
      mesh,
      coordinator: by,
      clientMessageId: nextId(),
      version: 8,
      prevVersion: 7,
      kind: 'member_removed',
      body: { pk: carol.publicKey },
    })

  it('opens an event signed by the pinned coordinator', () => {
    const [mesh, version, prevVersion, kind, eventBody] = openSystemEnvelope(
      wire(event(coordinator)),
      coordinator.publicKey,
    )
    expect([mesh, version, prevVersion, kind]).toEqual([MESH, 8, 7, 'member_removed'])
    expect(plain(eventBody)).toEqual({ pk: new Uint8Array(carol.publicKey) })
    expect(
      openEnvelope(wire(event(coordinator)), bob, { coordinatorPk: coordinator.publicKey }),
    ).toMatchObject({ ok: true, e2e: false })
  })

  it('refuses another signer, a tampered body and another mesh', () => {
    expect(() => openSystemEnvelope(wire(event(eve)), coordinator.publicKey)).toThrow(
      expect.objectContaining({ code: 'MESH_ERR_WRONG_SIGNER' }),
    )
    const env = wire(event(coordinator))
    const tampered = { ...env, body: flipLastBit(body(env)) }
    expect(() => openSystemEnvelope(tampered, coordinator.publicKey)).toThrow(
      expect.objectContaining({ code: 'MESH_ERR_BAD_SIGNATURE' }),
    )
    const forgedFrom = { ...env, from: eve.publicKey }
    expect(() => openSystemEnvelope(forgedFrom, coordinator.publicKey)).toThrow(
      expect.objectContaining({ code: 'MESH_ERR_BAD_SIGNATURE' }),
    )
    const moved = { ...wire(event(coordinator, 'other-mesh')), mesh: MESH }
    expect(() => openSystemEnvelope(moved, coordinator.publicKey)).toThrow(
      expect.objectContaining({ code: 'MESH_ERR_FIELD_MISMATCH' }),
    )
    expectFailure(
      openEnvelope(wire(event(eve)), bob, { coordinatorPk: coordinator.publicKey }),
      'rejected',
      'MESH_ERR_WRONG_SIGNER',
    )
    expectFailure(openEnvelope(env, bob), 'rejected', 'MESH_ERR_WRONG_SIGNER')
  })

  it('carries an event without a body as nil, and the envelope survives the wire', () => {
    const env = sealSystemEnvelope({
      mesh: MESH,
      coordinator,
      clientMessageId: nextId(),
      version: 3,
      prevVersion: 2,
      kind: 'snapshot_requested',
      body: undefined,
    })
    const [, version, prevVersion, kind, eventBody] = openSystemEnvelope(wire(env), coordinator.publicKey)
    expect([version, prevVersion, kind, eventBody]).toEqual([3, 2, 'snapshot_requested', null])
  })

  it('refuses to sign, and refuses to open, an event whose version does not advance', () => {
    const input = { mesh: MESH, coordinator, kind: 'member_removed', body: null }
    expect(() =>
      sealSystemEnvelope({ ...input, clientMessageId: nextId(), version: 7, prevVersion: 7 }),
    ).toThrow(expect.objectContaining({ code: 'MESH_ERR_MALFORMED_FRAME' }))
    // A coordinator bug that signs a backwards event by hand is still caught by every receiver.
    const signed = signFields('system-event', [MESH, 5, 9, 'member_removed', null], coordinator.secretKey)
    const env = { ...wire(event(coordinator)), body: signed.signed, sig: signed.sig }
    expect(() => openSystemEnvelope(env, coordinator.publicKey)).toThrow(
      expect.objectContaining({ code: 'MESH_ERR_MALFORMED_FRAME' }),
    )
  })
})

describe('limits at seal time', () => {
  it('accepts a payload of exactly 60 KiB encoded and refuses one byte more', () => {
    const seal = (size: number): Envelope =>
      sealDirect({
        mesh: MESH,
        channel: 'dm',
        from: alice,
        to: bob.publicKey,
        clientMessageId: nextId(),
        payload: new Uint8Array(size),
      })
    // A bin of this size encodes with a 3-byte header.
    const env = seal(60 * 1024 - 3)
    expect(encodeEnvelope(env).length).toBeLessThanOrEqual(64 * 1024)
    expectOpened(openDirect(wire(env), bob), new Uint8Array(60 * 1024 - 3))
    expect(() => seal(60 * 1024 - 2)).toThrow(
      expect.objectContaining({
        code: 'MESH_ERR_PAYLOAD_TOO_LARGE',
        details: { size: 60 * 1024 + 1, max: 60 * 1024 },
      }),
    )
    expect(() =>
      sealPlaintext({
        mesh: MESH,
        from: alice.publicKey,
        to: bob.publicKey,
        clientMessageId: nextId(),
        text: 'x'.repeat(61440),
      }),
    ).toThrow(expect.objectContaining({ code: 'MESH_ERR_PAYLOAD_TOO_LARGE' }))
  })

  it('refuses a payload no receiver could decode, and an invalid header, before sending', () => {
    const base = {
      mesh: MESH,
      channel: 'dm',
      from: alice,
      to: bob.publicKey,
      clientMessageId: nextId(),
    } as const
    expect(() => sealDirect({ ...base, payload: { at: new Date() } })).toThrow(
      expect.objectContaining({ code: 'MESH_ERR_INVALID_ENVELOPE', details: { path: 'payload' } }),
    )
    expect(() => sealDirect({ ...base, payload: 1, meta: { priority: 'urgent' as 'now' } })).toThrow(
      expect.objectContaining({
        code: 'MESH_ERR_INVALID_ENVELOPE',
        details: expect.objectContaining({ path: 'meta.priority' }) as unknown,
      }),
    )
    expect(() => sealDirect({ ...base, clientMessageId: 'nope', payload: 1 })).toThrow(
      expect.objectContaining({ code: 'MESH_ERR_INVALID_ENVELOPE' }),
    )
  })
})

describe('BoxKeyCache', () => {
  it('gives the same bytes as the one-shot path for the same nonces, and opens both', () => {
    const input = {
      mesh: MESH,
      channel: 'dm',
      from: alice,
      to: bob.publicKey,
      clientMessageId: nextId(),
      payload: 'hot',
    } as const
    const aliceCache = new BoxKeyCache(alice)
    const oneShot = sealDirect(input, { random: counterRandom(50) })
    const cached = sealDirect(input, { random: counterRandom(50), cache: aliceCache })
    expect(toHex(encodeEnvelope(cached))).toBe(toHex(encodeEnvelope(oneShot)))
    const bobCache = new BoxKeyCache(bob)
    expectOpened(openDirect(wire(oneShot), bob, { cache: bobCache }), 'hot')
    expectOpened(openDirect(wire(cached), bob), 'hot')

    const groupInput = {
      mesh: MESH,
      from: alice,
      target: '@team',
      clientMessageId: nextId(),
      payload: 'g',
      recipients: members.map((m) => m.publicKey),
      rosterVersion: 1,
    }
    const a = sealGroup(groupInput, { random: counterRandom(9) })
    const b = sealGroup(groupInput, { random: counterRandom(9), cache: aliceCache })
    expect(toHex(encodeEnvelope(a))).toBe(toHex(encodeEnvelope(b)))
    expectOpened(openGroup(wire(b), bob, { cache: bobCache }), 'g')
  })

  it('evicts the least recently used peer past its capacity', () => {
    const cache = new BoxKeyCache(alice, { capacity: 2 })
    cache.sharedKey(bob.publicKey)
    cache.sharedKey(carol.publicKey)
    cache.sharedKey(bob.publicKey) // bob is now the most recently used
    cache.sharedKey(eve.publicKey)
    expect(cache.size).toBe(2)
    expect(cache.has(carol.publicKey)).toBe(false)
    expect(cache.has(bob.publicKey)).toBe(true)
    expect(cache.has(eve.publicKey)).toBe(true)
    expect(cache.delete(bob.publicKey)).toBe(true)
    cache.clear()
    expect(cache.size).toBe(0)
    expect(() => new BoxKeyCache(alice, { capacity: 0 })).toThrow(RangeError)
  })

  it('refuses to be used for another identity', () => {
    const input = {
      mesh: MESH,
      channel: 'dm',
      from: alice,
      to: bob.publicKey,
      clientMessageId: nextId(),
      payload: 1,
    } as const
    expect(() => sealDirect(input, { cache: new BoxKeyCache(bob) })).toThrow(TypeError)
    expect(() => openDirect(wire(sealDirect(input)), bob, { cache: new BoxKeyCache(alice) })).toThrow(
      TypeError,
    )
  })
})
