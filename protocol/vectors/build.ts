/**
 * Golden vectors: builds every vector of `protocol/vectors/` from fixed inputs (keys from fixed seeds,
 * fixed times and ids, and a counter in place of randomness), so the same code always gives the same
 * bytes. `protocol/vectors.test.ts` rebuilds them in memory and requires the committed files to match.
 *
 *     node --import tsx protocol/vectors/build.ts          # check: lists vectors that differ, exit 1
 *     node --import tsx protocol/vectors/build.ts --write  # (re)writes every vector file
 *
 * A changed vector is a wire change: see README.md in this folder.
 *
 * In the JSON files, bytes are lowercase hex. Inside free-form values (payloads, admin arguments, event
 * bodies, decoded signed arrays) a byte string is written `{"$bin": "<hex>"}`, so it is never confused
 * with a text string.
 */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import {
  attestationHash,
  createIdentity,
  decode,
  encode,
  encodeEnvelope,
  encodeFrame,
  encodeSealedContent,
  hash,
  initCrypto,
  isPlainObject,
  mintServiceAttestation,
  mintSessionAttestation,
  normalizeMeta,
  requestFingerprint,
  sealDirect,
  sealGroup,
  sealPlaintext,
  sealSystemEnvelope,
  sealTopic,
  signAdminRequest,
  signHello,
  signInvite,
  signJoin,
  signP2pSignature,
  signRosterRecord,
  signSystemEvent,
  toHex,
  type Capabilities,
  type Channel,
  type DirectChannel,
  type Envelope,
  type Identity,
  type KeyKind,
  type Meta,
  type Purpose,
  type Signed,
} from '../index.js'

// ── fixed inputs ─────────────────────────────────────────────────────────────

/** The clock of every vector. */
export const NOW = 1_790_000_000_000
export const MESH = 'acme'

/** Each key's seed is 32 copies of one byte. */
const SEED_BYTES = {
  owner: 0x01,
  alice: 0x02,
  aliceSession: 0x03,
  bobSession: 0x04,
  carolSession: 0x05,
  newcomer: 0x06,
  service: 0x07,
  coordinator: 0x08,
} as const
type Who = keyof typeof SEED_BYTES
const KINDS: Record<Who, KeyKind> = {
  owner: 'member',
  alice: 'member',
  aliceSession: 'session',
  bobSession: 'session',
  carolSession: 'session',
  newcomer: 'member',
  service: 'service',
  coordinator: 'coordinator',
}

/** Fixed ULIDs (all minted at about `NOW`). */
const IDS = {
  dm: '01M3250V00005HC89C6X14TP33',
  group: '01M3250VZ84MR3PHJHBHKQ4ZC8',
  topic: '01M3250WYG99AP0TVPG669F8ND',
  rpc: '01M3250XXRDXX8B44VMTRVSHYJ',
  stream: '01M3250YX0JJFTNDE0SFBE3V7Q',
  system: '01M3250ZW8Q72CZPQ5Y3XGC48W',
  plaintext: '01M32510VGVVMZ9ZRA2MG2PDJ1',
} as const

const OFFER_SDP = sdpWith(
  '3A:9F:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:01:23:45:67:89:AB:CD:EF:10:32:54:76:98:BA',
)
const ANSWER_SDP = sdpWith(
  'C4:5D:E6:7F:08:19:2A:3B:4C:5D:6E:7F:80:91:A2:B3:C4:D5:E6:F7:08:19:2A:3B:4C:5D:6E:7F:80:91:A2:B3',
)

function sdpWith(fingerprint: string): string {
  return [
    'v=0',
    'o=- 4611731400430051336 2 IN IP4 127.0.0.1',
    's=-',
    't=0 0',
    'a=group:BUNDLE 0',
    'm=application 9 UDP/DTLS/SCTP webrtc-datachannel',
    'c=IN IP4 0.0.0.0',
    `a=fingerprint:sha-256 ${fingerprint}`,
    'a=setup:actpass',
    'a=mid:0',
    'a=sctp-port:5000',
    '',
  ].join('\r\n')
}

/** `n` bytes counting up from `start` (mod 256): the fixed stand-in for randomness. */
export function counterBytes(start: number, n: number): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (start + i) & 0xff)
}

