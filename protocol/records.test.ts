import { beforeAll, describe, expect, it } from 'vitest'
import { signAdminRequest, verifyAdminRequest, type AdminRequest } from './admin.js'
import { encode } from './codec.js'
import { initCrypto } from './crypto.js'
import { bytesEqual } from './encoding.js'
import { decodeFrame, encodeFrame } from './frames.js'
import { newChallengeNonce } from './hello.js'
import { createIdentity, type Identity } from './keys.js'
import {
  fingerprintsFromSdp,
  fingerprintsMatch,
  signP2pSignature,
  verifyP2pSignature,
  type DtlsFingerprint,
} from './p2p-signature.js'
import type { RosterRole } from './roster.js'
import type { Signed } from './signing.js'
import { applies, signSystemEvent, verifySystemEvent } from './system-event.js'
import { thrownCode } from '../test/support/rejection.js'

const NOW = 1_700_000_000_000
const MESH = 'acme'

let admin: Identity
let member: Identity
let coordinator: Identity
let alice: Identity
let bob: Identity

beforeAll(async () => {
  await initCrypto()
  admin = createIdentity('member')
  member = createIdentity('member')
  coordinator = createIdentity('coordinator')
  alice = createIdentity('session')
  bob = createIdentity('session')
})

function tamper<T extends Signed>(record: T): T {
  const signed = Uint8Array.from(record.signed)
  signed[signed.length - 1]! ^= 1
  return { ...record, signed }
}

describe('admin requests', () => {
  let nonce: Uint8Array
  let roleOf: (pk: Uint8Array) => RosterRole | undefined
  beforeAll(() => {
    nonce = newChallengeNonce()
    roleOf = (pk) =>
      bytesEqual(pk, admin.publicKey) ? 'admin' : bytesEqual(pk, member.publicKey) ? 'member' : undefined
  })

  function request(by: Identity = admin, challengeNonce: Uint8Array = nonce): AdminRequest {
    return signAdminRequest({
      identity: by,
      mesh: MESH,
      method: 'kick',
      args: { pk: member.publicKey, reason: 'spam' },
      challengeNonce,
    })
  }

  function verify(req: AdminRequest) {
    return verifyAdminRequest(req, { challengeNonce: nonce, mesh: MESH, roleOf, allowed: ['owner', 'admin'] })
  }

  it('verifies and decodes its arguments', () => {
    const v = verify(request())
    expect(v).toMatchObject({ method: 'kick', role: 'admin', args: { reason: 'spam' } })
  })

  it('travels in an admin frame', () => {
    const frame = decodeFrame(encodeFrame({ t: 'admin', reqId: 5, ...request() }))
    if (frame.t !== 'admin') throw new Error('not an admin frame')
    expect(verify(frame)).toMatchObject({ method: 'kick', role: 'admin' })
  })

  it('refuses another challenge, other args, another mesh and a non-admin signer', () => {
    expect(thrownCode(() => verify(request(admin, newChallengeNonce())))).toBe('MESH_ERR_WRONG_CHALLENGE')
    const req = request()
    expect(thrownCode(() => verify({ ...req, args: encode({ pk: admin.publicKey, reason: 'spam' }) }))).toBe(
      'MESH_ERR_FIELD_MISMATCH',
    )
    expect(thrownCode(() => verify({ ...req, method: 'ban' }))).toBe('MESH_ERR_FIELD_MISMATCH')
    const elsewhere = signAdminRequest({
      identity: admin,
      mesh: 'other',
      method: 'kick',
      args: null,
      challengeNonce: nonce,
    })
    expect(thrownCode(() => verify(elsewhere))).toBe('MESH_ERR_WRONG_MESH')
    expect(thrownCode(() => verify(request(member)))).toBe('MESH_ERR_NOT_AUTHORIZED')
    expect(thrownCode(() => verify(request(createIdentity('member'))))).toBe('MESH_ERR_NOT_AUTHORIZED')
    expect(thrownCode(() => verify(tamper(req)))).toBe('MESH_ERR_BAD_SIGNATURE')
  })
})

