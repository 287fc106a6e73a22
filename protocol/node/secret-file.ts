/**
 * Private files on disk (Node only): keys and bearer tokens. Written 0600 through a complete temporary
 * file (so a crash or a reader never sees half of one), then renamed, or hard-linked when the file must
 * not be replaced (two processes creating it at once both end up with the first one's contents). Read
 * back only when neither group nor others may read them.
 */
import { randomBytes } from 'node:crypto'
import { chmod, link, mkdir, open, readFile, rename, stat, unlink } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { MeshError } from '../errors.js'

/** What a bearer token file may hold. */
const TOKEN_RE = /^[\w-]{16,256}$/

/**
 * Writes `text` to `path` with mode 0600 (its folder 0700 when created). With `exclusive`, an existing
 * file is never replaced: the write fails with the `EEXIST` error (a Node error, as thrown).
 */
export async function writePrivateFile(
  path: string,
  text: string,
  o: { exclusive?: boolean } = {},
): Promise<void> {
  await mkdir(dirname(path), { recursive: true, mode: 0o700 })
  // node:crypto, not libsodium: a temporary name needs no initialised crypto module.
  const tmp = join(dirname(path), `.${process.pid}.${randomBytes(6).toString('hex')}.tmp`)
  const handle = await open(tmp, 'wx', 0o600)
  try {
    await handle.writeFile(text, 'utf8')
    await handle.sync()
  } finally {
    await handle.close()
  }
  try {
    await chmod(tmp, 0o600) // the umask cannot widen it, but be explicit
    if (o.exclusive === true) await link(tmp, path)
    else await rename(tmp, path)
  } finally {
    if (o.exclusive === true) await unlink(tmp).catch(() => undefined)
  }
}

/**
 * The contents of `path`, or undefined when it does not exist. `MESH_ERR_KEY_FILE` when group or others
 * may read it (with the `chmod` that fixes it) or when it cannot be read.
 */
export async function readPrivateFile(path: string): Promise<string | undefined> {
  let mode: number
  let text: string
  try {
    mode = (await stat(path)).mode
    text = await readFile(path, 'utf8')
  } catch (cause) {
    if (errnoCode(cause) === 'ENOENT') return undefined
    throw new MeshError('MESH_ERR_KEY_FILE', `cannot read ${path}`, { cause })
  }
  if ((mode & 0o077) !== 0) {
    throw new MeshError(
      'MESH_ERR_KEY_FILE',
      `${path} is readable by others (mode ${(mode & 0o777).toString(8)}); run chmod 600 ${path}`,
    )
  }
  return text
}

/** The bearer token in `path`, or undefined when there is no file; refuses a file that holds none. */
export async function readTokenFile(path: string): Promise<string | undefined> {
  const text = await readPrivateFile(path)
  if (text === undefined) return undefined
  const token = text.trim()
  if (!TOKEN_RE.test(token)) {
    throw new MeshError('MESH_ERR_KEY_FILE', `${path} does not hold a token; delete it to make a new one`)
  }
  return token
}

/**
 * Reads the token in `path`, or creates it with `make()` when the file does not exist. Two processes
 * racing both end with the same token; `created` tells the one whose token won (it shows it, once).
 */
export async function loadOrCreateTokenFile(
  path: string,
  make: () => string,
): Promise<{ token: string; created: boolean }> {
  const existing = await readTokenFile(path)
  if (existing !== undefined) return { token: existing, created: false }
  const token = make()
  try {
    await writePrivateFile(path, `${token}\n`, { exclusive: true })
  } catch (cause) {
    if (errnoCode(cause) === 'EEXIST') {
      const theirs = await readTokenFile(path)
      if (theirs !== undefined) return { token: theirs, created: false }
    }
    throw new MeshError('MESH_ERR_KEY_FILE', `cannot write ${path}`, { cause })
  }
  return { token, created: true }
}

/** The `code` of a Node system error (`ENOENT`, `EEXIST`, …). */
export function errnoCode(err: unknown): unknown {
  return typeof err === 'object' && err !== null ? (err as { code?: unknown }).code : undefined
}
