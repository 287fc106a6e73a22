import { beforeAll, describe, expect, it } from 'vitest'
import { plain } from '../test/support/arbitrary.js'
import { mintServiceAttestation, mintSessionAttestation } from './attestation.js'
import { decode, encode } from './codec.js'
import { initCrypto } from './crypto.js'
import { decodeFrame, encodeFrame } from './frames.js'
import { newChallengeNonce, signHello, verifyHello, type Capabilities, type HelloFields } from './hello.js'
import { createIdentity, type Identity } from './keys.js'
import { SESSION_ATTESTATION_TTL_MS } from './limits.js'
import { thrownCode } from '../test/support/rejection.js'

const NOW = 1_700_000_000_000
const MESH = 'acme'
const CAPS: Capabilities = {
  p2p: true,
  transports: ['webrtc', 'ws-relay'],
  status: 'idle',
  displayName: 'ada',
}

let member: Identity
let session: Identity
let nonce: Uint8Array

beforeAll(async () => {
  await initCrypto()
  member = createIdentity('member')
  session = createIdentity('session')
  nonce = newChallengeNonce()
})

function sessionHello(o: { challengeNonce?: Uint8Array; mesh?: string; attNow?: number } = {}): HelloFields {
  const mesh = o.mesh ?? MESH
  const attestation = mintSessionAttestation({
    mesh,
    member,
    sessionPk: session.publicKey,
    sessionId: 'sess-1',
    now: o.attNow ?? NOW,
  })
  return signHello({
    identity: session,
    mesh,
    role: 'session',
    challengeNonce: o.challengeNonce ?? nonce,
    attestation,
    capabilities: CAPS,
    sessionId: 'sess-1',
    instanceId: 'inst-a',
  })
}

