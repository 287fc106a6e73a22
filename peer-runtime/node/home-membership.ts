/**
 * Becoming a member of a mesh from a home (see `home.ts` for the layout): creating a mesh as its owner
 * (the owner key becomes this home's member key for it), signing invites as an owner or admin, and
 * joining with an invite token. Both ways in write the new member key and `mesh.json` into a staging
 * directory and move it into place only once the coordinator agreed, so a failed join leaves nothing
 * behind, and a second join of the same mesh is refused (`MESH_ERR_ALREADY_JOINED`) unless `force`.
 */
import { randomBytes } from 'node:crypto'
import { rename, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { decode, encode } from '../../protocol/codec.js'
import { initCrypto } from '../../protocol/crypto.js'
import { bytesEqual, parseKeyHex, toHex } from '../../protocol/encoding.js'
import { isMeshError, MeshError, type WireError } from '../../protocol/errors.js'
import {
  decodeInviteToken,
  encodeInviteToken,
  openInvite,
  signInvite,
  signJoin,
  verifyInvite,
  type InviteRole,
} from '../../protocol/invite.js'
import { createIdentity, type Identity } from '../../protocol/keys.js'
import { writeKeyFile } from '../../protocol/node/keyfile.js'
import {
  assertMeshId,
  errnoCode,
  loadMemberKey,
  makePrivateDir,
  meshDir,
  readMeshConfig,
  writeMeshConfig,
  type MeshConfig,
  type MeshRole,
} from './home.js'

/** The HTTP and WebSocket addresses of a coordinator, from either form of its URL. */
export function coordinatorUrls(url: string): { http: string; ws: string } {
  let u: URL
  try {
    u = new URL(url)
  } catch {
    throw new MeshError('MESH_ERR_MALFORMED_FRAME', `${JSON.stringify(url)} is not a URL`, {
      details: { url },
    })
  }
  const secure = u.protocol === 'https:' || u.protocol === 'wss:'
  if (!['http:', 'https:', 'ws:', 'wss:'].includes(u.protocol)) {
    throw new MeshError(
      'MESH_ERR_MALFORMED_FRAME',
      `a coordinator URL is http(s) or ws(s), not ${u.protocol}`,
      {
        details: { url },
      },
    )
  }
  let path = u.pathname.replace(/\/+$/, '')
  if (u.protocol.startsWith('ws')) path = path.replace(/\/ws$/, '')
  const base = `${u.host}${path}`
  return { http: `${secure ? 'https' : 'http'}://${base}`, ws: `${secure ? 'wss' : 'ws'}://${base}/ws` }
}

/** Options of `createMesh`. */
export interface CreateMesh {
  home: string
  mesh: string
  /** The coordinator's URL (http(s), or its ws(s) address). */
  coordinatorUrl: string
  /** The operator's admin token; not needed on a coordinator with open registration. */
  adminToken?: string
  displayName?: string
  /** Replace this home's membership of a mesh with the same id. */
  force?: boolean
  now?: number
  signal?: AbortSignal
}

/** Creates `mesh` on the coordinator with a new owner key, which becomes this home's member key. */
export async function createMesh(o: CreateMesh): Promise<MeshConfig> {
  assertMeshId(o.mesh)
  await assertNotJoined(o.home, o.mesh, o.force)
  await initCrypto()
  const urls = coordinatorUrls(o.coordinatorUrl)
  const owner = createIdentity('member')
  return installMembership(o.home, o.mesh, owner, o.force, async () => {
    const reply = await post<{ mesh: string; coordinatorPk: Uint8Array }>(`${urls.http}/v1/meshes`, {
      body: {
        mesh: o.mesh,
        ownerPk: owner.publicKey,
        ...(o.displayName !== undefined && { displayName: o.displayName }),
      },
      ...(o.adminToken !== undefined && { token: o.adminToken }),
      ...(o.signal !== undefined && { signal: o.signal }),
    })
    // Nothing to pin it against yet: the first answer is trusted, and every later hello must match it.
    return {
      mesh: o.mesh,
      coordinatorUrl: urls.http,
      wsUrl: urls.ws,
      coordinatorPk: toHex(reply.coordinatorPk),
      ownerPk: toHex(owner.publicKey),
      memberPk: toHex(owner.publicKey),
      role: 'owner',
      ...(o.displayName !== undefined && { displayName: o.displayName }),
      joinedAt: o.now ?? Date.now(),
    }
  })
}

/** Options of `createInvite`. */
export interface CreateInvite {
  home: string
  mesh: string
  /** Default `member`. */
  role?: InviteRole
  /** Default 1. */
  maxUses?: number
  /** Unix ms. */
  expiresAt: number
}

/** A signed invite as the CLI prints it. */
export interface CreatedInvite {
  token: string
  mesh: string
  inviteId: string
  role: InviteRole
  maxUses: number
  expiresAt: number
  coordinatorUrl: string
}

/** Signs an invite with this home's member key, which must be the mesh's owner or an admin. */
export async function createInvite(o: CreateInvite): Promise<CreatedInvite> {
  const config = await readMeshConfig(o.home, o.mesh)
  if (config.role !== 'owner' && config.role !== 'admin') {
    throw new MeshError(
      'MESH_ERR_NOT_AUTHORIZED',
      `only the owner or an admin invites; this home is a ${config.role} of ${o.mesh}`,
      {
        details: { mesh: o.mesh, role: config.role },
      },
    )
  }
  const member = await loadMemberKey(o.home, o.mesh)
  const invite = signInvite({
    identity: member,
    mesh: o.mesh,
    coordinatorUrl: config.coordinatorUrl,
    coordinatorPk: parseKeyHex(config.coordinatorPk),
    ownerPk: parseKeyHex(config.ownerPk),
    role: o.role ?? 'member',
    expiresAt: o.expiresAt,
    maxUses: o.maxUses ?? 1,
  })
  const f = openInvite(invite)
  return {
    token: encodeInviteToken(invite),
    mesh: f.mesh,
    inviteId: toHex(f.inviteId),
    role: f.role,
    maxUses: f.maxUses,
    expiresAt: f.expiresAt,
    coordinatorUrl: f.coordinatorUrl,
  }
}

/** Options of `joinMesh`. */
export interface JoinMesh {
  home: string
  /** An `am1.` invite token. */
  token: string
  displayName?: string
  /** Another address for the coordinator the invite names (its key is still the invite's). */
  coordinatorUrl?: string
  force?: boolean
  now?: number
  signal?: AbortSignal
}

/**
 * Joins the mesh an invite names with a new member key: checks the invite (signature, expiry), signs the
 * join, posts both, and pins the coordinator and owner keys the invite carries (a coordinator answering
 * with others is refused).
 */
export async function joinMesh(o: JoinMesh): Promise<MeshConfig> {
  await initCrypto()
  const now = o.now ?? Date.now()
  const invite = decodeInviteToken(o.token)
  const f = verifyInvite(invite, now)
  await assertNotJoined(o.home, f.mesh, o.force)
  const urls = coordinatorUrls(o.coordinatorUrl ?? f.coordinatorUrl)
  const member = createIdentity('member')
  return installMembership(o.home, f.mesh, member, o.force, async () => {
    const reply = await post<{ role?: MeshRole; coordinatorPk: Uint8Array; ownerPk: Uint8Array }>(
      `${urls.http}/v1/meshes/${encodeURIComponent(f.mesh)}/join`,
      {
        body: {
          invite: o.token.trim(),
          join: signJoin({ identity: member, inviteId: f.inviteId }),
          ...(o.displayName !== undefined && { displayName: o.displayName }),
        },
        ...(o.signal !== undefined && { signal: o.signal }),
      },
    )
    if (!bytesEqual(reply.coordinatorPk, f.coordinatorPk)) {
      throw new MeshError(
        'MESH_ERR_COORDINATOR_MISMATCH',
        `the coordinator at ${urls.http} is not the one the invite names`,
        {
          details: { expected: toHex(f.coordinatorPk), got: toHex(reply.coordinatorPk) },
        },
      )
    }
    if (!bytesEqual(reply.ownerPk, f.ownerPk)) {
      throw new MeshError('MESH_ERR_WRONG_SIGNER', `mesh ${f.mesh} has another owner than the invite names`, {
        details: { expected: toHex(f.ownerPk), got: toHex(reply.ownerPk) },
      })
    }
    return {
      mesh: f.mesh,
      coordinatorUrl: urls.http,
      wsUrl: urls.ws,
      coordinatorPk: toHex(f.coordinatorPk),
      ownerPk: toHex(f.ownerPk),
      memberPk: toHex(member.publicKey),
      role: reply.role ?? f.role,
      ...(o.displayName !== undefined && { displayName: o.displayName }),
      joinedAt: now,
    }
  })
}

async function assertNotJoined(home: string, mesh: string, force: boolean | undefined): Promise<void> {
  if (force === true) return
  try {
    const existing = await readMeshConfig(home, mesh)
    throw new MeshError(
      'MESH_ERR_ALREADY_JOINED',
      `this home (${home}) already joined mesh ${mesh} as ${existing.memberPk.slice(0, 16)}…; use another --home, or --force to replace it`,
      { details: { mesh, home, memberPk: existing.memberPk } },
    )
  } catch (err) {
    if (isMeshError(err, 'MESH_ERR_NOT_JOINED')) return
    throw err
  }
}

/**
 * Writes the member key into a staging directory, runs `register` (the coordinator call), writes the
 * config it returns, and moves the directory into place (an existing one, with `force`, is kept aside
 * as `<mesh>.replaced-<ms>`).
 */
async function installMembership(
  home: string,
  mesh: string,
  member: Identity,
  force: boolean | undefined,
  register: () => Promise<MeshConfig>,
): Promise<MeshConfig> {
  const final = meshDir(home, mesh)
  const staging = join(home, 'meshes', `.${mesh}.joining-${process.pid}-${randomBytes(4).toString('hex')}`)
  await makePrivateDir(staging)
  try {
    await writeKeyFile(join(staging, 'member.key'), member, { mesh }, { exclusive: true })
    const config = await register()
    await writeMeshConfig(staging, config)
    if (await exists(final)) {
      if (force !== true) await assertNotJoined(home, mesh, false) // joined meanwhile by another process
      await rename(final, `${final}.replaced-${Date.now()}`)
    }
    await rename(staging, final)
    return config
  } finally {
    await rm(staging, { recursive: true, force: true })
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path)
    return true
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return false
    throw err
  }
}

