import { beforeAll, describe, expect, it } from 'vitest'
import { plain } from '../test/support/arbitrary.js'
import {
  attestationNeedsRemint,
  attestedMember,
  mintServiceAttestation,
  mintSessionAttestation,
  remintAt,
  SERVICE_ATTESTATION_MAX_TTL_MS,
  verifyServiceAttestation,
  verifySessionAttestation,
} from './attestation.js'
import { initCrypto } from './crypto.js'
import { createIdentity, type Identity } from './keys.js'
import { SESSION_ATTESTATION_MAX_TTL_MS, SESSION_ATTESTATION_TTL_MS } from './limits.js'
import { signFields, type Signed } from './signing.js'
import { thrownCode } from '../test/support/rejection.js'

const HOUR = 60 * 60 * 1000
const NOW = 1_700_000_000_000
const MESH = 'acme'

let member: Identity
let other: Identity
let session: Identity

beforeAll(async () => {
  await initCrypto()
  member = createIdentity('member')
  other = createIdentity('member')
  session = createIdentity('session')
})

function flipByte(record: Signed, index: number): Signed {
  const signed = Uint8Array.from(record.signed)
  signed[index]! ^= 0x01
  return { signed, sig: record.sig }
}

function mint(o: { now?: number; ttlMs?: number; by?: Identity } = {}): Signed {
  return mintSessionAttestation({
    mesh: MESH,
    member: o.by ?? member,
    sessionPk: session.publicKey,
    sessionId: 'sess-1',
    now: o.now ?? NOW,
    ...(o.ttlMs !== undefined && { ttlMs: o.ttlMs }),
  })
}

describe('session attestation', () => {
  it('verifies and returns its fields', () => {
    const fields = verifySessionAttestation(mint(), {
      mesh: MESH,
      memberPk: member.publicKey,
      sessionPk: session.publicKey,
      sessionId: 'sess-1',
      now: NOW + HOUR,
    })
    expect(plain(fields)).toEqual({
      mesh: MESH,
      memberPk: member.publicKey,
      sessionPk: session.publicKey,
      sessionId: 'sess-1',
      expiresAt: NOW + SESSION_ATTESTATION_TTL_MS,
    })
    expect(plain(attestedMember(mint()))).toEqual(member.publicKey)
  })

  it('refuses an expired attestation with MESH_ERR_EXPIRED', () => {
    const att = mint()
    const at = NOW + SESSION_ATTESTATION_TTL_MS
    expect(
      thrownCode(() => verifySessionAttestation(att, { mesh: MESH, memberPk: member.publicKey, now: at })),
    ).toBe('MESH_ERR_EXPIRED')
  })

  it('refuses one expiring beyond the cap with MESH_ERR_TTL_TOO_LONG', () => {
    // A minter that ignores the cap: signed by hand with 25 h of life.
    const att = signFields(
      'session-attestation',
      [MESH, member.publicKey, session.publicKey, 'sess-1', NOW + 25 * HOUR],
      member.secretKey,
    )
    const opts = { mesh: MESH, memberPk: member.publicKey, now: NOW }
    expect(thrownCode(() => verifySessionAttestation(att, opts))).toBe('MESH_ERR_TTL_TOO_LONG')
    expect(thrownCode(() => verifySessionAttestation(mint(), { ...opts, maxTtlMs: HOUR }))).toBe(
      'MESH_ERR_TTL_TOO_LONG',
    )
    // Minting refuses it up front.
    expect(thrownCode(() => mint({ ttlMs: SESSION_ATTESTATION_MAX_TTL_MS + 1 }))).toBe(
      'MESH_ERR_TTL_TOO_LONG',
    )
  })

  it('tells a signature by another member (WRONG_SIGNER) from tampered bytes (BAD_SIGNATURE)', () => {
    const byOther = mint({ by: other })
    const opts = { mesh: MESH, memberPk: member.publicKey, now: NOW }
    expect(thrownCode(() => verifySessionAttestation(byOther, opts))).toBe('MESH_ERR_WRONG_SIGNER')
    const att = mint()
    const last = att.signed.length - 1
    expect(thrownCode(() => verifySessionAttestation(flipByte(att, last), opts))).toBe(
      'MESH_ERR_BAD_SIGNATURE',
    )
    expect(thrownCode(() => verifySessionAttestation(flipByte(att, 0), opts))).toBe('MESH_ERR_BAD_SIGNATURE')
  })

  it('refuses an array naming another member than its signer with WRONG_SIGNER', () => {
    const att = signFields(
      'session-attestation',
      [MESH, other.publicKey, session.publicKey, 'sess-1', NOW + HOUR],
      member.secretKey,
    )
    expect(
      thrownCode(() => verifySessionAttestation(att, { mesh: MESH, memberPk: member.publicKey, now: NOW })),
    ).toBe('MESH_ERR_WRONG_SIGNER')
  })

  it('refuses a session key that is not a valid point with MESH_ERR_MALFORMED_KEY', () => {
    const bad = new Uint8Array(32).fill(0xff)
    expect(
      thrownCode(() =>
        mintSessionAttestation({ mesh: MESH, member, sessionPk: bad, sessionId: 's', now: NOW }),
      ),
    ).toBe('MESH_ERR_MALFORMED_KEY')
    const att = signFields(
      'session-attestation',
      [MESH, member.publicKey, bad, 's', NOW + HOUR],
      member.secretKey,
    )
    expect(
      thrownCode(() => verifySessionAttestation(att, { mesh: MESH, memberPk: member.publicKey, now: NOW })),
    ).toBe('MESH_ERR_MALFORMED_KEY')
  })

  it('refuses another mesh with MESH_ERR_WRONG_MESH', () => {
    expect(
      thrownCode(() =>
        verifySessionAttestation(mint(), { mesh: 'other', memberPk: member.publicKey, now: NOW }),
      ),
    ).toBe('MESH_ERR_WRONG_MESH')
  })

  it('refuses another session key or id than expected with MESH_ERR_FIELD_MISMATCH', () => {
    const opts = { mesh: MESH, memberPk: member.publicKey, now: NOW }
    const stranger = createIdentity('session').publicKey
    expect(thrownCode(() => verifySessionAttestation(mint(), { ...opts, sessionPk: stranger }))).toBe(
      'MESH_ERR_FIELD_MISMATCH',
    )
    expect(thrownCode(() => verifySessionAttestation(mint(), { ...opts, sessionId: 'sess-2' }))).toBe(
      'MESH_ERR_FIELD_MISMATCH',
    )
  })

  it('needs a re-mint from half its TTL on', () => {
    const fields = { expiresAt: NOW + SESSION_ATTESTATION_TTL_MS }
    expect(remintAt(fields.expiresAt)).toBe(NOW + SESSION_ATTESTATION_TTL_MS / 2)
    expect(attestationNeedsRemint(fields, NOW)).toBe(false)
    expect(attestationNeedsRemint(fields, NOW + 6 * HOUR - 1)).toBe(false)
    expect(attestationNeedsRemint(fields, NOW + 6 * HOUR)).toBe(true)
    expect(attestationNeedsRemint({ expiresAt: NOW + 2 * HOUR }, NOW + HOUR, 2 * HOUR)).toBe(true)
  })
})

