/**
 * Golden vectors (protocol/vectors/). The committed files must equal what `build.ts` builds, and every
 * vector is checked from outside our own stack: its msgpack bytes are decoded with a second library
 * (`@msgpack/msgpack`) and its signatures verified with Node's own Ed25519, so neither msgpackr nor
 * libsodium vouches for itself. Only BLAKE2b-256, which Node's `crypto` lacks, comes from libsodium.
 */
import { decode as otherDecode, encode as otherEncode } from '@msgpack/msgpack'
import { createPublicKey, verify as nodeVerify } from 'node:crypto'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { beforeAll, describe, expect, it } from 'vitest'
import {
  boxOpen,
  boxPublicKey,
  concatBytes,
  createIdentity,
  decodeEnvelope,
  decodeFrame,
  encodeFrame,
  FRAME_SCHEMAS,
  hash,
  initCrypto,
  obj,
  parse,
  openEnvelope,
  PURPOSES,
  requestFingerprint,
  Roster,
  secretboxOpen,
  toHex,
  utf8,
  verifyAdminRequest,
  verifyHello,
  verifyInvite,
  verifyP2pSignature,
  verifyServiceAttestation,
  verifySessionAttestation,
  verifySystemEvent,
  type Channel,
  type HelloFields,
  type Purpose,
} from './index.js'
import {
  buildVectors,
  fromJson,
  hexBytes,
  NOW,
  serializeVector,
  toJson,
  VECTOR_NAMES,
  VECTORS_DIR,
  type EnvelopeVector,
  type FingerprintVector,
  type FrameVector,
  type Json,
  type SignatureVector,
  type Vector,
  type VectorName,
} from './vectors/build.js'

beforeAll(() => initCrypto())

const REGENERATE = 'node --import tsx protocol/vectors/build.ts --write'
const SIGNATURES = VECTOR_NAMES.filter((n) => n.startsWith('signature-'))
const ENVELOPES = VECTOR_NAMES.filter((n) => n.startsWith('envelope-'))

// ── independent helpers: Node's Ed25519, @msgpack/msgpack ────────────────────

/** An Ed25519 public key for Node: the SPKI DER header, then the raw 32 bytes. */
const SPKI_ED25519_PREFIX = hexBytes('302a300506032b6570032100')

/** Node's own Ed25519 check of `sig` over `"agentmesh/v1/<purpose>\0" ‖ signed`. */
function ed25519Verifies(
  purpose: string,
  signed: Uint8Array,
  sig: Uint8Array,
  publicKey: Uint8Array,
): boolean {
  const key = createPublicKey({
    key: Buffer.from(concatBytes(SPKI_ED25519_PREFIX, publicKey)),
    format: 'der',
    type: 'spki',
  })
  const message = concatBytes(new TextEncoder().encode(`agentmesh/v1/${purpose}\0`), signed)
  return nodeVerify(null, message, key, sig)
}

/** Decodes with the second msgpack library, in the vectors' JSON form (bins as `{$bin}`). */
function decodeOther(bytes: Uint8Array | string): Json {
  return toJson(otherDecode(typeof bytes === 'string' ? hexBytes(bytes) : bytes))
}

// ── reading vectors ──────────────────────────────────────────────────────────

function fileOf(name: string): string {
  return `${VECTORS_DIR}${name}.json`
}

/** The committed vector (what the checks below run on; test 1 ties it to the builder). */
function load(name: VectorName): Vector {
  const file = fileOf(name)
  if (!existsSync(file)) throw new Error(`missing vector ${name}.json: run ${REGENERATE}`)
  return JSON.parse(readFileSync(file, 'utf8')) as Vector
}

function loadKind<K extends Vector['kind']>(name: VectorName, kind: K): Extract<Vector, { kind: K }> {
  const v = load(name)
  if (v.kind !== kind) throw new Error(`${name} is a ${v.kind} vector, not a ${kind} one`)
  return v as Extract<Vector, { kind: K }>
}

