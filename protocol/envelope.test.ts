import { decode as otherDecode } from '@msgpack/msgpack'
import { beforeAll, describe, expect, it } from 'vitest'
import { encode } from './codec.js'
import { initCrypto } from './crypto.js'
import { toHex } from './encoding.js'
import { decodeEnvelope, encodeEnvelope, validateEnvelope, type Envelope } from './envelope.js'
import { MeshError } from './errors.js'
import { createIdentity, type Identity } from './keys.js'
import { sealDirect, sealGroup, sealPlaintext, sealSystemEnvelope, sealTopic } from './seal.js'
import { ulidFactory } from './ulid.js'

const MESH = 'acme'
const nextId = ulidFactory(
  () => 1_700_000_000_000,
  (n) => new Uint8Array(n).fill(1),
)
let alice: Identity, bob: Identity
const samples: Record<string, Envelope> = {}

beforeAll(async () => {
  await initCrypto()
  alice = createIdentity('session', new Uint8Array(32).fill(1))
  bob = createIdentity('session', new Uint8Array(32).fill(2))
  const direct = { mesh: MESH, from: alice, to: bob.publicKey, payload: 'p' }
  samples.dm = sealDirect({
    ...direct,
    channel: 'dm',
    clientMessageId: nextId(),
    meta: { mentions: ['bob'] },
  })
  samples.rpc = sealDirect({ ...direct, channel: 'rpc', clientMessageId: nextId(), meta: { rpc: 'req' } })
  samples.stream = sealDirect({
    ...direct,
    channel: 'stream',
    clientMessageId: nextId(),
    meta: { streamId: 's1', seq: 0 },
  })
  samples.plain = sealPlaintext({
    mesh: MESH,
    from: alice.publicKey,
    to: bob.publicKey,
    clientMessageId: nextId(),
    text: 'hi',
  })
  samples.group = sealGroup({
    mesh: MESH,
    from: alice,
    target: '@team',
    clientMessageId: nextId(),
    payload: 'p',
    recipients: [alice.publicKey, bob.publicKey],
    rosterVersion: 3,
  })
  samples.topic = sealTopic({
    mesh: MESH,
    from: alice,
    target: '#news',
    clientMessageId: nextId(),
    meta: { keyEpoch: 2 },
    payload: 'p',
    topicKey: new Uint8Array(32),
  })
  samples.system = sealSystemEnvelope({
    mesh: MESH,
    coordinator: alice,
    clientMessageId: nextId(),
    version: 2,
    prevVersion: 1,
    kind: 'roster',
    body: null,
  })
})

function expectInvalid(value: unknown, path: string): void {
  for (const run of [() => validateEnvelope(value), () => decodeEnvelope(encode(value))]) {
    try {
      run()
    } catch (err) {
      expect(err).toBeInstanceOf(MeshError)
      expect((err as MeshError).code).toBe('MESH_ERR_INVALID_ENVELOPE')
      expect((err as MeshError).details?.path).toBe(path)
      continue
    }
    throw new Error(`accepted an envelope invalid at ${path}`)
  }
}

function code(run: () => unknown): string | undefined {
  try {
    run()
  } catch (err) {
    return err instanceof MeshError ? err.code : String(err)
  }
  return undefined
}