describe('service attestation', () => {
  let service: Identity
  beforeAll(() => {
    service = createIdentity('service')
  })

  function mintService(o: { ttlMs?: number } = {}): Signed {
    return mintServiceAttestation({
      mesh: MESH,
      member,
      servicePk: service.publicKey,
      serviceId: 'hook-1',
      type: 'webhook',
      scopes: ['send:dm', 'read:peers'],
      now: NOW,
      ...o,
    })
  }

  it('verifies with its type and scopes, defaulting to 30 days of life', () => {
    const f = verifyServiceAttestation(mintService(), {
      mesh: MESH,
      memberPk: member.publicKey,
      servicePk: service.publicKey,
      serviceId: 'hook-1',
      now: NOW,
    })
    expect(f).toMatchObject({
      type: 'webhook',
      scopes: ['send:dm', 'read:peers'],
      expiresAt: NOW + 30 * 24 * HOUR,
    })
  })

  it('has the session attestation error set', () => {
    const opts = { mesh: MESH, memberPk: member.publicKey, now: NOW }
    const att = mintService()
    expect(thrownCode(() => verifyServiceAttestation(att, { ...opts, now: NOW + 31 * 24 * HOUR }))).toBe(
      'MESH_ERR_EXPIRED',
    )
    expect(thrownCode(() => verifyServiceAttestation(att, { ...opts, maxTtlMs: 24 * HOUR }))).toBe(
      'MESH_ERR_TTL_TOO_LONG',
    )
    expect(thrownCode(() => mintService({ ttlMs: SERVICE_ATTESTATION_MAX_TTL_MS + 1 }))).toBe(
      'MESH_ERR_TTL_TOO_LONG',
    )
    expect(thrownCode(() => verifyServiceAttestation(att, { ...opts, memberPk: other.publicKey }))).toBe(
      'MESH_ERR_WRONG_SIGNER',
    )
    expect(thrownCode(() => verifyServiceAttestation(flipByte(att, 3), opts))).toBe('MESH_ERR_BAD_SIGNATURE')
    expect(thrownCode(() => verifyServiceAttestation(att, { ...opts, mesh: 'elsewhere' }))).toBe(
      'MESH_ERR_WRONG_MESH',
    )
    expect(thrownCode(() => verifyServiceAttestation(att, { ...opts, serviceId: 'hook-2' }))).toBe(
      'MESH_ERR_FIELD_MISMATCH',
    )
    // A session attestation is not a service attestation: the purpose differs.
    expect(thrownCode(() => verifyServiceAttestation(mint(), opts))).toBe('MESH_ERR_BAD_SIGNATURE')
  })

  it('refuses more than 32 scopes or an unknown type when minting', () => {
    const scopes = Array.from({ length: 33 }, (_, i) => `s${i}`)
    expect(thrownCode(() => mintServiceAttestation({ ...baseService(), scopes }))).toBe(
      'MESH_ERR_MALFORMED_FRAME',
    )
    const type = 'daemon' as 'other'
    expect(thrownCode(() => mintServiceAttestation({ ...baseService(), type }))).toBe(
      'MESH_ERR_MALFORMED_FRAME',
    )
  })

  function baseService() {
    return {
      mesh: MESH,
      member,
      servicePk: service.publicKey,
      serviceId: 'cron-1',
      type: 'cron' as const,
      scopes: [],
      now: NOW,
    }
  }
})
