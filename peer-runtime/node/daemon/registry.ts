/**
 * The daemon's registered sessions, persisted in `daemon-sessions.json` (0600) so they survive a restart:
 * the mesh, the session id, the display name and the SHA-256 of the session's current token (the token
 * itself is only ever in the caller's hands). Keys are not here: the home keeps one stable key per
 * (mesh, session id) in `meshes/<mesh>/sessions/`.
 */
import { readFile } from 'node:fs/promises'
import { MeshError } from '../../../protocol/errors.js'
import { errnoCode, writePrivateFile } from '../home.js'

/** One registration. */
export interface Registration {
  mesh: string
  sessionId: string
  displayName?: string
  /** SHA-256 (hex) of the session token. */
  tokenHash: string
  /** Unix ms of the first registration of this (mesh, session id). */
  registeredAt: number
}

/** `mesh/sessionId`: how registrations are keyed in memory. */
export function registrationKey(mesh: string, sessionId: string): string {
  return `${mesh}/${sessionId}`
}

/** The registrations in `path` (none when the file is missing). */
export async function readRegistrations(path: string): Promise<Registration[]> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return []
    throw err
  }
  let data: unknown
  try {
    data = JSON.parse(text)
  } catch (cause) {
    throw new MeshError('MESH_ERR_KEY_FILE', `${path} is not JSON; move it aside to start afresh`, { cause })
  }
  const list = (data as { sessions?: unknown } | null)?.sessions
  if (!Array.isArray(list)) throw new MeshError('MESH_ERR_KEY_FILE', `${path} has no sessions list`)
  return list.filter(isRegistration)
}

/** Replaces the file with `registrations` (through a temporary file, fsync and a rename). */
export async function writeRegistrations(path: string, registrations: Iterable<Registration>): Promise<void> {
  const sessions = [...registrations].sort((a, b) => a.registeredAt - b.registeredAt)
  await writePrivateFile(path, JSON.stringify({ version: 1, sessions }, null, 2) + '\n')
}

function isRegistration(v: unknown): v is Registration {
  if (typeof v !== 'object' || v === null) return false
  const r = v as Record<string, unknown>
  return (
    typeof r['mesh'] === 'string' &&
    typeof r['sessionId'] === 'string' &&
    typeof r['tokenHash'] === 'string' &&
    typeof r['registeredAt'] === 'number' &&
    (r['displayName'] === undefined || typeof r['displayName'] === 'string')
  )
}