describe('envelope codec', () => {
  it('round-trips every channel: decodeEnvelope(encodeEnvelope(e)) equals e', () => {
    for (const env of Object.values(samples)) expect(decodeEnvelope(encodeEnvelope(env))).toEqual(env)
  })

  it('writes a plain msgpack map another library reads', () => {
    const other = otherDecode(encodeEnvelope(samples.group!)) as Record<string, unknown>
    expect(Object.keys(other)).toEqual([
      'v',
      'mesh',
      'channel',
      'from',
      'target',
      'clientMessageId',
      'meta',
      'body',
      'keys',
      'rosterVersion',
    ])
    expect(other).toMatchObject({ v: 2, mesh: MESH, channel: 'group', target: '@team', rosterVersion: 3 })
  })

  it('drops unknown fields, outer and in meta', () => {
    const env = decodeEnvelope(
      encode({ ...samples.dm, future: 1, meta: { ...samples.dm!.meta, hue: 'blue' } }),
    )
    expect(env).toEqual(samples.dm)
  })

  it('returns envelopes that own their bytes', () => {
    const bytes = encodeEnvelope(samples.dm!)
    const env = decodeEnvelope(bytes)
    bytes.fill(0)
    expect(env).toEqual(samples.dm)
  })

  it('refuses bytes that are not msgpack, and msgpack that is not an envelope', () => {
    expect(code(() => decodeEnvelope(new Uint8Array([0xc1])))).toBe('MESH_ERR_MALFORMED_FRAME')
    expect(code(() => decodeEnvelope(encodeEnvelope(samples.dm!).subarray(0, 40)))).toBe(
      'MESH_ERR_MALFORMED_FRAME',
    )
    expect(code(() => decodeEnvelope(encode('envelope')))).toBe('MESH_ERR_INVALID_ENVELOPE')
  })

  it('refuses an envelope over 64 KiB on encode and on decode', () => {
    const big = { ...samples.dm!, body: new Uint8Array(64 * 1024) }
    expect(code(() => encodeEnvelope(big))).toBe('MESH_ERR_ENVELOPE_TOO_LARGE')
    expect(code(() => decodeEnvelope(encode(big)))).toBe('MESH_ERR_ENVELOPE_TOO_LARGE')
    expect(code(() => decodeEnvelope(new Uint8Array(64 * 1024 + 1)))).toBe('MESH_ERR_ENVELOPE_TOO_LARGE')
    const fits = { ...samples.dm!, body: new Uint8Array(64 * 1024 - 200) }
    expect(decodeEnvelope(encodeEnvelope(fits))).toEqual(fits)
  })
})