describe('system events', () => {
  function event(prevVersion = 6, by: Identity = coordinator): Signed {
    return signSystemEvent({
      coordinator: by,
      mesh: MESH,
      version: prevVersion + 1,
      prevVersion,
      kind: 'roster',
      body: { records: [new Uint8Array([1, 2, 3])] },
    })
  }

  it('verifies against the coordinator key and applies on its previous version only', () => {
    const f = verifySystemEvent(event(), { coordinatorPk: coordinator.publicKey, mesh: MESH })
    expect(f).toMatchObject({ mesh: MESH, version: 7, prevVersion: 6, kind: 'roster' })
    expect(applies(f, 6)).toBe(true)
    expect(applies(f, 5)).toBe(false)
    expect(applies(f, 7)).toBe(false)
  })

  it('refuses tampered events, other signers and other meshes', () => {
    const opts = { coordinatorPk: coordinator.publicKey, mesh: MESH }
    expect(thrownCode(() => verifySystemEvent(tamper(event()), opts))).toBe('MESH_ERR_BAD_SIGNATURE')
    expect(thrownCode(() => verifySystemEvent(event(6, createIdentity('coordinator')), opts))).toBe(
      'MESH_ERR_BAD_SIGNATURE',
    )
    expect(thrownCode(() => verifySystemEvent(event(), { ...opts, mesh: 'other' }))).toBe(
      'MESH_ERR_WRONG_MESH',
    )
    const stuck = () =>
      signSystemEvent({ coordinator, mesh: MESH, version: 3, prevVersion: 3, kind: 'x', body: null })
    expect(thrownCode(stuck)).toBe('MESH_ERR_MALFORMED_FRAME')
  })
})

// Two media sections (audio is not used by agentmesh, but browsers may offer it) and a session-level
// fingerprint; the data channel section repeats the session one in lowercase, another algorithm differs.
const SDP = [
  'v=0',
  'o=- 4611731400430051336 2 IN IP4 127.0.0.1',
  's=-',
  't=0 0',
  'a=group:BUNDLE 0 1',
  'a=extmap-allow-mixed',
  'a=fingerprint:sha-256 D1:2C:8E:0F:5B:77:A0:13:64:9E:BD:33:1A:0C:FE:42:7D:98:E6:21:5F:40:AB:93:0E:C7:12:6B:D4:80:39:F5',
  'a=msid-semantic: WMS',
  'm=audio 9 UDP/TLS/RTP/SAVPF 111',
  'c=IN IP4 0.0.0.0',
  'a=ice-ufrag:8hhY',
  'a=ice-pwd:asd88fgpdd777uzjYhagZg',
  'a=fingerprint:SHA-256 d1:2c:8e:0f:5b:77:a0:13:64:9e:bd:33:1a:0c:fe:42:7d:98:e6:21:5f:40:ab:93:0e:c7:12:6b:d4:80:39:f5',
  'a=setup:actpass',
  'a=mid:0',
  'a=rtpmap:111 opus/48000/2',
  'm=application 9 UDP/DTLS/SCTP webrtc-datachannel',
  'c=IN IP4 0.0.0.0',
  'a=ice-ufrag:8hhY',
  'a=ice-pwd:asd88fgpdd777uzjYhagZg',
  'a=fingerprint:sha-1 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB',
  'a=setup:actpass',
  'a=mid:1',
  'a=sctp-port:5000',
  'a=max-message-size:262144',
  '',
].join('\r\n')

const SHA256 =
  'D1:2C:8E:0F:5B:77:A0:13:64:9E:BD:33:1A:0C:FE:42:7D:98:E6:21:5F:40:AB:93:0E:C7:12:6B:D4:80:39:F5'
const SHA1 = '4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB'

describe('SDP fingerprints', () => {
  it('extracts every fingerprint, session and media level, normalized and deduplicated', () => {
    expect(fingerprintsFromSdp(SDP)).toEqual([
      { alg: 'sha-256', value: SHA256 },
      { alg: 'sha-1', value: SHA1 },
    ])
    expect(fingerprintsFromSdp(SDP.replaceAll('\r\n', '\n'))).toHaveLength(2)
    expect(fingerprintsFromSdp('v=0\r\ns=-\r\n')).toEqual([])
  })

  it('matches only the same set', () => {
    const fromSdp = fingerprintsFromSdp(SDP)
    const reversed: DtlsFingerprint[] = [
      { alg: 'SHA-1', value: SHA1.toLowerCase() },
      { alg: 'sha-256', value: SHA256 },
    ]
    expect(fingerprintsMatch(reversed, fromSdp)).toBe(true)
    expect(fingerprintsMatch([{ alg: 'sha-256', value: SHA256 }], fromSdp)).toBe(false)
    const swapped = fingerprintsFromSdp(SDP.replace('4A:AD', '4A:AE'))
    expect(fingerprintsMatch(swapped, fromSdp)).toBe(false)
    expect(fingerprintsMatch([], [])).toBe(false)
  })
})