type JsonMap = { [key: string]: Json }

function map(j: Json | undefined, what: string): JsonMap {
  if (j === undefined || j === null || typeof j !== 'object' || Array.isArray(j)) {
    throw new Error(`${what} is not a map`)
  }
  return j
}

function list(j: Json | undefined, what: string): Json[] {
  if (!Array.isArray(j)) throw new Error(`${what} is not an array`)
  return j
}

function bytesOf(j: Json | undefined, what: string): Uint8Array {
  const m = map(j, what)
  if (Object.keys(m).length !== 1 || typeof m.$bin !== 'string') throw new Error(`${what} is not {$bin}`)
  return hexBytes(m.$bin)
}

function num(j: Json | undefined, what: string): number {
  if (typeof j !== 'number') throw new Error(`${what} is not a number`)
  return j
}

function text(j: Json | undefined, what: string): string {
  if (typeof j !== 'string') throw new Error(`${what} is not a string`)
  return j
}

/** A byte string in the JSON form. */
function bin(bytes: Uint8Array | string): Json {
  return { $bin: typeof bytes === 'string' ? bytes : toHex(bytes) }
}

function field(m: JsonMap, key: string): Json {
  if (!Object.hasOwn(m, key)) throw new Error(`missing field ${key}`)
  return m[key]!
}

// ── 1. the committed files are what the builder makes ────────────────────────

describe('committed vectors', () => {
  let built: Record<VectorName, Vector>
  beforeAll(() => {
    built = buildVectors()
  })

  it('are exactly the built set: none missing, none stray', () => {
    const files = readdirSync(VECTORS_DIR)
      .filter((f) => f.endsWith('.json'))
      .sort()
    expect(files).toEqual(VECTOR_NAMES.map((n) => `${n}.json`).sort())
  })

  it('build the same bytes every time', () => {
    const again = buildVectors()
    for (const name of VECTOR_NAMES) expect(serializeVector(again[name])).toBe(serializeVector(built[name]))
  })

  it.each(VECTOR_NAMES)(
    `%s.json matches the builder byte for byte (else: a wire change, see README)`,
    (name) => {
      const file = fileOf(name)
      expect(existsSync(file), `missing ${name}.json: run ${REGENERATE}`).toBe(true)
      const committed = readFileSync(file, 'utf8')
      // Field by field first, so a failure names the hex string that moved; then the exact text.
      expect(JSON.parse(committed)).toEqual(built[name])
      expect(committed).toBe(serializeVector(built[name]))
    },
  )

  it('cover every signature purpose and every channel', () => {
    const purposes = SIGNATURES.map((n) => loadKind(n, 'signature').purpose)
    expect([...purposes].sort()).toEqual([...PURPOSES].sort())
    const channels = ENVELOPES.map((n) => loadKind(n, 'envelope').channel)
    expect(new Set(channels)).toEqual(new Set<Channel>(['dm', 'group', 'topic', 'rpc', 'stream', 'system']))
    expect(ENVELOPES).toContain('envelope-dm-plaintext')
  })
})

// ── 2. signatures, checked with another msgpack library and Node's Ed25519 ───

