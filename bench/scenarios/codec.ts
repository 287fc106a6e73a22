/**
 * The `codec` scenario: what one envelope costs to encode, decode, seal and sign, each figure beside a
 * baseline measured in the same run (CONVENTIONS.md §11; method and how to read it in bench/README.md).
 *
 * 1. Envelope codec: `encodeEnvelope` + `decodeEnvelope` (msgpack, validated) beside JSON with base64 bytes
 *    doing the same validation, for a ~1 KiB dm, a ~60 KiB dm and a 5-member group envelope; then the raw
 *    codec pair (no validation) and the encoded sizes of both forms.
 * 2. `crypto_box`: the precomputed shared key (`BoxKeyCache`) beside the one-shot box, seal and open, alone
 *    and inside a whole dm (`sealDirect` / `openDirect`), with the nonce draw every seal pays.
 * 3. Ed25519: libsodium (`signFields` / `verifySigned` over hello-sized fields) beside node:crypto.
 */
import {
  createPrivateKey,
  createPublicKey,
  sign as nodeSign,
  verify as nodeVerify,
  type KeyObject,
} from 'node:crypto'
import {
  BoxKeyCache,
  createIdentity,
  decode,
  decodeEnvelope,
  encode,
  encodeEnvelope,
  hash,
  initCrypto,
  isDirectChannel,
  NONCE_BYTES,
  openBox,
  openDirect,
  randomBytes,
  sameValue,
  sealBox,
  sealDirect,
  sealGroup,
  seedOf,
  signFields,
  signingInput,
  ulidFactory,
  validateEnvelope,
  verifySigned,
  type Envelope,
  type Identity,
} from '../../protocol/index.js'
import { compareRates, report } from '../measure.js'
import { agentPayload } from '../payload.js'

const SCENARIO = 'codec'
const MESH = 'bench-mesh'
const KIB = 1024

/** Runs every figure of the scenario; `quick` shortens the rounds so a test can smoke it. */
export async function codecScenario(opts: { quick: boolean }): Promise<void> {
  await initCrypto()
  const timing = opts.quick ? { rounds: 3, ms: 100 } : { rounds: 5, ms: 180 }
  const alice = createIdentity('session')
  const bob = createIdentity('session')
  const newId = ulidFactory()

  const dm = (payloadBytes: number): Envelope =>
    sealDirect({
      mesh: MESH,
      channel: 'dm',
      from: alice,
      to: bob.publicKey,
      clientMessageId: newId(),
      meta: { priority: 'next' },
      payload: agentPayload(payloadBytes),
    })
  // The outer fields, sealed header, nonce and MAC around a payload, so the small dm lands on ~1 KiB.
  const overhead = encodeEnvelope(dm(KIB / 2)).length - KIB / 2
  // The sender and four others: five key boxes.
  const others = Array.from({ length: 4 }, () => createIdentity('session').publicKey)
  const envelopes: { label: string; env: Envelope; goal?: string }[] = [
    { label: '1 KiB dm', env: dm(KIB - overhead), goal: 'msgpack ≥ 1.5× JSON' },
    { label: '60 KiB dm', env: dm(59 * KIB) },
    {
      label: 'group of 5',
      env: sealGroup({
        mesh: MESH,
        from: alice,
        target: '@reviewers',
        recipients: [alice.publicKey, ...others],
        rosterVersion: 7,
        clientMessageId: newId(),
        meta: { priority: 'next' },
        payload: agentPayload(KIB - overhead),
      }),
    },
  ]

  for (const { label, env, goal } of envelopes) envelopeFigures(label, env, timing, goal)
  for (const { label, env } of envelopes) rawCodecFigure(label, env, timing)
  for (const { label, env } of envelopes) sizeFigure(label, env)
  boxFigures(alice, bob, newId(), KIB - overhead, timing)
  signatureFigures(alice, newId(), timing)
  void sink
}