/** A deterministic `random` for the seal functions that also records every draw, in order. */
function recordingRandom(start: number): { random: (n: number) => Uint8Array; draws: Uint8Array[] } {
  let counter = start
  const draws: Uint8Array[] = []
  const random = (n: number): Uint8Array => {
    const bytes = counterBytes(counter, n)
    counter += n
    draws.push(bytes)
    return bytes
  }
  return { random, draws }
}

// ── the JSON form ────────────────────────────────────────────────────────────

/** A JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json }

/**
 * A msgpack value in JSON: byte strings become `{"$bin": hex}`, maps and arrays recurse. Throws on what
 * JSON cannot carry exactly (non-finite or unsafe numbers, bigints, other objects).
 */
export function toJson(value: unknown): Json {
  if (value === null || typeof value === 'boolean' || typeof value === 'string') return value
  if (typeof value === 'number') {
    if (Number.isInteger(value) ? !Number.isSafeInteger(value) : !Number.isFinite(value)) {
      throw new TypeError(`no exact JSON form for ${value}`)
    }
    return Object.is(value, -0) ? 0 : value
  }
  if (value instanceof Uint8Array) return { $bin: toHex(value) }
  if (Array.isArray(value)) return value.map(toJson)
  if (isPlainObject(value)) {
    const out: { [key: string]: Json } = {}
    for (const [k, v] of Object.entries(value)) if (v !== undefined) out[k] = toJson(v)
    return out
  }
  throw new TypeError(`no JSON form for ${Object.prototype.toString.call(value)}`)
}

/** The inverse of `toJson`: `{"$bin": hex}` back to bytes. */
export function fromJson(value: Json): unknown {
  if (Array.isArray(value)) return value.map(fromJson)
  if (value !== null && typeof value === 'object') {
    const keys = Object.keys(value)
    const bin = value.$bin
    if (keys.length === 1 && typeof bin === 'string') return hexBytes(bin)
    return Object.fromEntries(keys.map((k) => [k, fromJson(value[k]!)]))
  }
  return value
}

/** Bytes of lowercase hex (for the test and the JSON form; throws on anything else). */
export function hexBytes(text: string): Uint8Array {
  if (!/^(?:[0-9a-f]{2})*$/.test(text)) throw new TypeError(`not lowercase hex: ${text.slice(0, 40)}`)
  return Uint8Array.from(text.match(/../g) ?? [], (h) => parseInt(h, 16))
}

// ── vector shapes ────────────────────────────────────────────────────────────

/** A signature: `sig` is the signer's Ed25519 signature over `"agentmesh/v1/<purpose>\0" ‖ signed`. */
export interface SignatureVector {
  name: string
  kind: 'signature'
  description: string
  purpose: Purpose
  signerSeed: string
  signerPublicKey: string
  /** What the signer was given; the signed array follows from these and PROTOCOL.md. */
  inputs: { [key: string]: Json }
  /** The signed array as decoded, for reading (the test derives it from `inputs` independently). */
  fields: Json[]
  /** The msgpack bytes of the signed array, exactly as they travel. */
  signed: string
  sig: string
  /** Bytes that travel beside the record and are bound to it by hash (hello capabilities, admin args). */
  outputs?: { [key: string]: string }
}

/** A sealed (or plaintext, or system) envelope and what its recipient opens. */
export interface EnvelopeVector {
  name: string
  kind: 'envelope'
  description: string
  channel: Channel
  senderSeed: string
  senderPublicKey: string
  recipientSeed: string
  recipientPublicKey: string
  inputs: { [key: string]: Json }
  /** Every draw of the seal's `random`, in order (content key, nonces). */
  random: string[]
  /** The plaintext inside the sealed body: msgpack([channel, target, clientMessageId, meta, payload]). */
  sealedContent: string | null
  /** The encoded envelope. */
  bytes: string
  /** What `openEnvelope` gives the recipient. */
  expected: { payload: Json; e2e: boolean }
}

/** A request fingerprint (protocol/fingerprint.ts). */
export interface FingerprintVector {
  name: string
  kind: 'fingerprint'
  description: string
  inputs: { channel: Channel; target: string; meta: Json; payload: Json }
  /** msgpack(canonicalValue(payload)): its BLAKE2b-256 is the preimage's last item. */
  payloadEncoded: string
  /** msgpack([channel, target, canonicalValue(meta), payloadDigest]). */
  preimage: string
  /** BLAKE2b-256("agentmesh/v1/request-fingerprint\0" ‖ preimage). */
  fingerprint: string
}