/** Each purpose's signed array, stated from the vector's inputs in PROTOCOL.md's order. */
const EXPECTED_FIELDS: Record<Purpose, (i: JsonMap, v: SignatureVector) => Json[]> = {
  hello: (i, v) => {
    const att = map(i.attestation, 'attestation')
    const attHash = hash(bytesOf(att.signed, 'attestation.signed'), bytesOf(att.sig, 'attestation.sig'))
    const capabilities = hexBytes(v.outputs!.capabilities!)
    // The capabilities travel as msgpack bytes beside the array and are bound to it by hash.
    expect(decodeOther(capabilities)).toEqual(i.capabilities)
    const id = (k: string) => field(i, k)
    return [
      id('mesh'),
      bin(v.signerPublicKey),
      id('role'),
      id('challengeNonce'),
      bin(attHash),
      bin(hash(capabilities)),
      id('sessionId'),
      id('instanceId'),
    ]
  },
  'session-attestation': (i, v) => [
    field(i, 'mesh'),
    bin(v.signerPublicKey),
    field(i, 'sessionPk'),
    field(i, 'sessionId'),
    num(i.now, 'now') + num(i.ttlMs, 'ttlMs'),
  ],
  'service-attestation': (i, v) => [
    field(i, 'mesh'),
    bin(v.signerPublicKey),
    field(i, 'servicePk'),
    field(i, 'serviceId'),
    field(i, 'type'),
    field(i, 'scopes'),
    num(i.now, 'now') + num(i.ttlMs, 'ttlMs'),
  ],
  roster: (i) =>
    ['mesh', 'seq', 'action', 'subjectPk', 'role', 'displayName', 'issuedAt'].map((k) => field(i, k)),
  invite: (i) =>
    ['mesh', 'inviteId', 'coordinatorUrl', 'coordinatorPk', 'ownerPk', 'role', 'expiresAt', 'maxUses'].map(
      (k) => field(i, k),
    ),
  join: (i, v) => [field(i, 'inviteId'), bin(v.signerPublicKey)],
  'admin-request': (i, v) => {
    const args = hexBytes(v.outputs!.args!)
    expect(decodeOther(args)).toEqual(i.args)
    return [field(i, 'mesh'), field(i, 'method'), bin(hash(args)), field(i, 'challengeNonce')]
  },
  'system-event': (i) => ['mesh', 'version', 'prevVersion', 'kind', 'body'].map((k) => field(i, k)),
  'p2p-offer': (i, v) => p2pFields(i, v),
  'p2p-answer': (i, v) => p2pFields(i, v),
  envelope: (i, v) => [
    field(i, 'mesh'),
    field(i, 'channel'),
    field(i, 'target'),
    bin(v.signerPublicKey),
    field(i, 'clientMessageId'),
    field(i, 'meta'),
    field(i, 'nonce'),
    bin(hash(bytesOf(i.ciphertext, 'ciphertext'))),
  ],
}

function p2pFields(i: JsonMap, v: SignatureVector): Json[] {
  // The signed fingerprints are the SDP's own.
  for (const f of list(i.dtlsFingerprints, 'dtlsFingerprints')) {
    const fp = map(f, 'fingerprint')
    expect(text(i.sdp, 'sdp')).toContain(
      `a=fingerprint:${text(fp.alg, 'alg')} ${text(fp.value, 'value')}\r\n`,
    )
  }
  return [
    field(i, 'mesh'),
    bin(v.signerPublicKey),
    field(i, 'to'),
    field(i, 'sigId'),
    field(i, 'role'),
    field(i, 'dtlsFingerprints'),
    num(i.now, 'now') + num(i.ttlMs, 'ttlMs'),
  ]
}