type Timing = { rounds: number; ms: number }
/** Every measured call's result lands here, so the JIT cannot drop the call as unused. */
let sink: unknown

// ── 1. envelope codec ────────────────────────────────────────────────────────

/** The JSON form of an envelope: every byte field as base64, as a JSON protocol would carry it. */
function toJsonForm(env: Envelope): Record<string, unknown> {
  const out: Record<string, unknown> = { ...env, from: b64(env.from) }
  if (env.target instanceof Uint8Array) out.target = b64(env.target)
  if (env.body instanceof Uint8Array) out.body = b64(env.body)
  if (env.keys !== undefined) {
    const keys: Record<string, string> = {}
    for (const k of Object.keys(env.keys)) keys[k] = b64(env.keys[k]!)
    out.keys = keys
  }
  if (env.signed !== undefined) out.signed = b64(env.signed)
  if (env.sig !== undefined) out.sig = b64(env.sig)
  return out
}

/** The inverse of `toJsonForm`: which strings are bytes follows from the channel, as in the schema. */
function fromJsonForm(value: unknown): unknown {
  if (typeof value !== 'object' || value === null) return value
  // No closures here: tsx's keepNames would charge the baseline a `__name` call per envelope.
  const v = value as Record<string, unknown>
  const out: Record<string, unknown> = { ...v }
  if (typeof v.from === 'string') out.from = unb64(v.from)
  const direct = typeof v.channel === 'string' && isDirectChannel(v.channel as Envelope['channel'])
  if (direct && typeof v.target === 'string') out.target = unb64(v.target)
  if (typeof v.body === 'string') out.body = unb64(v.body)
  if (typeof v.signed === 'string') out.signed = unb64(v.signed)
  if (typeof v.sig === 'string') out.sig = unb64(v.sig)
  if (typeof v.keys === 'object' && v.keys !== null) {
    const keys: Record<string, unknown> = {}
    for (const [k, box] of Object.entries(v.keys)) keys[k] = typeof box === 'string' ? unb64(box) : box
    out.keys = keys
  }
  return out
}

// A view, not a copy: the baseline should be as fast as JSON honestly gets.
const b64 = (bytes: Uint8Array): string =>
  Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64')
const unb64 = (text: string): Uint8Array => Buffer.from(text, 'base64')

const jsonEncode = (env: Envelope): string => JSON.stringify(toJsonForm(validateEnvelope(env)))
const jsonDecode = (text: string): Envelope => validateEnvelope(fromJsonForm(JSON.parse(text)))

/** Validated round trips: `encodeEnvelope` + `decodeEnvelope` beside JSON + base64 + `validateEnvelope`. */
function envelopeFigures(label: string, env: Envelope, timing: Timing, goal?: string): void {
  // Both forms must give the envelope back, or the comparison would time a broken baseline.
  assertSame(decodeEnvelope(encodeEnvelope(env)), env, `msgpack ${label}`)
  assertSame(jsonDecode(jsonEncode(env)), env, `JSON ${label}`)
  const wire = encodeEnvelope(env)
  const text = jsonEncode(env)

  const trip = compareRates(
    () => (sink = decodeEnvelope(encodeEnvelope(env))),
    () => (sink = jsonDecode(jsonEncode(env))),
    timing,
  )
  report({
    scenario: SCENARIO,
    name: `envelope round trip, ${label}`,
    unit: 'envelopes/s',
    value: trip.ours,
    baseline: { name: 'JSON+base64, same validation', value: trip.baseline },
    bytes: wire.length,
    ...(goal === undefined ? {} : { goal, met: trip.ours >= 1.5 * trip.baseline }),
  })
  const enc = compareRates(
    () => (sink = encodeEnvelope(env)),
    () => (sink = jsonEncode(env)),
    timing,
  )
  report({
    scenario: SCENARIO,
    name: `envelope encode, ${label}`,
    unit: 'envelopes/s',
    value: enc.ours,
    baseline: { name: 'JSON+base64, same validation', value: enc.baseline },
  })
  const dec = compareRates(
    () => (sink = decodeEnvelope(wire)),
    () => (sink = jsonDecode(text)),
    timing,
  )
  report({
    scenario: SCENARIO,
    name: `envelope decode, ${label}`,
    unit: 'envelopes/s',
    value: dec.ours,
    baseline: { name: 'JSON+base64, same validation', value: dec.baseline },
  })
}