describe('channel rules', () => {
  const without = (env: Envelope, field: keyof Envelope): Record<string, unknown> => {
    const copy: Record<string, unknown> = { ...env }
    delete copy[field]
    return copy
  }

  it('accepts every sample', () => {
    for (const env of Object.values(samples)) expect(validateEnvelope(env)).toEqual(env)
  })

  it('dm, rpc and stream: a key target, no group or topic fields, their required meta', () => {
    const dm = samples.dm!
    expectInvalid({ ...dm, target: '*' }, 'target')
    expectInvalid({ ...dm, target: new Uint8Array(31) }, 'target')
    expectInvalid({ ...dm, keys: samples.group!.keys }, 'keys')
    expectInvalid({ ...dm, rosterVersion: 1 }, 'rosterVersion')
    expectInvalid({ ...dm, signed: new Uint8Array(8) }, 'signed')
    expectInvalid({ ...dm, sig: new Uint8Array(64) }, 'sig')
    expectInvalid({ ...samples.rpc!, meta: {} }, 'meta.rpc')
    expectInvalid({ ...samples.rpc!, meta: { rpc: 'res' } }, 'meta.correlationId')
    expectInvalid({ ...samples.rpc!, meta: { rpc: 'err', correlationId: 'x' } }, 'meta.correlationId')
    expectInvalid({ ...samples.stream!, meta: { seq: 0 } }, 'meta.streamId')
    expectInvalid({ ...samples.stream!, meta: { streamId: 's1' } }, 'meta.seq')
    expectInvalid({ ...samples.stream!, meta: { streamId: '', seq: 0 } }, 'meta.streamId')
    expectInvalid({ ...samples.stream!, meta: { streamId: 's', seq: 0, fin: false } }, 'meta.fin')
  })

  it('plaintext bodies: only on dm, only with meta.e2e false', () => {
    const plain = samples.plain!
    expectInvalid({ ...plain, meta: {} }, 'body')
    expectInvalid({ ...plain, channel: 'rpc', meta: { rpc: 'req', e2e: false } }, 'body')
    expectInvalid({ ...samples.dm!, meta: { e2e: false } }, 'meta.e2e')
    expectInvalid({ ...samples.group!, meta: { e2e: false } }, 'meta.e2e')
    expectInvalid({ ...plain, meta: { e2e: true } }, 'meta.e2e')
  })

  it('group: * or @name, a non-empty key map of 72-byte boxes, a roster version', () => {
    const group = samples.group!
    const id = toHex(bob.publicKey)
    expectInvalid({ ...group, target: 'team' }, 'target')
    expectInvalid({ ...group, target: '@bad name' }, 'target')
    expectInvalid({ ...group, target: bob.publicKey }, 'target')
    expectInvalid(without(group, 'keys'), 'keys')
    expectInvalid({ ...group, keys: {} }, 'keys')
    expectInvalid({ ...group, keys: { [id.toUpperCase()]: new Uint8Array(72) } }, `keys.${id.toUpperCase()}`)
    expectInvalid({ ...group, keys: { [id]: new Uint8Array(71) } }, `keys.${id}`)
    expectInvalid(without(group, 'rosterVersion'), 'rosterVersion')
    expectInvalid({ ...group, sig: new Uint8Array(64) }, 'sig')
    const tooMany = Object.fromEntries(
      Array.from({ length: 1025 }, (_, i) => [i.toString(16).padStart(64, '0'), new Uint8Array(72)]),
    )
    // 1025 key boxes never fit in 64 KiB, so the count is checked on the object only.
    expect(() => validateEnvelope({ ...group, keys: tooMany })).toThrow(
      expect.objectContaining({
        code: 'MESH_ERR_INVALID_ENVELOPE',
        details: expect.objectContaining({ path: 'keys' }) as unknown,
      }),
    )
  })

  it('topic: #name, meta.keyEpoch, signed and sig', () => {
    const topic = samples.topic!
    expectInvalid({ ...topic, target: '@news' }, 'target')
    expectInvalid({ ...topic, meta: {} }, 'meta.keyEpoch')
    expectInvalid(without(topic, 'signed'), 'signed')
    expectInvalid(without(topic, 'sig'), 'sig')
    expectInvalid({ ...topic, sig: new Uint8Array(63) }, 'sig')
    expectInvalid({ ...topic, keys: samples.group!.keys }, 'keys')
  })

  it('system: target *, sig, no signed', () => {
    const system = samples.system!
    expectInvalid({ ...system, target: '#news' }, 'target')
    expectInvalid(without(system, 'sig'), 'sig')
    expectInvalid({ ...system, signed: new Uint8Array(4) }, 'signed')
  })

  it('every channel: version, ids and meta limits', () => {
    const dm = samples.dm!
    expectInvalid({ ...dm, v: 1 }, 'v')
    expectInvalid({ ...dm, mesh: 'Acme!' }, 'mesh')
    expectInvalid({ ...dm, channel: 'email' }, 'channel')
    expectInvalid({ ...dm, from: new Uint8Array(33) }, 'from')
    expectInvalid({ ...dm, clientMessageId: 'not-a-ulid' }, 'clientMessageId')
    expectInvalid({ ...dm, clientMessageId: nextId().toLowerCase() }, 'clientMessageId')
    expectInvalid({ ...dm, meta: { replyTo: 'x' } }, 'meta.replyTo')
    expectInvalid({ ...dm, meta: { priority: 'urgent' } }, 'meta.priority')
    expectInvalid({ ...dm, meta: { mentions: Array.from({ length: 65 }, () => 'a') } }, 'meta.mentions')
    expectInvalid({ ...dm, meta: { mentions: ['x'.repeat(129)] } }, 'meta.mentions[0]')
    expectInvalid({ ...dm, meta: { expiresAt: -1 } }, 'meta.expiresAt')
    expectInvalid({ ...dm, meta: 'urgent' }, 'meta')
  })
})
