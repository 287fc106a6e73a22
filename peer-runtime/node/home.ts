/**
 * The local home (`$AGENTMESH_HOME`, default `~/.agentmesh`): the keys and configuration of the meshes
 * this machine user joined. Directories are 0700, files 0600.
 *
 *     meshes/<mesh>/mesh.json                 the pinned keys and the coordinator's address (MeshConfig)
 *     meshes/<mesh>/member.key                the member key of this home's one join of that mesh
 *     meshes/<mesh>/sessions/<sessionId>.key  stable session keys (DESIGN.md §2: a relaunched session
 *                                             with the same id keeps its key, so queued DMs still reach it)
 *     meshes/<mesh>/stores/<pk prefix>.db     one runtime store (outbox, inbox) per presence key
 *
 * One join per mesh per home: a second one would make a second member and orphan the first one's
 * sessions and queue. Another user on the same machine uses another home.
 */
import { mkdir, readdir, readFile } from 'node:fs/promises'
import { homedir } from 'node:os'
import { dirname, join } from 'node:path'
import { mintSessionAttestation } from '../../protocol/attestation.js'
import { initCrypto } from '../../protocol/crypto.js'
import { parseKeyHex, shortKey, toHex } from '../../protocol/encoding.js'
import { MeshError } from '../../protocol/errors.js'
import { LOCAL_ID_RE, MESH_ID_RE } from '../../protocol/ids.js'
import { createIdentity, type Identity } from '../../protocol/keys.js'
import { SESSION_ATTESTATION_TTL_MS } from '../../protocol/limits.js'
import type { Signed } from '../../protocol/signing.js'
import { loadOrCreateKeyFile, readKeyFile } from '../../protocol/node/keyfile.js'
import { writePrivateFile as writeSecretFile } from '../../protocol/node/secret-file.js'

/** This home's role in a mesh, as the roster knows it. */
export type MeshRole = 'owner' | 'admin' | 'member'

/** What `meshes/<mesh>/mesh.json` holds (keys in hex). */
export interface MeshConfig {
  mesh: string
  /** The coordinator's HTTP(S) base URL (`http://127.0.0.1:7700`). */
  coordinatorUrl: string
  /** Its WebSocket URL (`ws://127.0.0.1:7700/ws`). */
  wsUrl: string
  /** Pinned at join (from the invite) or at creation. */
  coordinatorPk: string
  /** The mesh's genesis key, pinned the same way. */
  ownerPk: string
  /** This home's member key for the mesh (`member.key`). */
  memberPk: string
  role: MeshRole
  displayName?: string
  /** Unix ms. */
  joinedAt: number
}

/** The home directory `$AGENTMESH_HOME` names, else `~/.agentmesh`. */
export function defaultHomeDir(env: NodeJS.ProcessEnv = process.env): string {
  return env['AGENTMESH_HOME'] || join(homedir(), '.agentmesh')
}

/** `meshes/<mesh>` under `home`; refuses a mesh id that is not one (it becomes a path). */
export function meshDir(home: string, mesh: string): string {
  assertMeshId(mesh)
  return join(home, 'meshes', mesh)
}

/** The key file of session `sessionId` (ids are printable ASCII: unsafe characters are %-escaped). */
export function sessionKeyPath(home: string, mesh: string, sessionId: string): string {
  if (!LOCAL_ID_RE.test(sessionId)) {
    throw new MeshError(
      'MESH_ERR_MALFORMED_FRAME',
      `session id ${JSON.stringify(sessionId)} is not 1–128 printable ASCII characters`,
    )
  }
  return join(meshDir(home, mesh), 'sessions', `${fileSafe(sessionId)}.key`)
}

/** The runtime store of presence key `pk`: `stores/<first 16 hex>.db`. */
export function storePath(home: string, mesh: string, pk: Uint8Array): string {
  return join(meshDir(home, mesh), 'stores', `${shortKey(pk)}.db`)
}

/** Creates `dir` and its missing parents with mode 0700. */
export async function makePrivateDir(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 })
}

/** Reads `mesh.json`: `MESH_ERR_NOT_JOINED` when this home has none for `mesh`. */
export async function readMeshConfig(home: string, mesh: string): Promise<MeshConfig> {
  const path = join(meshDir(home, mesh), 'mesh.json')
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (cause) {
    if (errnoCode(cause) === 'ENOENT') {
      throw new MeshError('MESH_ERR_NOT_JOINED', `this home (${home}) has not joined mesh ${mesh}`, {
        details: { mesh, home },
      })
    }
    throw new MeshError('MESH_ERR_KEY_FILE', `cannot read ${path}`, { cause })
  }
  return parseMeshConfig(text, mesh, path)
}

/** Writes `mesh.json` into `dir` (0600, through a temporary file and a rename). */
export async function writeMeshConfig(dir: string, config: MeshConfig): Promise<void> {
  await writePrivateFile(join(dir, 'mesh.json'), JSON.stringify(config, null, 2) + '\n')
}

/** Every mesh this home joined or created, sorted by id. */
export async function listMeshes(home: string): Promise<MeshConfig[]> {
  let names: string[]
  try {
    names = await readdir(join(home, 'meshes'))
  } catch (cause) {
    if (errnoCode(cause) === 'ENOENT') return []
    throw cause
  }
  const out: MeshConfig[] = []
  // Replaced or half-made joins carry a dot in their name, which a mesh id never has.
  for (const name of names.filter((n) => MESH_ID_RE.test(n)).sort()) {
    try {
      out.push(await readMeshConfig(home, name))
    } catch (err) {
      if (!(err instanceof MeshError && err.code === 'MESH_ERR_NOT_JOINED')) throw err
    }
  }
  return out
}