/** Each record also passes the protocol module that verifies it. */
const OWN_VERIFIER: Record<Purpose, (v: SignatureVector) => void> = {
  hello: (v) => {
    const i = v.inputs
    const att = map(i.attestation, 'attestation')
    const body: HelloFields = {
      mesh: text(i.mesh, 'mesh'),
      pk: hexBytes(v.signerPublicKey),
      role: 'session',
      sessionId: text(i.sessionId, 'sessionId'),
      instanceId: text(i.instanceId, 'instanceId'),
      attestation: { signed: bytesOf(att.signed, 'signed'), sig: bytesOf(att.sig, 'sig') },
      capabilities: hexBytes(v.outputs!.capabilities!),
      signed: hexBytes(v.signed),
      sig: hexBytes(v.sig),
    }
    const verified = verifyHello(body, { challengeNonce: bytesOf(i.challengeNonce, 'nonce'), now: NOW })
    expect(toHex(verified.memberPk)).toBe(
      loadKind('signature-session-attestation', 'signature').signerPublicKey,
    )
  },
  'session-attestation': (v) => {
    const f = verifySessionAttestation(record(v), {
      mesh: text(v.inputs.mesh, 'mesh'),
      memberPk: hexBytes(v.signerPublicKey),
      now: NOW,
    })
    expect(f.sessionId).toBe(v.inputs.sessionId)
  },
  'service-attestation': (v) => {
    const f = verifyServiceAttestation(record(v), {
      mesh: text(v.inputs.mesh, 'mesh'),
      memberPk: hexBytes(v.signerPublicKey),
      now: NOW,
    })
    expect(f.scopes).toEqual(v.inputs.scopes)
  },
  roster: (v) => {
    const roster = new Roster(text(v.inputs.mesh, 'mesh'), hexBytes(v.signerPublicKey))
    const f = roster.applyRecord(signerRecord(v))
    expect(roster.roleOf(f.subjectPk)).toBe(v.inputs.role)
  },
  invite: (v) => {
    expect(verifyInvite(signerRecord(v), NOW).maxUses).toBe(v.inputs.maxUses)
  },
  join: (v) => {
    const invite = loadKind('signature-invite', 'signature')
    const roster = new Roster(text(invite.inputs.mesh, 'mesh'), bytesOf(invite.inputs.ownerPk, 'ownerPk'))
    const joined = roster.applyJoin(signerRecord(invite), signerRecord(v), NOW)
    expect(toHex(joined.memberPk)).toBe(v.signerPublicKey)
  },
  'admin-request': (v) => {
    const mesh = text(v.inputs.mesh, 'mesh')
    const req = {
      mesh,
      method: text(v.inputs.method, 'method'),
      args: hexBytes(v.outputs!.args!),
      ...signerRecord(v),
    }
    const verified = verifyAdminRequest(req, {
      challengeNonce: bytesOf(v.inputs.challengeNonce, 'nonce'),
      mesh,
      roleOf: () => 'owner',
      allowed: ['owner', 'admin'],
    })
    expect(toJson(verified.args)).toEqual(v.inputs.args)
  },
  'system-event': (v) => {
    const f = verifySystemEvent(record(v), {
      coordinatorPk: hexBytes(v.signerPublicKey),
      mesh: text(v.inputs.mesh, 'mesh'),
    })
    expect(toJson(f.body)).toEqual(v.inputs.body)
  },
  'p2p-offer': (v) => verifyP2p(v),
  'p2p-answer': (v) => verifyP2p(v),
  // The topic post's signature is checked by openEnvelope on envelope-topic, below.
  envelope: () => {},
}

function verifyP2p(v: SignatureVector): void {
  const i = v.inputs
  const f = verifyP2pSignature(record(v), {
    role: i.role === 'offer' ? 'offer' : 'answer',
    mesh: text(i.mesh, 'mesh'),
    from: hexBytes(v.signerPublicKey),
    to: bytesOf(i.to, 'to'),
    sigId: text(i.sigId, 'sigId'),
    sdp: text(i.sdp, 'sdp'),
    now: NOW,
  })
  expect(f.role).toBe(i.role)
}

function record(v: SignatureVector): { signed: Uint8Array; sig: Uint8Array } {
  return { signed: hexBytes(v.signed), sig: hexBytes(v.sig) }
}

function signerRecord(v: SignatureVector): { signed: Uint8Array; sig: Uint8Array; signer: Uint8Array } {
  return { ...record(v), signer: hexBytes(v.signerPublicKey) }
}

