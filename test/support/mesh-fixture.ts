/**
 * Keys and signed records for coordinator tests, built without a coordinator: owners, attested session
 * and service keys, invites, joins and roster records, plus `httpMsgpack` for the management API. Every
 * helper but `httpMsgpack` is synchronous, so call `await initCrypto()` once first (a `beforeAll`).
 */
import {
  createIdentity,
  decode,
  encode,
  mintServiceAttestation,
  mintSessionAttestation,
  openInvite,
  randomBytes,
  signInvite,
  signJoin,
  signRosterRecord,
  toHex,
  type Identity,
  type Invite,
  type InviteRole,
  type JoinRecord,
  type RosterRecord,
  type ServiceType,
  type Signed,
  type SignRosterRecord,
} from '../../protocol/index.js'

/** An attested key, shaped to spread into `MeshClient.connect` options beside `mesh`. */
export interface AttestedKey<R extends 'session' | 'service'> {
  role: R
  identity: Identity
  attestation: Signed
  /** The session id, or for a service its service id (the hello carries both as `sessionId`). */
  sessionId: string
}

/** A new member key, e.g. the owner of a mesh about to be created. */
export function newOwner(): Identity {
  return createIdentity('member')
}

/** A session key attested by `member` (default TTL 12 h from `now`, default now `Date.now()`). */
export function session(
  member: Identity,
  mesh: string,
  o: { sessionId?: string; ttlMs?: number; now?: number } = {},
): AttestedKey<'session'> {
  const identity = createIdentity('session')
  const sessionId = o.sessionId ?? `s-${toHex(randomBytes(4))}`
  const attestation = mintSessionAttestation({
    mesh,
    member,
    sessionPk: identity.publicKey,
    sessionId,
    now: o.now ?? Date.now(),
    ...(o.ttlMs !== undefined && { ttlMs: o.ttlMs }),
  })
  return { role: 'session', identity, attestation, sessionId }
}

/** A service key attested by its owning `member` (defaults: type `other`, no scopes, TTL 30 days). */
export function service(
  member: Identity,
  mesh: string,
  o: { serviceId?: string; type?: ServiceType; scopes?: string[]; ttlMs?: number; now?: number } = {},
): AttestedKey<'service'> {
  const identity = createIdentity('service')
  const sessionId = o.serviceId ?? `svc-${toHex(randomBytes(4))}`
  const attestation = mintServiceAttestation({
    mesh,
    member,
    servicePk: identity.publicKey,
    serviceId: sessionId,
    type: o.type ?? 'other',
    scopes: o.scopes ?? [],
    now: o.now ?? Date.now(),
    ...(o.ttlMs !== undefined && { ttlMs: o.ttlMs }),
  })
  return { role: 'service', identity, attestation, sessionId }
}

/** Options of `invite`. */
export interface InviteOptions {
  /** The owner's or an admin's member key. */
  signer: Identity
  mesh: string
  coordinatorUrl: string
  coordinatorPk: Uint8Array
  ownerPk: Uint8Array
  /** Default `member`. */
  role?: InviteRole
  /** Default one hour from now. */
  expiresAt?: number
  /** Default 1. */
  maxUses?: number
}

/** A signed invite. */
export function invite(o: InviteOptions): Invite {
  return signInvite({
    identity: o.signer,
    mesh: o.mesh,
    coordinatorUrl: o.coordinatorUrl,
    coordinatorPk: o.coordinatorPk,
    ownerPk: o.ownerPk,
    role: o.role ?? 'member',
    expiresAt: o.expiresAt ?? Date.now() + 60 * 60 * 1000,
    maxUses: o.maxUses ?? 1,
  })
}

/** `newMember`'s join signature for `inv` (the invite's id is read from its signed fields). */
export function joinRecord(newMember: Identity, inv: Invite): JoinRecord {
  return signJoin({ identity: newMember, inviteId: openInvite(inv).inviteId })
}

/** A roster record signed by `signer` (default `issuedAt`: now). */
export function rosterRecord(
  o: Omit<SignRosterRecord, 'identity' | 'issuedAt'> & { signer: Identity; issuedAt?: number },
): RosterRecord {
  const { signer, issuedAt, ...rest } = o
  return signRosterRecord({ ...rest, identity: signer, issuedAt: issuedAt ?? Date.now() })
}

/** An HTTP reply: the status and the body decoded from msgpack, else JSON, else text (undefined when empty). */
export interface HttpReply<T = unknown> {
  status: number
  contentType: string
  body: T
}

/**
 * One HTTP request to the management API: the body as msgpack (`content-type: application/msgpack`),
 * an optional bearer token, and a 5 s timeout unless `signal` says otherwise. Errors come back as
 * `{error: {code, message, details?}}` with a 4xx or 5xx status; this never throws on a status.
 */
export async function httpMsgpack<T = unknown>(
  url: string,
  o: { method: string; body?: unknown; token?: string; signal?: AbortSignal },
): Promise<HttpReply<T>> {
  const headers: Record<string, string> = { accept: 'application/msgpack, application/json' }
  if (o.token !== undefined) headers.authorization = `Bearer ${o.token}`
  const init: RequestInit = { method: o.method, headers, signal: o.signal ?? AbortSignal.timeout(5000) }
  if (o.body !== undefined) {
    headers['content-type'] = 'application/msgpack'
    init.body = new Uint8Array(encode(o.body))
  }
  const res = await fetch(url, init)
  const contentType = res.headers.get('content-type') ?? ''
  const bytes = new Uint8Array(await res.arrayBuffer())
  let body: unknown
  if (bytes.length === 0) body = undefined
  else if (contentType.includes('msgpack')) body = decode(bytes)
  else {
    const text = new TextDecoder().decode(bytes)
    try {
      body = JSON.parse(text)
    } catch {
      body = text
    }
  }
  return { status: res.status, contentType, body: body as T }
}