/** This home's member key for `mesh`. */
export async function loadMemberKey(home: string, mesh: string): Promise<Identity> {
  await initCrypto()
  await readMeshConfig(home, mesh) // MESH_ERR_NOT_JOINED rather than a missing key file
  return (await readKeyFile(join(meshDir(home, mesh), 'member.key'), 'member')).identity
}

/** The session key of `sessionId` in `mesh`, created on first use and kept for every later launch. */
export async function loadOrCreateSessionKey(
  home: string,
  mesh: string,
  sessionId: string,
): Promise<Identity> {
  await initCrypto()
  const path = sessionKeyPath(home, mesh, sessionId)
  await readMeshConfig(home, mesh) // a session of a mesh this home never joined is a mistake
  await makePrivateDir(dirname(path))
  return loadOrCreateKeyFile(path, 'session', () => createIdentity('session'), { mesh, sessionId })
}

/**
 * The session key of `sessionId` and its attestation, signed by this home's member key:
 * `[mesh, memberPk, sessionPk, sessionId, now + ttl]` (TTL 12 h by default).
 */
export async function sessionAttestation(
  home: string,
  mesh: string,
  sessionId: string,
  now: number,
  ttlMs: number = SESSION_ATTESTATION_TTL_MS,
): Promise<{ identity: Identity; attestation: Signed; expiresAt: number }> {
  const member = await loadMemberKey(home, mesh)
  const identity = await loadOrCreateSessionKey(home, mesh, sessionId)
  const attestation = mintSessionAttestation({
    mesh,
    member,
    sessionPk: identity.publicKey,
    sessionId,
    now,
    ttlMs,
  })
  return { identity, attestation, expiresAt: now + ttlMs }
}

/**
 * An attestation source for a long-lived presence: it mints a fresh attestation when the last one is past
 * half its TTL (DESIGN.md §2), so every hello after a reconnect presents one with time left.
 */
export function attestationSource(o: {
  mesh: string
  member: Identity
  session: Identity
  sessionId: string
  now: () => number
  ttlMs?: number
}): () => Signed {
  const ttlMs = o.ttlMs ?? SESSION_ATTESTATION_TTL_MS
  let minted: { at: number; attestation: Signed } | undefined
  return () => {
    const now = o.now()
    if (minted === undefined || now - minted.at >= ttlMs / 2) {
      const attestation = mintSessionAttestation({
        mesh: o.mesh,
        member: o.member,
        sessionPk: o.session.publicKey,
        sessionId: o.sessionId,
        now,
        ttlMs,
      })
      minted = { at: now, attestation }
    }
    return minted.attestation
  }
}

/** `MESH_ERR_MALFORMED_FRAME` unless `mesh` is a mesh id (lowercase letters, digits, `-`, `_`). */
export function assertMeshId(mesh: string): void {
  if (!MESH_ID_RE.test(mesh)) {
    throw new MeshError(
      'MESH_ERR_MALFORMED_FRAME',
      `${JSON.stringify(mesh)} is not a mesh id (1–64 of a-z, 0-9, - and _, starting with a letter or digit)`,
      { details: { mesh } },
    )
  }
}

/** Writes a 0600 file (its folder made private first) that a crash never leaves half-written. */
export async function writePrivateFile(path: string, text: string): Promise<void> {
  await makePrivateDir(dirname(path))
  await writeSecretFile(path, text)
}

function parseMeshConfig(text: string, mesh: string, path: string): MeshConfig {
  const bad = (why: string): MeshError =>
    new MeshError('MESH_ERR_KEY_FILE', `${path} is not a valid mesh configuration: ${why}`)
  let data: unknown
  try {
    data = JSON.parse(text)
  } catch {
    throw bad('not JSON')
  }
  if (typeof data !== 'object' || data === null) throw bad('not an object')
  const c = data as Record<string, unknown>
  const str = (k: string): string => {
    if (typeof c[k] !== 'string' || c[k] === '') throw bad(`${k} is missing`)
    return c[k]
  }
  const key = (k: string): string => {
    const v = str(k)
    try {
      parseKeyHex(v)
    } catch {
      throw bad(`${k} is not 64 hex characters`)
    }
    return v
  }
  if (str('mesh') !== mesh) throw bad(`it names mesh ${String(c['mesh'])}`)
  const role = str('role')
  if (role !== 'owner' && role !== 'admin' && role !== 'member') throw bad(`role ${role} is unknown`)
  if (typeof c['joinedAt'] !== 'number') throw bad('joinedAt is missing')
  const config: MeshConfig = {
    mesh,
    coordinatorUrl: str('coordinatorUrl'),
    wsUrl: str('wsUrl'),
    coordinatorPk: key('coordinatorPk'),
    ownerPk: key('ownerPk'),
    memberPk: key('memberPk'),
    role,
    joinedAt: c['joinedAt'],
  }
  if (typeof c['displayName'] === 'string') config.displayName = c['displayName']
  return config
}

/** A session id as a file name: `%XX` for anything but `[A-Za-z0-9_-]` and inner dots. */
function fileSafe(id: string): string {
  return [...id]
    .map((ch, i) =>
      /[A-Za-z0-9_-]/.test(ch) || (ch === '.' && i > 0)
        ? ch
        : `%${ch.charCodeAt(0).toString(16).toUpperCase().padStart(2, '0')}`,
    )
    .join('')
}

export function errnoCode(err: unknown): unknown {
  return typeof err === 'object' && err !== null ? (err as { code?: unknown }).code : undefined
}

/** Hex of a public key, for config files and output. */
export function keyHex(identity: Identity): string {
  return toHex(identity.publicKey)
}
