/**
 * What a coordinator keeps in its data directory besides the PGlite database: its signing key
 * (`coordinator.key`) and the admin token (`admin-token`), both mode 0600 and created once, on the first
 * start. On Postgres the directory holds only these two files; nodes that share a database copy them.
 */
import { constants } from 'node:fs'
import { access, mkdir, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { createIdentity, randomBytes, toBase64Url, type Identity } from '../../../protocol/index.js'
import { loadOrCreateKeyFile } from '../../../protocol/node/keyfile.js'
import { loadOrCreateTokenFile } from '../../../protocol/node/secret-file.js'

export const COORDINATOR_KEY_FILE = 'coordinator.key'
export const ADMIN_TOKEN_FILE = 'admin-token'

/** A startup failure the user can fix: printed as `error: <code>: <message>`, without a stack. */
export class StartupError extends Error {
  override readonly name = 'StartupError'
  constructor(
    readonly code: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options)
  }
}

/** Creates the data directory (0700) if missing and checks that we may read, write and enter it. */
export async function prepareDataDir(dir: string): Promise<void> {
  try {
    await mkdir(dir, { recursive: true, mode: 0o700 }).catch((err: unknown) => {
      // mkdir says EEXIST for a file in the way; what the user needs to hear is that it is no directory.
      if (errnoOf(err) !== 'EEXIST') throw err
    })
    if (!(await stat(dir)).isDirectory()) {
      throw Object.assign(new Error('it exists and is not a directory'), { code: 'ENOTDIR' })
    }
    await access(dir, constants.R_OK | constants.W_OK | constants.X_OK)
  } catch (cause) {
    throw systemError(cause, `cannot use the data directory ${dir}`)
  }
}

/** The coordinator's signing key: read from `<dir>/coordinator.key`, created there on the first start. */
export function loadOrCreateCoordinatorKey(dir: string): Promise<Identity> {
  return loadOrCreateKeyFile(join(dir, COORDINATOR_KEY_FILE), 'coordinator', () =>
    createIdentity('coordinator'),
  )
}

/** The admin token, and whether this call created it (then the caller shows it, once). */
export interface AdminToken {
  token: string
  path: string
  created: boolean
}

/**
 * Reads `<dir>/admin-token`, or creates it with 32 random bytes (base64url), never half-written; two nodes
 * starting at once on a shared directory end up with the same token.
 */
export async function loadOrCreateAdminToken(dir: string): Promise<AdminToken> {
  const path = join(dir, ADMIN_TOKEN_FILE)
  const { token, created } = await loadOrCreateTokenFile(path, () => toBase64Url(randomBytes(32)))
  return { token, path, created }
}

/** Wraps a Node system error as a StartupError carrying its errno code (EACCES, ENOTDIR, …). */
export function systemError(cause: unknown, what: string): StartupError {
  const code = errnoOf(cause)
  // Node phrases it `EACCES: permission denied, access '/x'` or `listen EADDRINUSE: address already in
  // use 127.0.0.1:7700`: keep the description, the rest is said already.
  const message = cause instanceof Error ? cause.message : String(cause)
  const reason = message.replace(/^(?:\w+ )?[A-Z]+: /, '').replace(/, \w+ '[^']*'(?: -> '[^']*')?$/, '')
  return new StartupError(typeof code === 'string' ? code : 'EIO', `${what}: ${reason}`, { cause })
}

function errnoOf(err: unknown): unknown {
  return typeof err === 'object' && err !== null ? (err as { code?: unknown }).code : undefined
}
