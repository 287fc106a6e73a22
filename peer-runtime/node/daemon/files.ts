/**
 * What the daemon keeps in the home, beside the meshes (`home.ts`), all 0600:
 *
 *     daemon.lock            the running daemon's pid, boot id and start time: two daemons never share a home
 *     daemon.sock            the IPC Unix socket
 *     daemon.json            {pid, port, socket, startedAt}: where a client finds the loopback port
 *     daemon.token           the admin token (registers sessions), created on the first `daemon up`
 *     daemon-sessions.json   the registered sessions (token hashes, never tokens), so they survive restarts
 */
import { loadOrCreateTokenFile, readTokenFile } from '../../../protocol/node/secret-file.js'
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { MeshError } from '../../../protocol/errors.js'
import { errnoCode, makePrivateDir, writePrivateFile } from '../home.js'
import { acquirePidLock, liveHolder, pidRuns } from '../pid-lock.js'

/** The daemon's files in `home`. */
export interface DaemonPaths {
  home: string
  lock: string
  socket: string
  info: string
  token: string
  sessions: string
}

export function daemonPaths(home: string): DaemonPaths {
  return {
    home,
    lock: join(home, 'daemon.lock'),
    socket: join(home, 'daemon.sock'),
    info: join(home, 'daemon.json'),
    token: join(home, 'daemon.token'),
    sessions: join(home, 'daemon-sessions.json'),
  }
}

/** What `daemon.json` holds while a daemon runs. */
export interface DaemonInfo {
  pid: number
  /** The loopback port of the HTTP listener (`127.0.0.1:<port>`). */
  port: number
  socket: string
  /** Unix ms. */
  startedAt: number
  version: string
}

/** `daemon.json`, or undefined when there is none (no daemon ever ran, or it stopped cleanly). */
export async function readDaemonInfo(home: string): Promise<DaemonInfo | undefined> {
  const path = daemonPaths(home).info
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return undefined
    throw err
  }
  try {
    const v = JSON.parse(text) as Partial<DaemonInfo>
    if (typeof v.pid !== 'number' || typeof v.port !== 'number' || typeof v.socket !== 'string')
      return undefined
    return v as DaemonInfo
  } catch {
    return undefined
  }
}

/** A fresh bearer token: 32 random bytes, base64url. */
export function newToken(prefix: string): string {
  return `${prefix}${randomBytes(32).toString('base64url')}`
}

/** The SHA-256 of a token as hex: what the registry stores, and the key tokens are looked up by. */
export function tokenHash(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex')
}

/** Constant-time comparison of two tokens (of any lengths). */
export function sameToken(a: string, b: string): boolean {
  const x = createHash('sha256').update(a).digest()
  const y = createHash('sha256').update(b).digest()
  return timingSafeEqual(x, y)
}

/** The admin token in `daemon.token`, created (0600, never half-written) when missing. */
export async function loadOrCreateAdminToken(home: string): Promise<string> {
  await makePrivateDir(home)
  return (await loadOrCreateTokenFile(daemonPaths(home).token, () => newToken('amd_'))).token
}

/** The admin token, or undefined when the file does not exist; a file others may read is refused. */
export function readAdminToken(path: string): Promise<string | undefined> {
  return readTokenFile(path)
}

/** The daemon's hold on a home; `release()` removes the lock file if it is still ours. */
export interface DaemonLock {
  release(): Promise<void>
}

/**
 * Takes `daemon.lock` (`pid-lock.ts`: our pid, boot id and process start time, written whole). A lock
 * whose holder still runs refuses with `MESH_ERR_DAEMON_RUNNING {pid}`; one whose pid is gone (a
 * `kill -9`), or now belongs to an unrelated process (another start time, another boot), is taken over.
 */
export async function lockHome(home: string): Promise<DaemonLock> {
  await makePrivateDir(home)
  const lock = acquirePidLock(daemonPaths(home).lock, { held: (holder) => runningError(home, holder?.pid) })
  return { release: async () => lock.release() }
}

/** The pid in `daemon.lock` when that process (the same one, not a reuse of its pid) runs, else undefined. */
export async function runningDaemonPid(home: string): Promise<number | undefined> {
  return liveHolder(daemonPaths(home).lock)?.pid
}

/** Writes `daemon.json` (0600, atomically). */
export async function writeDaemonInfo(home: string, info: DaemonInfo): Promise<void> {
  await writePrivateFile(daemonPaths(home).info, JSON.stringify(info, null, 2) + '\n')
}

/** Whether `pid` runs (EPERM: it does, as another user). */
export const isRunning = pidRuns

function runningError(home: string, pid: number | undefined): MeshError {
  return new MeshError(
    'MESH_ERR_DAEMON_RUNNING',
    `a daemon already holds this home (${home})${pid === undefined ? '' : `: pid ${pid}`}; ` +
      'stop it with `agentmesh daemon down`',
    { details: pid === undefined ? { home } : { home, pid } },
  )
}