/** The codec alone: protocol `encode` + `decode` beside JSON + base64, neither validating. */
function rawCodecFigure(label: string, env: Envelope, timing: Timing): void {
  assertSame(decode(encode(env)), env, `raw msgpack ${label}`)
  assertSame(fromJsonForm(JSON.parse(JSON.stringify(toJsonForm(env)))), env, `raw JSON ${label}`)
  const r = compareRates(
    () => (sink = decode(encode(env))),
    () => (sink = fromJsonForm(JSON.parse(JSON.stringify(toJsonForm(env))))),
    timing,
  )
  report({
    scenario: SCENARIO,
    name: `raw codec round trip, ${label}`,
    unit: 'envelopes/s',
    value: r.ours,
    baseline: { name: 'JSON+base64, no validation', value: r.baseline },
  })
}

/** The encoded size of both forms (ratio below 1: msgpack is smaller). */
function sizeFigure(label: string, env: Envelope): void {
  report({
    scenario: SCENARIO,
    name: `encoded size, ${label}`,
    unit: 'bytes',
    value: encodeEnvelope(env).length,
    baseline: { name: 'JSON+base64 (UTF-8)', value: Buffer.byteLength(jsonEncode(env)) },
  })
}

function assertSame(actual: unknown, expected: Envelope, what: string): void {
  if (!sameValue(actual, expected)) throw new Error(`bench: ${what} round trip changed the envelope`)
}

// ── 2. crypto_box ────────────────────────────────────────────────────────────

/** Seal and open of a ~1 KiB message: a precomputed shared key beside the one-shot `crypto_box`. */
function boxFigures(
  alice: Identity,
  bob: Identity,
  clientMessageId: string,
  payloadBytes: number,
  timing: Timing,
): void {
  const message = randomBytes(KIB)
  const nonce = randomBytes(NONCE_BYTES)
  const aliceCache = new BoxKeyCache(alice)
  const bobCache = new BoxKeyCache(bob)
  const boxed = sealBox(message, nonce, bob.publicKey, alice)

  const seal = compareRates(
    () => (sink = sealBox(message, nonce, bob.publicKey, alice, aliceCache)),
    () => (sink = sealBox(message, nonce, bob.publicKey, alice)),
    timing,
  )
  report({
    scenario: SCENARIO,
    name: 'crypto_box seal 1 KiB, shared key',
    unit: 'ops/s',
    value: seal.ours,
    baseline: { name: 'one-shot crypto_box', value: seal.baseline },
  })
  const open = compareRates(
    () => (sink = openBox(boxed, nonce, alice.publicKey, bob, bobCache)),
    () => (sink = openBox(boxed, nonce, alice.publicKey, bob)),
    timing,
  )
  report({
    scenario: SCENARIO,
    name: 'crypto_box open 1 KiB, shared key',
    unit: 'ops/s',
    value: open.ours,
    baseline: { name: 'one-shot crypto_box', value: open.baseline },
  })

  // Every seal draws a 24-byte nonce; its cost bounds what the shared key can save on a whole dm.
  const nonces = compareRates(
    () => (sink = randomBytes(NONCE_BYTES)),
    () => (sink = globalThis.crypto.getRandomValues(new Uint8Array(NONCE_BYTES))),
    timing,
  )
  report({
    scenario: SCENARIO,
    name: 'nonce draw, randomBytes(24)',
    unit: 'ops/s',
    value: nonces.ours,
    baseline: { name: 'WebCrypto getRandomValues', value: nonces.baseline },
  })

  // The same choice seen from a whole dm: sealing includes the sealed header's encoding and validation.
  const input = {
    mesh: MESH,
    channel: 'dm' as const,
    from: alice,
    to: bob.publicKey,
    clientMessageId,
    payload: agentPayload(payloadBytes),
  }
  const env = sealDirect(input)
  if (!openDirect(env, bob, { cache: bobCache }).ok) throw new Error('bench: the dm does not open')
  const sealDm = compareRates(
    () => (sink = sealDirect(input, { cache: aliceCache })),
    () => (sink = sealDirect(input)),
    timing,
  )
  report({
    scenario: SCENARIO,
    name: 'sealDirect 1 KiB dm, shared key',
    unit: 'ops/s',
    value: sealDm.ours,
    baseline: { name: 'one-shot crypto_box', value: sealDm.baseline },
  })
  const openDm = compareRates(
    () => (sink = openDirect(env, bob, { cache: bobCache })),
    () => (sink = openDirect(env, bob)),
    timing,
  )
  report({
    scenario: SCENARIO,
    name: 'openDirect 1 KiB dm, shared key',
    unit: 'ops/s',
    value: openDm.ours,
    baseline: { name: 'one-shot crypto_box', value: openDm.baseline },
  })
}