describe('hello', () => {
  it('a session hello verifies and names its member', () => {
    const v = verifyHello(sessionHello(), { challengeNonce: nonce, mesh: MESH, now: NOW })
    expect(v).toMatchObject({
      mesh: MESH,
      role: 'session',
      sessionId: 'sess-1',
      instanceId: 'inst-a',
      capabilities: CAPS,
    })
    expect(plain(v.pk)).toEqual(session.publicKey)
    expect(plain(v.memberPk)).toEqual(member.publicKey)
    expect(v.attestation).toMatchObject({ sessionId: 'sess-1', expiresAt: NOW + SESSION_ATTESTATION_TTL_MS })
  })

  it('a control-plane hello verifies with the member key as its own member', () => {
    const body = signHello({
      identity: member,
      mesh: MESH,
      role: 'control-plane',
      challengeNonce: nonce,
      capabilities: { p2p: false, transports: [] },
      instanceId: 'daemon-1',
    })
    const v = verifyHello(body, { challengeNonce: nonce, now: NOW })
    expect(plain(v.memberPk)).toEqual(member.publicKey)
    expect(v.attestation).toBeUndefined()
    expect(v.sessionId).toBeUndefined()
  })

  it('a service hello verifies against its service attestation', () => {
    const service = createIdentity('service')
    const attestation = mintServiceAttestation({
      mesh: MESH,
      member,
      servicePk: service.publicKey,
      serviceId: 'hook-1',
      type: 'webhook',
      scopes: ['send:dm'],
      now: NOW,
    })
    const body = signHello({
      identity: service,
      mesh: MESH,
      role: 'service',
      challengeNonce: nonce,
      attestation,
      capabilities: { p2p: false, transports: ['webhook'] },
      sessionId: 'hook-1',
      instanceId: 'i',
    })
    const v = verifyHello(body, { challengeNonce: nonce, mesh: MESH, now: NOW })
    expect(v.attestation).toMatchObject({ serviceId: 'hook-1', type: 'webhook', scopes: ['send:dm'] })
    // Its attestation names another service id than the hello: refused.
    const misnamed = resigned(body, service, 'hook-2')
    expect(thrownCode(() => verifyHello(misnamed, { challengeNonce: nonce, now: NOW }))).toBe(
      'MESH_ERR_FIELD_MISMATCH',
    )
  })

  it('survives the frame codec (the frames module spreads helloBodySchema)', () => {
    const body = sessionHello()
    const bytes = encodeFrame({ t: 'hello', reqId: 1, proto: { min: 1, max: 1 }, features: [], ...body })
    const frame = decodeFrame(bytes)
    if (frame.t !== 'hello') throw new Error('not a hello')
    expect(verifyHello(frame, { challengeNonce: nonce, mesh: MESH, now: NOW }).role).toBe('session')
  })

  it('signed for another challenge → MESH_ERR_WRONG_CHALLENGE', () => {
    const body = sessionHello({ challengeNonce: newChallengeNonce() })
    expect(thrownCode(() => verifyHello(body, { challengeNonce: nonce, now: NOW }))).toBe(
      'MESH_ERR_WRONG_CHALLENGE',
    )
  })

  it('for another mesh → MESH_ERR_WRONG_MESH', () => {
    const body = sessionHello({ mesh: 'other' })
    expect(thrownCode(() => verifyHello(body, { challengeNonce: nonce, mesh: MESH, now: NOW }))).toBe(
      'MESH_ERR_WRONG_MESH',
    )
  })

  it('a tampered outer field → MESH_ERR_FIELD_MISMATCH', () => {
    const body = sessionHello()
    const opts = { challengeNonce: nonce, now: NOW }
    expect(thrownCode(() => verifyHello({ ...body, role: 'control-plane' }, opts))).toBe(
      'MESH_ERR_FIELD_MISMATCH',
    )
    expect(thrownCode(() => verifyHello({ ...body, mesh: 'other' }, opts))).toBe('MESH_ERR_FIELD_MISMATCH')
    expect(thrownCode(() => verifyHello({ ...body, instanceId: 'inst-b' }, opts))).toBe(
      'MESH_ERR_FIELD_MISMATCH',
    )
    expect(thrownCode(() => verifyHello({ ...body, sessionId: 'sess-2' }, opts))).toBe(
      'MESH_ERR_FIELD_MISMATCH',
    )
  })

  it('tampered signed bytes → MESH_ERR_BAD_SIGNATURE; another outer pk → MESH_ERR_WRONG_SIGNER', () => {
    const body = sessionHello()
    const signed = Uint8Array.from(body.signed)
    signed[signed.length - 2]! ^= 0x20
    expect(thrownCode(() => verifyHello({ ...body, signed }, { challengeNonce: nonce, now: NOW }))).toBe(
      'MESH_ERR_BAD_SIGNATURE',
    )
    const pk = createIdentity('session').publicKey
    expect(thrownCode(() => verifyHello({ ...body, pk }, { challengeNonce: nonce, now: NOW }))).toBe(
      'MESH_ERR_WRONG_SIGNER',
    )
  })

  it('a session hello with an expired attestation → MESH_ERR_EXPIRED', () => {
    const body = sessionHello({ attNow: NOW - SESSION_ATTESTATION_TTL_MS })
    expect(thrownCode(() => verifyHello(body, { challengeNonce: nonce, now: NOW }))).toBe('MESH_ERR_EXPIRED')
  })

  it('capabilities or attestation swapped after signing → MESH_ERR_FIELD_MISMATCH', () => {
    const body = sessionHello()
    const capabilities = encode({ ...CAPS, displayName: 'mallory' })
    const opts = { challengeNonce: nonce, now: NOW }
    expect(thrownCode(() => verifyHello({ ...body, capabilities }, opts))).toBe('MESH_ERR_FIELD_MISMATCH')
    const attestation = sessionHello({ attNow: NOW + 1 }).attestation
    expect(thrownCode(() => verifyHello({ ...body, attestation }, opts))).toBe('MESH_ERR_FIELD_MISMATCH')
    const { attestation: _dropped, ...withoutAttestation } = body
    expect(thrownCode(() => verifyHello(withoutAttestation, opts))).toBe('MESH_ERR_FIELD_MISMATCH')
  })

  it('a role without its attestation is refused when signing', () => {
    const opts = { identity: session, mesh: MESH, challengeNonce: nonce, capabilities: CAPS, instanceId: 'i' }
    expect(thrownCode(() => signHello({ ...opts, role: 'session', sessionId: 's' }))).toBe(
      'MESH_ERR_MALFORMED_FRAME',
    )
    expect(thrownCode(() => signHello({ ...opts, role: 'control-plane', sessionId: 's' }))).toBe(
      'MESH_ERR_MALFORMED_FRAME',
    )
  })

  it('carries capabilities as msgpack bytes and refuses ones that break the schema', () => {
    expect(decode(sessionHello().capabilities)).toEqual(CAPS)
    const capabilities = { ...CAPS, summary: 'x'.repeat(257) }
    const opts = {
      identity: member,
      mesh: MESH,
      role: 'control-plane' as const,
      challengeNonce: nonce,
      instanceId: 'i',
    }
    expect(thrownCode(() => signHello({ ...opts, capabilities }))).toBe('MESH_ERR_MALFORMED_FRAME')
  })
})

/** Re-signs a service hello whose `sessionId` differs from the service id its attestation names. */
function resigned(body: HelloFields, service: Identity, sessionId: string): HelloFields {
  return signHello({
    identity: service,
    mesh: body.mesh,
    role: 'service',
    challengeNonce: nonce,
    attestation: body.attestation!,
    capabilities: decode(body.capabilities) as Capabilities,
    sessionId,
    instanceId: body.instanceId,
  })
}