/**
 * One msgpack POST to the coordinator's management API. A refusal (`{error}` with a 4xx/5xx) is thrown
 * as its `MeshError`; no answer at all is `MESH_ERR_COORDINATOR_UNREACHABLE`.
 */
async function post<T>(url: string, o: { body: unknown; token?: string; signal?: AbortSignal }): Promise<T> {
  const headers: Record<string, string> = {
    accept: 'application/msgpack, application/json',
    'content-type': 'application/msgpack',
  }
  if (o.token !== undefined) headers['authorization'] = `Bearer ${o.token}`
  const signal = o.signal ?? AbortSignal.timeout(15_000)
  let res: Response
  let bytes: Uint8Array
  try {
    res = await fetch(url, { method: 'POST', headers, body: new Uint8Array(encode(o.body)), signal })
    bytes = new Uint8Array(await res.arrayBuffer())
  } catch (cause) {
    const why = cause instanceof Error && cause.cause instanceof Error ? cause.cause.message : String(cause)
    throw new MeshError('MESH_ERR_COORDINATOR_UNREACHABLE', `no answer from ${new URL(url).origin}: ${why}`, {
      details: { url },
      cause,
    })
  }
  const body = readBody(bytes, res.headers.get('content-type') ?? '')
  if (res.ok) return body as T
  const wire = (body as { error?: WireError } | undefined)?.error
  if (wire !== undefined && typeof wire.code === 'string') throw MeshError.fromWire(wire)
  throw new MeshError('MESH_ERR_INTERNAL', `${url} answered HTTP ${res.status}`, {
    details: { status: res.status },
  })
}

function readBody(bytes: Uint8Array, contentType: string): unknown {
  if (bytes.length === 0) return undefined
  try {
    if (contentType.includes('msgpack')) return decode(bytes)
    return JSON.parse(new TextDecoder().decode(bytes))
  } catch {
    return undefined
  }
}