// ── 3. Ed25519 ───────────────────────────────────────────────────────────────

/** libsodium sign and verify over a hello's signed array, beside node:crypto (OpenSSL) doing the same. */
function signatureFigures(me: Identity, instanceId: string, timing: Timing): void {
  // The shape of a session hello: [mesh, pk, role, nonce, attestationHash, capabilitiesHash, sessionId, instanceId].
  const fields = [
    MESH,
    me.publicKey,
    'session',
    randomBytes(32),
    hash(randomBytes(64)),
    hash(randomBytes(64)),
    'sess-1',
    instanceId,
  ]
  const record = signFields('hello', fields, me.secretKey)
  const { privateKey, publicKey } = nodeKeys(me)
  const nodeSig = nodeSign(null, signingInput('hello', record.signed), privateKey)
  // Same key, same bytes: Ed25519 is deterministic, so both libraries must give the same signature.
  if (!Buffer.from(nodeSig).equals(Buffer.from(record.sig))) throw new Error('bench: signatures differ')
  if (!verifySigned('hello', record, me.publicKey)) throw new Error('bench: signature does not verify')

  const sign = compareRates(
    () => (sink = signFields('hello', fields, me.secretKey)),
    () => (sink = nodeSign(null, signingInput('hello', encode(fields)), privateKey)),
    timing,
  )
  report({
    scenario: SCENARIO,
    name: 'Ed25519 sign, hello fields (libsodium)',
    unit: 'ops/s',
    value: sign.ours,
    baseline: { name: 'node:crypto Ed25519', value: sign.baseline },
    bytes: record.signed.length,
  })
  const verify = compareRates(
    () => (sink = verifySigned('hello', record, me.publicKey)),
    () => (sink = nodeVerify(null, signingInput('hello', record.signed), publicKey, record.sig)),
    timing,
  )
  report({
    scenario: SCENARIO,
    name: 'Ed25519 verify, hello fields (libsodium)',
    unit: 'ops/s',
    value: verify.ours,
    baseline: { name: 'node:crypto Ed25519', value: verify.baseline },
    bytes: record.signed.length,
  })
}

/** The identity's Ed25519 key pair as node:crypto key objects (JWK: seed as `d`, public key as `x`). */
function nodeKeys(me: Identity): { privateKey: KeyObject; publicKey: KeyObject } {
  const x = Buffer.from(me.publicKey).toString('base64url')
  const d = Buffer.from(seedOf(me.secretKey)).toString('base64url')
  return {
    privateKey: createPrivateKey({ key: { kty: 'OKP', crv: 'Ed25519', d, x }, format: 'jwk' }),
    publicKey: createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x }, format: 'jwk' }),
  }
}