describe.each(SIGNATURES)('%s', (name) => {
  let v: SignatureVector
  beforeAll(() => {
    v = loadKind(name, 'signature')
  })

  it('verifies with Node Ed25519 over the purpose prefix and the carried bytes', () => {
    const { signed, sig } = record(v)
    const pk = hexBytes(v.signerPublicKey)
    expect(ed25519Verifies(v.purpose, signed, sig, pk)).toBe(true)
    // Domain separation: the same bytes and signature are worthless under any other purpose.
    for (const other of PURPOSES.filter((p) => p !== v.purpose)) {
      expect(ed25519Verifies(other, signed, sig, pk), other).toBe(false)
    }
    // The signer key is the one its seed gives.
    expect(toHex(createIdentity('member', hexBytes(v.signerSeed)).publicKey)).toBe(v.signerPublicKey)
  })

  it('decodes with @msgpack/msgpack to the fixed-order array of its inputs', () => {
    const decoded = decodeOther(v.signed)
    const expected = EXPECTED_FIELDS[v.purpose](v.inputs, v)
    expect(list(decoded, 'signed')).toHaveLength(expected.length)
    expect(decoded).toEqual(expected)
    expect(v.fields).toEqual(expected)
  })

  it('needs no re-encoding: the signature holds over the carried bytes whatever another encoder writes', () => {
    // Verifiers never re-encode. Another library may encode the same value differently (@msgpack/msgpack
    // writes millisecond times as uint64 where msgpackr wrote float64), so re-encoded bytes are not
    // required to equal the signed ones; they only have to decode to the same value.
    const signed = hexBytes(v.signed)
    const reencoded = otherEncode(otherDecode(signed))
    expect(decodeOther(reencoded)).toEqual(decodeOther(signed))
    expect(ed25519Verifies(v.purpose, signed, hexBytes(v.sig), hexBytes(v.signerPublicKey))).toBe(true)
  })

  it('passes its own protocol verifier', () => {
    OWN_VERIFIER[v.purpose](v)
  })
})

// ── 2b. envelopes ────────────────────────────────────────────────────────────

/** What the outer header must say, from the inputs. */
function expectedHeader(v: EnvelopeVector): { target: Json; meta: Json; keys: string[] } {
  const i = v.inputs
  const base = ['v', 'mesh', 'channel', 'from', 'target', 'clientMessageId', 'meta', 'body']
  switch (v.channel) {
    case 'dm':
      if (i.text !== undefined) return { target: field(i, 'to'), meta: { e2e: false }, keys: base }
      return { target: field(i, 'target'), meta: field(i, 'meta'), keys: base }
    case 'rpc':
    case 'stream':
      return { target: field(i, 'target'), meta: field(i, 'meta'), keys: base }
    case 'group':
      return { target: field(i, 'target'), meta: field(i, 'meta'), keys: [...base, 'keys', 'rosterVersion'] }
    case 'topic':
      return { target: field(i, 'target'), meta: field(i, 'meta'), keys: [...base, 'signed', 'sig'] }
    case 'system':
      return { target: '*', meta: field(i, 'meta'), keys: [...base, 'sig'] }
  }
}

function split(body: Uint8Array): { nonce: Uint8Array; ciphertext: Uint8Array } {
  return { nonce: body.subarray(0, 24), ciphertext: body.subarray(24) }
}