/** One encoded control frame. */
export interface FrameVector {
  name: string
  kind: 'frame'
  description: string
  frame: Json
  bytes: string
}

export type Vector = SignatureVector | EnvelopeVector | FingerprintVector | FrameVector

/** Every vector, in file order; the file of `x` is `x.json`. */
export const VECTOR_NAMES = [
  'signature-hello',
  'signature-session-attestation',
  'signature-service-attestation',
  'signature-roster',
  'signature-invite',
  'signature-join',
  'signature-admin-request',
  'signature-system-event',
  'signature-p2p-offer',
  'signature-p2p-answer',
  'signature-envelope',
  'envelope-dm',
  'envelope-dm-plaintext',
  'envelope-group',
  'envelope-topic',
  'envelope-rpc',
  'envelope-stream',
  'envelope-system',
  'request-fingerprint',
  'frame-send',
  'frame-hello',
  'frame-hello-ack',
] as const
export type VectorName = (typeof VECTOR_NAMES)[number]

/** A vector file's exact text. */
export function serializeVector(vector: Vector): string {
  return JSON.stringify(vector, null, 2) + '\n'
}

// ── building ─────────────────────────────────────────────────────────────────

const hex = toHex

function signatureVector(
  name: VectorName,
  description: string,
  purpose: Purpose,
  signer: Who,
  inputs: { [key: string]: Json },
  record: Signed,
  outputs?: { [key: string]: string },
): SignatureVector {
  const fields = toJson(decode(record.signed)) // shown for readers; the test decodes with another library
  if (!Array.isArray(fields)) throw new TypeError(`${name}: the signed bytes are not an array`)
  const v: SignatureVector = {
    name,
    kind: 'signature',
    description,
    purpose,
    signerSeed: hex(seedOf(signer)),
    signerPublicKey: hex(id(signer).publicKey),
    inputs,
    fields,
    signed: hex(record.signed),
    sig: hex(record.sig),
  }
  if (outputs !== undefined) v.outputs = outputs
  return v
}

function seedOf(who: Who): Uint8Array {
  return new Uint8Array(32).fill(SEED_BYTES[who])
}

const identities = new Map<Who, Identity>()
function id(who: Who): Identity {
  let identity = identities.get(who)
  if (identity === undefined) {
    identity = createIdentity(KINDS[who], seedOf(who))
    identities.set(who, identity)
  }
  return identity
}

interface EnvelopeParts {
  channel: Channel
  sender: Who
  recipient: Who
  inputs: { [key: string]: Json }
  draws: Uint8Array[]
  sealedContent: Uint8Array | null
  env: Envelope
  payload: unknown
  e2e: boolean
}

function envelopeVector(name: VectorName, description: string, p: EnvelopeParts): EnvelopeVector {
  return {
    name,
    kind: 'envelope',
    description,
    channel: p.channel,
    senderSeed: hex(seedOf(p.sender)),
    senderPublicKey: hex(id(p.sender).publicKey),
    recipientSeed: hex(seedOf(p.recipient)),
    recipientPublicKey: hex(id(p.recipient).publicKey),
    inputs: p.inputs,
    random: p.draws.map(hex),
    sealedContent: p.sealedContent === null ? null : hex(p.sealedContent),
    bytes: hex(encodeEnvelope(p.env)),
    expected: { payload: toJson(p.payload), e2e: p.e2e },
  }
}

function direct(
  channel: DirectChannel,
  clientMessageId: string,
  meta: Meta,
  payload: unknown,
  randomStart: number,
): EnvelopeParts {
  const from = id('aliceSession')
  const to = id('bobSession').publicKey
  const { random, draws } = recordingRandom(randomStart)
  const env = sealDirect({ mesh: MESH, channel, from, to, clientMessageId, meta, payload }, { random })
  return {
    channel,
    sender: 'aliceSession',
    recipient: 'bobSession',
    inputs: toJsonObject({ mesh: MESH, target: to, clientMessageId, meta, payload }),
    draws,
    sealedContent: encodeSealedContent(channel, to, clientMessageId, normalizeMeta(meta), payload),
    env,
    payload,
    e2e: true,
  }
}