describe('p2p offer and answer signatures', () => {
  function offer(o: { now?: number; ttlMs?: number; by?: Identity; sdp?: string } = {}): Signed {
    return signP2pSignature({
      identity: o.by ?? alice,
      role: 'offer',
      mesh: MESH,
      to: bob.publicKey,
      sigId: 'sig-1',
      dtlsFingerprints: fingerprintsFromSdp(o.sdp ?? SDP),
      now: o.now ?? NOW,
      ...(o.ttlMs !== undefined && { ttlMs: o.ttlMs }),
    })
  }
  const expected = () => ({
    role: 'offer' as const,
    mesh: MESH,
    from: alice.publicKey,
    to: bob.publicKey,
    sigId: 'sig-1',
    sdp: SDP,
    now: NOW,
  })

  it('verifies against the sender key and the SDP', () => {
    const f = verifyP2pSignature(offer(), expected())
    expect(f).toMatchObject({ role: 'offer', sigId: 'sig-1', expiresAt: NOW + 60_000 })
    expect(f.dtlsFingerprints).toHaveLength(2)
  })

  it('refuses tampered bytes, another signer and the other purpose', () => {
    expect(thrownCode(() => verifyP2pSignature(tamper(offer()), expected()))).toBe('MESH_ERR_BAD_SIGNATURE')
    expect(thrownCode(() => verifyP2pSignature(offer({ by: createIdentity('session') }), expected()))).toBe(
      'MESH_ERR_WRONG_SIGNER',
    )
    expect(thrownCode(() => verifyP2pSignature(offer(), { ...expected(), role: 'answer' }))).toBe(
      'MESH_ERR_BAD_SIGNATURE',
    )
  })

  it('refuses an expired offer and one living too long', () => {
    expect(thrownCode(() => verifyP2pSignature(offer(), { ...expected(), now: NOW + 60_000 }))).toBe(
      'MESH_ERR_EXPIRED',
    )
    expect(
      thrownCode(() => verifyP2pSignature(offer({ ttlMs: 120_000 }), { ...expected(), maxTtlMs: 60_000 })),
    ).toBe('MESH_ERR_TTL_TOO_LONG')
  })

  it('refuses another recipient, sigId, mesh or an SDP with other fingerprints', () => {
    expect(thrownCode(() => verifyP2pSignature(offer(), { ...expected(), to: alice.publicKey }))).toBe(
      'MESH_ERR_FIELD_MISMATCH',
    )
    expect(thrownCode(() => verifyP2pSignature(offer(), { ...expected(), sigId: 'sig-2' }))).toBe(
      'MESH_ERR_FIELD_MISMATCH',
    )
    expect(thrownCode(() => verifyP2pSignature(offer(), { ...expected(), mesh: 'other' }))).toBe(
      'MESH_ERR_WRONG_MESH',
    )
    const otherSdp = SDP.replace('4A:AD:B9', '00:AD:B9')
    expect(thrownCode(() => verifyP2pSignature(offer(), { ...expected(), sdp: otherSdp }))).toBe(
      'MESH_ERR_FIELD_MISMATCH',
    )
    const fewer = SDP.split('\r\n')
      .filter((l) => !l.startsWith('a=fingerprint:sha-1'))
      .join('\r\n')
    expect(thrownCode(() => verifyP2pSignature(offer(), { ...expected(), sdp: fewer }))).toBe(
      'MESH_ERR_FIELD_MISMATCH',
    )
  })

  it('an answer signs its own purpose', () => {
    const answer = signP2pSignature({
      identity: bob,
      role: 'answer',
      mesh: MESH,
      to: alice.publicKey,
      sigId: 'sig-1',
      dtlsFingerprints: fingerprintsFromSdp(SDP),
      now: NOW,
    })
    const opts = { ...expected(), role: 'answer' as const, from: bob.publicKey, to: alice.publicKey }
    expect(verifyP2pSignature(answer, opts).role).toBe('answer')
    expect(thrownCode(() => verifyP2pSignature(answer, { ...opts, role: 'offer' }))).toBe(
      'MESH_ERR_BAD_SIGNATURE',
    )
  })

  it('refuses to sign an SDP without fingerprints', () => {
    expect(thrownCode(() => offer({ sdp: 'v=0\r\n' }))).toBe('MESH_ERR_MALFORMED_FRAME')
  })
})