describe.each(ENVELOPES)('%s', (name) => {
  let v: EnvelopeVector
  beforeAll(() => {
    v = loadKind(name, 'envelope')
  })

  it('decodes with @msgpack/msgpack to the header of its inputs', () => {
    const env = map(decodeOther(v.bytes), 'envelope')
    const header = expectedHeader(v)
    expect(Object.keys(env)).toEqual(header.keys)
    expect(env.v).toBe(2)
    expect(env.mesh).toBe(v.inputs.mesh)
    expect(env.channel).toBe(v.channel)
    expect(env.from).toEqual(bin(v.senderPublicKey))
    expect(env.target).toEqual(header.target)
    expect(env.clientMessageId).toBe(v.inputs.clientMessageId)
    expect(env.meta).toEqual(header.meta)
  })

  it('carries the body its channel prescribes', () => {
    const env = map(decodeOther(v.bytes), 'envelope')
    const random = v.random.map(hexBytes)
    const sealedLength = v.sealedContent === null ? 0 : v.sealedContent.length / 2
    switch (v.channel) {
      case 'dm':
      case 'rpc':
      case 'stream': {
        if (v.sealedContent === null) {
          expect(env.body).toEqual({ plain: v.inputs.text })
          expect(random).toHaveLength(0)
          break
        }
        // nonce ‖ crypto_box(sealed content): the nonce is the one draw.
        const body = bytesOf(env.body, 'body')
        expect(random).toHaveLength(1)
        expect(toHex(split(body).nonce)).toBe(v.random[0])
        expect(body.length).toBe(24 + 16 + sealedLength)
        break
      }
      case 'group': {
        // Draws: content key, body nonce, then one key-box nonce per recipient in the given order.
        const recipients = list(v.inputs.recipients, 'recipients').map((r) => toHex(bytesOf(r, 'recipient')))
        expect(random).toHaveLength(2 + recipients.length)
        const body = bytesOf(env.body, 'body')
        expect(toHex(split(body).nonce)).toBe(v.random[1])
        expect(body.length).toBe(24 + 16 + sealedLength)
        const keys = map(env.keys, 'keys')
        expect(Object.keys(keys)).toEqual(recipients)
        recipients.forEach((pk, k) => {
          const keyBox = bytesOf(keys[pk], `keys.${pk}`)
          expect(keyBox.length).toBe(24 + 16 + 32)
          expect(toHex(split(keyBox).nonce)).toBe(v.random[2 + k])
        })
        expect(env.rosterVersion).toBe(v.inputs.rosterVersion)
        break
      }
      case 'topic': {
        const body = bytesOf(env.body, 'body')
        expect(toHex(split(body).nonce)).toBe(v.random[0])
        expect(body.length).toBe(24 + 16 + sealedLength)
        // The post's signature (signature-envelope), checked by Node over the envelope's own bytes.
        const signed = bytesOf(env.signed, 'signed')
        expect(
          ed25519Verifies('envelope', signed, bytesOf(env.sig, 'sig'), hexBytes(v.senderPublicKey)),
        ).toBe(true)
        const { nonce, ciphertext } = split(body)
        expect(decodeOther(signed)).toEqual([
          v.inputs.mesh,
          'topic',
          v.inputs.target,
          bin(v.senderPublicKey),
          v.inputs.clientMessageId,
          v.inputs.meta,
          bin(nonce),
          bin(hash(ciphertext)),
        ])
        const sigVector = loadKind('signature-envelope', 'signature')
        expect(toHex(signed)).toBe(sigVector.signed)
        expect(toHex(bytesOf(env.sig, 'sig'))).toBe(sigVector.sig)
        break
      }
      case 'system': {
        // body = the coordinator's system-event signed bytes, sig = its signature over them.
        const body = bytesOf(env.body, 'body')
        expect(
          ed25519Verifies('system-event', body, bytesOf(env.sig, 'sig'), hexBytes(v.senderPublicKey)),
        ).toBe(true)
        const i = v.inputs
        expect(decodeOther(body)).toEqual(
          ['mesh', 'version', 'prevVersion', 'kind', 'body'].map((k) => field(i, k)),
        )
        expect(random).toHaveLength(0)
        break
      }
    }
  })

  it('seals the documented content: [channel, target, clientMessageId, meta, payload]', () => {
    if (v.sealedContent === null) return
    const sealed = hexBytes(v.sealedContent)
    const header = expectedHeader(v)
    expect(decodeOther(sealed)).toEqual([
      v.channel,
      header.target,
      v.inputs.clientMessageId,
      header.meta,
      v.inputs.payload,
    ])
    // The body opens (libsodium) to exactly these bytes.
    const env = map(decodeOther(v.bytes), 'envelope')
    const { nonce, ciphertext } = split(bytesOf(env.body, 'body'))
    const me = createIdentity('session', hexBytes(v.recipientSeed))
    const from = boxPublicKey(hexBytes(v.senderPublicKey))
    let opened: Uint8Array | null
    if (v.channel === 'group') {
      const keyBox = split(bytesOf(map(env.keys, 'keys')[v.recipientPublicKey], 'key box'))
      const contentKey = boxOpen(keyBox.ciphertext, keyBox.nonce, from, me.boxSecretKey)
      expect(contentKey && toHex(contentKey)).toBe(v.random[0])
      opened = secretboxOpen(ciphertext, nonce, contentKey!)
    } else if (v.channel === 'topic') {
      opened = secretboxOpen(ciphertext, nonce, bytesOf(v.inputs.topicKey, 'topicKey'))
    } else {
      opened = boxOpen(ciphertext, nonce, from, me.boxSecretKey)
    }
    expect(opened && toHex(opened)).toBe(v.sealedContent)
  })

  it('opens with openEnvelope as its recipient to the expected payload', () => {
    const me = createIdentity('session', hexBytes(v.recipientSeed))
    expect(toHex(me.publicKey)).toBe(v.recipientPublicKey)
    const i = v.inputs
    const topicKey = i.topicKey === undefined ? undefined : bytesOf(i.topicKey, 'topicKey')
    const result = openEnvelope(decodeEnvelope(hexBytes(v.bytes)), me, {
      topicKey: (topic, epoch) =>
        topic === i.target && epoch === map(i.meta, 'meta').keyEpoch ? topicKey : undefined,
      coordinatorPk: hexBytes(v.senderPublicKey),
    })
    if (!result.ok) throw new Error(`${name} did not open: ${result.status}: ${result.error.message}`)
    expect(toJson(result.payload)).toEqual(v.expected.payload)
    expect(result.e2e).toBe(v.expected.e2e)
    // The expected payload is the one the sender was given.
    const sent =
      v.channel === 'system'
        ? ['mesh', 'version', 'prevVersion', 'kind', 'body'].map((k) => field(i, k))
        : (i.payload ?? i.text)
    expect(v.expected.payload).toEqual(sent)
  })
})