/** Builds every vector. `initCrypto()` must have resolved. */
export function buildVectors(): Record<VectorName, Vector> {
  identities.clear()
  const owner = id('owner')
  const alice = id('alice')
  const aliceSession = id('aliceSession')
  const bobSession = id('bobSession')
  const carolSession = id('carolSession')
  const newcomer = id('newcomer')
  const service = id('service')
  const coordinator = id('coordinator')

  // ── signatures ──
  const sessionAtt = { mesh: MESH, sessionPk: aliceSession.publicKey, sessionId: 'claude-4f2a9c', now: NOW }
  const sessionAttestation = mintSessionAttestation({ ...sessionAtt, member: alice })
  const sessionAttVector = signatureVector(
    'signature-session-attestation',
    'alice (member) vouches for her session key; default TTL 12 h',
    'session-attestation',
    'alice',
    { ...toJsonObject(sessionAtt), ttlMs: 12 * 60 * 60 * 1000 },
    sessionAttestation,
  )

  const serviceAtt = {
    mesh: MESH,
    servicePk: service.publicKey,
    serviceId: 'ci-webhook',
    type: 'webhook' as const,
    scopes: ['send:dm', 'read:peers'],
    now: NOW,
  }
  const serviceAttVector = signatureVector(
    'signature-service-attestation',
    'alice (member) vouches for a webhook service key; default TTL 30 days',
    'service-attestation',
    'alice',
    { ...toJsonObject(serviceAtt), ttlMs: 30 * 24 * 60 * 60 * 1000 },
    mintServiceAttestation({ ...serviceAtt, member: alice }),
  )

  const challengeNonce = counterBytes(0x30, 32)
  const capabilities: Capabilities = {
    p2p: true,
    transports: ['webrtc', 'ws-relay'],
    status: 'idle',
    displayName: 'alice',
  }
  const helloInput = {
    mesh: MESH,
    role: 'session' as const,
    challengeNonce,
    sessionId: 'claude-4f2a9c',
    instanceId: 'inst-7d01',
  }
  const helloBody = signHello({
    ...helloInput,
    identity: aliceSession,
    attestation: sessionAttestation,
    capabilities,
  })
  const helloVector = signatureVector(
    'signature-hello',
    "alice's session key answers a challenge; the attestation is signature-session-attestation",
    'hello',
    'aliceSession',
    {
      ...toJsonObject(helloInput),
      attestation: toJson({ signed: sessionAttestation.signed, sig: sessionAttestation.sig }),
      capabilities: toJson(capabilities),
    },
    helloBody,
    { capabilities: hex(helloBody.capabilities), attestationHash: hex(attestationHash(sessionAttestation)) },
  )

  const rosterInput = {
    mesh: MESH,
    seq: 1,
    action: 'add' as const,
    subjectPk: alice.publicKey,
    role: 'member' as const,
    displayName: 'Alice',
    issuedAt: NOW,
  }
  const rosterRecord = signRosterRecord({ ...rosterInput, identity: owner })
  const rosterVector = signatureVector(
    'signature-roster',
    'the owner adds alice as a member (the first record after genesis)',
    'roster',
    'owner',
    toJsonObject(rosterInput),
    rosterRecord,
  )

  const inviteInput = {
    mesh: MESH,
    inviteId: counterBytes(0xa0, 16),
    coordinatorUrl: 'wss://mesh.example.com/v1',
    coordinatorPk: coordinator.publicKey,
    ownerPk: owner.publicKey,
    role: 'member' as const,
    expiresAt: NOW + 7 * 24 * 60 * 60 * 1000,
    maxUses: 5,
  }
  const inviteVector = signatureVector(
    'signature-invite',
    'the owner invites members: five uses, valid 7 days',
    'invite',
    'owner',
    toJsonObject(inviteInput),
    signInvite({ ...inviteInput, identity: owner }),
  )

  const joinVector = signatureVector(
    'signature-join',
    'a newcomer joins with signature-invite, signing with its new member key',
    'join',
    'newcomer',
    toJsonObject({ inviteId: inviteInput.inviteId }),
    signJoin({ identity: newcomer, inviteId: inviteInput.inviteId }),
  )

  const adminInput = {
    mesh: MESH,
    method: 'kick',
    args: { pk: alice.publicKey, reason: 'left the team' },
    challengeNonce: counterBytes(0x50, 32),
  }
  const adminRequest = signAdminRequest({ ...adminInput, identity: owner })
  const adminVector = signatureVector(
    'signature-admin-request',
    'the owner asks the coordinator to kick alice; args travel as msgpack bytes, bound by hash',
    'admin-request',
    'owner',
    toJsonObject(adminInput),
    adminRequest,
    { args: hex(adminRequest.args), argsHash: hex(hash(adminRequest.args)) },
  )

  const eventInput = {
    mesh: MESH,
    version: 12,
    prevVersion: 11,
    kind: 'roster',
    body: { record: { signed: rosterRecord.signed, sig: rosterRecord.sig, signer: rosterRecord.signer } },
  }
  const eventVector = signatureVector(
    'signature-system-event',
    'the coordinator publishes signature-roster as mesh-state version 12',
    'system-event',
    'coordinator',
    toJsonObject(eventInput),
    signSystemEvent({ ...eventInput, coordinator }),
  )

  const p2pVector = (role: 'offer' | 'answer'): SignatureVector => {
    const offer = role === 'offer'
    const input = {
      mesh: MESH,
      role,
      to: (offer ? bobSession : aliceSession).publicKey,
      sigId: 'sig-01M3250V',
      sdp: offer ? OFFER_SDP : ANSWER_SDP,
      now: NOW,
    }
    const signer: Who = offer ? 'aliceSession' : 'bobSession'
    const fingerprint = (offer ? OFFER_SDP : ANSWER_SDP).match(/sha-256 (\S+)/)![1]!
    const dtlsFingerprints = [{ alg: 'sha-256', value: fingerprint }]
    return signatureVector(
      `signature-p2p-${role}`,
      offer
        ? "alice's session offers bob's a data channel; the DTLS fingerprint is the SDP's"
        : "bob's session answers signature-p2p-offer",
      `p2p-${role}`,
      signer,
      { ...toJsonObject(input), dtlsFingerprints, ttlMs: 60_000 },
      signP2pSignature({ ...input, identity: id(signer), dtlsFingerprints }),
    )
  }

  // ── envelopes ──
  const dm = direct('dm', IDS.dm, { priority: 'now', mentions: ['bob'] }, { text: 'hello bob', n: 1 }, 0x10)
  const rpc = direct(
    'rpc',
    IDS.rpc,
    { rpc: 'req', timeoutMs: 30_000 },
    { method: 'status', params: { verbose: true } },
    0x60,
  )
  const stream = direct(
    'stream',
    IDS.stream,
    { streamId: 'upload-1', seq: 0, fin: true },
    counterBytes(0xf0, 20),
    0x80,
  )

  const groupRandom = recordingRandom(0x20)
  const groupInput = {
    mesh: MESH,
    target: '@ops',
    clientMessageId: IDS.group,
    meta: { priority: 'next' } satisfies Meta,
    payload: { text: 'standup in 5' },
    // The sender lists itself too, so its other sessions can read its own post.
    recipients: [bobSession.publicKey, carolSession.publicKey, aliceSession.publicKey],
    rosterVersion: 7,
  }
  const groupEnv = sealGroup({ ...groupInput, from: aliceSession }, { random: groupRandom.random })
  const group: EnvelopeParts = {
    channel: 'group',
    sender: 'aliceSession',
    recipient: 'bobSession',
    inputs: toJsonObject(groupInput),
    draws: groupRandom.draws,
    sealedContent: encodeSealedContent(
      'group',
      groupInput.target,
      IDS.group,
      normalizeMeta(groupInput.meta),
      groupInput.payload,
    ),
    env: groupEnv,
    payload: groupInput.payload,
    e2e: true,
  }

  const topicRandom = recordingRandom(0xc0)
  const topicInput = {
    mesh: MESH,
    target: '#deploys',
    clientMessageId: IDS.topic,
    meta: { keyEpoch: 3 } satisfies Meta,
    payload: { text: 'v1.2.0 is out' },
    topicKey: counterBytes(0xe0, 32),
  }
  const topicEnv = sealTopic({ ...topicInput, from: aliceSession }, { random: topicRandom.random })
  const topic: EnvelopeParts = {
    channel: 'topic',
    sender: 'aliceSession',
    recipient: 'bobSession',
    inputs: toJsonObject(topicInput),
    draws: topicRandom.draws,
    sealedContent: encodeSealedContent(
      'topic',
      topicInput.target,
      IDS.topic,
      normalizeMeta(topicInput.meta),
      topicInput.payload,
    ),
    env: topicEnv,
    payload: topicInput.payload,
    e2e: true,
  }
  const topicBody = topicEnv.body as Uint8Array
  const envelopeSigVector = signatureVector(
    'signature-envelope',
    "the signature of envelope-topic: alice's session signs the post's header and ciphertext hash",
    'envelope',
    'aliceSession',
    {
      mesh: MESH,
      channel: 'topic',
      target: topicInput.target,
      clientMessageId: IDS.topic,
      meta: toJson(topicInput.meta),
      nonce: toJson(topicBody.subarray(0, 24)),
      ciphertext: toJson(topicBody.subarray(24)),
    },
    { signed: topicEnv.signed!, sig: topicEnv.sig! },
  )

  const systemInput = {
    mesh: MESH,
    clientMessageId: IDS.system,
    version: 13,
    prevVersion: 12,
    kind: 'group',
    body: { group: 'ops', add: [carolSession.publicKey] },
  }
  const systemEnv = sealSystemEnvelope({ ...systemInput, coordinator })
  const system: EnvelopeParts = {
    channel: 'system',
    sender: 'coordinator',
    recipient: 'bobSession',
    inputs: { ...toJsonObject(systemInput), meta: {} },
    draws: [],
    sealedContent: null,
    env: systemEnv,
    payload: [MESH, systemInput.version, systemInput.prevVersion, systemInput.kind, systemInput.body],
    e2e: false,
  }

  const plaintextInput = {
    mesh: MESH,
    to: bobSession.publicKey,
    clientMessageId: IDS.plaintext,
    text: 'nightly backup finished',
  }
  const plaintext: EnvelopeParts = {
    channel: 'dm',
    sender: 'service',
    recipient: 'bobSession',
    inputs: toJsonObject(plaintextInput),
    draws: [],
    sealedContent: null,
    env: sealPlaintext({ ...plaintextInput, from: service.publicKey }),
    payload: plaintextInput.text,
    e2e: false,
  }

  // ── fingerprint ──
  const fpInput = {
    channel: 'dm' as const,
    target: hex(bobSession.publicKey),
    // Written out of order on purpose: the fingerprint sorts map keys.
    meta: { priority: 'next', mentions: ['bob'] },
    payload: { text: 'deploy done', tags: ['ci', 'prod'], n: 5, at: NOW },
  }
  const payloadEncoded = encode({ at: NOW, n: 5, tags: ['ci', 'prod'], text: 'deploy done' })
  const preimage = encode([
    fpInput.channel,
    fpInput.target,
    { mentions: ['bob'], priority: 'next' },
    hash(payloadEncoded),
  ])
  const fingerprint: FingerprintVector = {
    name: 'request-fingerprint',
    kind: 'fingerprint',
    description: 'the idempotency fingerprint of an IPC dm send, before sealing',
    inputs: { ...fpInput, meta: toJson(fpInput.meta), payload: toJson(fpInput.payload) },
    payloadEncoded: hex(payloadEncoded),
    preimage: hex(preimage),
    fingerprint: hex(requestFingerprint(fpInput)),
  }

  // ── frames ──
  const dmBytes = encodeEnvelope(dm.env)
  const sendFrame = { t: 'send' as const, reqId: 7, envelope: dmBytes }
  const helloFrame = {
    t: 'hello' as const,
    reqId: 1,
    proto: { min: 1, max: 1 },
    features: ['p2p', 'topics'],
    ...helloBody,
  }
  // The coordinator's answer, with the member bucket of DESIGN.md §6 announced in limits.rate.
  const helloAckFrame = {
    t: 'hello_ack' as const,
    reqId: 1,
    proto: 1,
    features: ['fast-path', 'group', 'topic', 'signaling'],
    stateVersion: 13,
    presenceId: '01JC0000000000000000000000',
    nodeId: 'node-a1',
    leaseMs: 90_000,
    limits: {
      maxFrameBytes: 72 * 1024,
      maxEnvelopeBytes: 64 * 1024,
      maxPayloadBytes: 60 * 1024,
      ackWaitMs: 500,
      pushWindow: 256,
      rate: {
        member: {
          messageBurst: 200,
          messagesPerSecond: 100,
          byteBurst: 8 * 1024 * 1024,
          bytesPerSecond: 8 * 1024 * 1024,
        },
      },
    },
  }
  const frameVector = (name: VectorName, description: string, frame: Parameters<typeof encodeFrame>[0]) => ({
    name,
    kind: 'frame' as const,
    description,
    frame: toJson(frame),
    bytes: hex(encodeFrame(frame)),
  })

  const vectors: Record<VectorName, Vector> = {
    'signature-hello': helloVector,
    'signature-session-attestation': sessionAttVector,
    'signature-service-attestation': serviceAttVector,
    'signature-roster': rosterVector,
    'signature-invite': inviteVector,
    'signature-join': joinVector,
    'signature-admin-request': adminVector,
    'signature-system-event': eventVector,
    'signature-p2p-offer': p2pVector('offer'),
    'signature-p2p-answer': p2pVector('answer'),
    'signature-envelope': envelopeSigVector,
    'envelope-dm': envelopeVector('envelope-dm', "alice's session to bob's: crypto_box", dm),
    'envelope-dm-plaintext': envelopeVector(
      'envelope-dm-plaintext',
      'a plaintext dm (meta.e2e false) from a cron service to bob; nothing is sealed',
      plaintext,
    ),
    'envelope-group': envelopeVector(
      'envelope-group',
      'alice to @ops: secretbox under a content key, boxed to each recipient',
      group,
    ),
    'envelope-topic': envelopeVector(
      'envelope-topic',
      'alice posts to #deploys under the topic key of epoch 3, signed (signature-envelope)',
      topic,
    ),
    'envelope-rpc': envelopeVector('envelope-rpc', 'an rpc request from alice to bob', rpc),
    'envelope-stream': envelopeVector(
      'envelope-stream',
      'a single-chunk stream (seq 0, fin) of 20 bytes',
      stream,
    ),
    'envelope-system': envelopeVector(
      'envelope-system',
      'a coordinator-signed system event (version 13) as bob receives it',
      system,
    ),
    'request-fingerprint': fingerprint,
    'frame-send': frameVector('frame-send', 'a send frame carrying envelope-dm', sendFrame),
    'frame-hello': frameVector('frame-hello', 'the hello frame of signature-hello', helloFrame),
    'frame-hello-ack': frameVector(
      'frame-hello-ack',
      "the coordinator's hello_ack to frame-hello, announcing the default member rate bucket",
      helloAckFrame,
    ),
  }
  for (const name of VECTOR_NAMES) {
    if (vectors[name].name !== name) throw new Error(`vector ${name} is named ${vectors[name].name}`)
  }
  return vectors
}