// ── 2c. the request fingerprint ──────────────────────────────────────────────

describe('request-fingerprint', () => {
  let v: FingerprintVector
  beforeAll(() => {
    v = loadKind('request-fingerprint', 'fingerprint')
  })

  it('is BLAKE2b-256 of the domain and a preimage that @msgpack/msgpack decodes as documented', () => {
    const preimage = hexBytes(v.preimage)
    const digest = hash(concatBytes(utf8('agentmesh/v1/request-fingerprint\0'), preimage))
    expect(toHex(digest)).toBe(v.fingerprint)
    const decoded = list(decodeOther(preimage), 'preimage')
    expect(decoded).toEqual([
      v.inputs.channel,
      v.inputs.target,
      v.inputs.meta,
      bin(hash(hexBytes(v.payloadEncoded))),
    ])
    // Canonical form: map keys sorted, at every level.
    const payload = decodeOther(v.payloadEncoded)
    expect(payload).toEqual(v.inputs.payload)
    for (const m of [map(decoded[2], 'meta'), map(payload, 'payload')]) {
      expect(Object.keys(m)).toEqual(Object.keys(m).sort())
    }
  })

  it('is what requestFingerprint computes from the inputs as written', () => {
    const fp = requestFingerprint({
      channel: v.inputs.channel,
      target: v.inputs.target,
      meta: map(fromJson(v.inputs.meta) as Json, 'meta'),
      payload: fromJson(v.inputs.payload),
    })
    expect(toHex(fp)).toBe(v.fingerprint)
  })
})

// ── 2d. frames ───────────────────────────────────────────────────────────────

describe('frames', () => {
  it('frame-send carries envelope-dm', () => {
    const v: FrameVector = loadKind('frame-send', 'frame')
    const frame = map(decodeOther(v.bytes), 'frame')
    expect(frame).toEqual(v.frame)
    expect(Object.keys(frame)).toEqual(['t', 'reqId', 'envelope'])
    expect(frame.t).toBe('send')
    expect(num(frame.reqId, 'reqId')).toBeGreaterThan(0)
    expect(toHex(bytesOf(frame.envelope, 'envelope'))).toBe(loadKind('envelope-dm', 'envelope').bytes)
    expect(decodeFrame(hexBytes(v.bytes)).t).toBe('send')
  })

  it('frame-hello carries signature-hello, and Node verifies it from the frame', () => {
    const v: FrameVector = loadKind('frame-hello', 'frame')
    const hello = loadKind('signature-hello', 'signature')
    const frame = map(decodeOther(v.bytes), 'frame')
    expect(frame).toEqual(v.frame)
    expect(frame.t).toBe('hello')
    expect(frame.proto).toEqual({ min: 1, max: 1 })
    expect(frame.pk).toEqual(bin(hello.signerPublicKey))
    for (const k of ['mesh', 'role', 'sessionId', 'instanceId', 'attestation']) {
      expect(frame[k], k).toEqual(hello.inputs[k])
    }
    expect(frame.capabilities).toEqual(bin(hello.outputs!.capabilities!))
    const signed = bytesOf(frame.signed, 'signed')
    const sig = bytesOf(frame.sig, 'sig')
    expect(toHex(signed)).toBe(hello.signed)
    expect(toHex(sig)).toBe(hello.sig)
    expect(ed25519Verifies('hello', signed, sig, bytesOf(frame.pk, 'pk'))).toBe(true)

    const decoded = decodeFrame(hexBytes(v.bytes))
    if (decoded.t !== 'hello') throw new Error('not a hello frame')
    const nonce = bytesOf(hello.inputs.challengeNonce, 'challengeNonce')
    expect(verifyHello(decoded, { challengeNonce: nonce, now: NOW }).role).toBe('session')
  })

  it('frame-hello-ack announces the member rate bucket in limits.rate, in PROTOCOL.md order', () => {
    const v: FrameVector = loadKind('frame-hello-ack', 'frame')
    const frame = map(decodeOther(v.bytes), 'frame')
    expect(frame).toEqual(v.frame)
    expect(Object.keys(frame)).toEqual([
      't',
      'reqId',
      'proto',
      'features',
      'stateVersion',
      'presenceId',
      'nodeId',
      'leaseMs',
      'limits',
    ])
    const limits = map(frame.limits, 'limits')
    expect(Object.keys(limits)).toEqual([
      'maxFrameBytes',
      'maxEnvelopeBytes',
      'maxPayloadBytes',
      'ackWaitMs',
      'pushWindow',
      'rate',
    ])
    const member = map(map(limits.rate, 'rate').member, 'member')
    expect(member).toEqual({
      messageBurst: 200,
      messagesPerSecond: 100,
      byteBurst: 8 * 1024 * 1024,
      bytesPerSecond: 8 * 1024 * 1024,
    })
    const decoded = decodeFrame(hexBytes(v.bytes))
    if (decoded.t !== 'hello_ack') throw new Error('not a hello_ack frame')
    expect(decoded.limits.rate?.member.messagesPerSecond).toBe(100)
    // A peer from before limits.rate reads these bytes: its schema drops the unknown field.
    const { rate: _rate, ...olderLimits } = FRAME_SCHEMAS.hello_ack.shape.limits.shape
    const older = obj({ ...FRAME_SCHEMAS.hello_ack.shape, limits: obj(olderLimits) })
    const asOlder = parse(older, otherDecode(hexBytes(v.bytes)), 'MESH_ERR_MALFORMED_FRAME', 'hello_ack')
    expect(asOlder.limits).toEqual({ ...decoded.limits, rate: undefined })
    // And a coordinator from before it sends none: the field is optional.
    const fromOlder = { ...decoded, limits: { ...decoded.limits, rate: undefined } }
    expect(decodeFrame(encodeFrame(fromOlder))).toMatchObject({ t: 'hello_ack', limits: { pushWindow: 256 } })
  })
})