function toJsonObject(value: object): { [key: string]: Json } {
  const json = toJson(value)
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw new TypeError('not a map')
  return json
}

// ── command line ─────────────────────────────────────────────────────────────

/** The folder the vector files live in. */
export const VECTORS_DIR = fileURLToPath(new URL('.', import.meta.url))

async function main(args: string[]): Promise<number> {
  await initCrypto()
  const vectors = buildVectors()
  const write = args.includes('--write')
  const differing: string[] = []
  for (const name of VECTOR_NAMES) {
    const file = `${VECTORS_DIR}${name}.json`
    const text = serializeVector(vectors[name])
    let current: string | undefined
    try {
      current = readFileSync(file, 'utf8')
    } catch {
      current = undefined
    }
    if (current === text) continue
    differing.push(`${name}.json${current === undefined ? ' (missing)' : ''}`)
    if (write) writeFileSync(file, text)
  }
  const known = new Set(VECTOR_NAMES.map((n) => `${n}.json`))
  const stray = readdirSync(VECTORS_DIR).filter((f) => f.endsWith('.json') && !known.has(f))
  for (const f of stray) console.log(`stray vector file (not built; delete it by hand): ${f}`)
  if (differing.length === 0) {
    console.log(`all ${VECTOR_NAMES.length} vectors match`)
    return stray.length === 0 ? 0 : 1
  }
  console.log(`${write ? 'wrote' : 'differ'}: ${differing.join(', ')}`)
  return write && stray.length === 0 ? 0 : 1
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  process.exitCode = await main(process.argv.slice(2))
}
