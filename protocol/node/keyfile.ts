/**
 * Key files on disk (Node only): written 0600 through a temporary file and a rename, so a crash never
 * leaves half a key, and refused on read when group or others can read them.
 */
import { chmod, link, mkdir, open, readFile, rename, stat, unlink } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { MeshError } from '../errors.js'
import { keyFileText, parseKeyFile, type Identity, type KeyKind } from '../keys.js'

/**
 * Writes an identity to `path` with mode 0600 (its folder 0700 when created). With `exclusive`, an
 * existing file is never replaced: the write fails with the `EEXIST` error as its cause.
 */
export async function writeKeyFile(
  path: string,
  identity: Identity,
  labels?: Record<string, string>,
  opts: { exclusive?: boolean } = {},
): Promise<void> {
  await mkdir(dirname(path), { recursive: true, mode: 0o700 })
  const tmp = join(dirname(path), `.${process.pid}.${Date.now()}.${Math.random().toString(36).slice(2)}.tmp`)
  const handle = await open(tmp, 'wx', 0o600)
  try {
    await handle.writeFile(keyFileText(identity, labels), 'utf8')
    await handle.sync()
  } finally {
    await handle.close()
  }
  try {
    await chmod(tmp, 0o600) // the umask cannot widen it, but be explicit
    if (opts.exclusive === true) {
      await link(tmp, path) // fails when the file exists: two processes never both create a key
      await unlink(tmp)
    } else {
      await rename(tmp, path)
    }
  } catch (cause) {
    await unlink(tmp).catch(() => undefined)
    throw new MeshError('MESH_ERR_KEY_FILE', `cannot write key file ${path}`, { cause })
  }
}

/** Reads a key file; refuses one that group or others may read, or whose contents do not check out. */
export async function readKeyFile(
  path: string,
  expectedKind?: KeyKind,
): Promise<{ identity: Identity; labels: Record<string, string> }> {
  let mode: number
  let text: string
  try {
    mode = (await stat(path)).mode
    text = await readFile(path, 'utf8')
  } catch (cause) {
    throw new MeshError('MESH_ERR_KEY_FILE', `cannot read key file ${path}`, { cause })
  }
  if ((mode & 0o077) !== 0) {
    throw new MeshError(
      'MESH_ERR_KEY_FILE',
      `key file ${path} is readable by others (mode ${(mode & 0o777).toString(8)}); run chmod 600`,
    )
  }
  return parseKeyFile(text, expectedKind)
}

/** Reads the key at `path`, or creates one there when the file does not exist. */
export async function loadOrCreateKeyFile(
  path: string,
  kind: KeyKind,
  create: () => Identity,
  labels?: Record<string, string>,
): Promise<Identity> {
  try {
    return (await readKeyFile(path, kind)).identity
  } catch (err) {
    if (!(err instanceof MeshError) || !isNotFound(err.cause)) throw err
  }
  const identity = create()
  try {
    await writeKeyFile(path, identity, labels, { exclusive: true })
  } catch (err) {
    // Another process created it first: use theirs, so both hold the same key.
    if (err instanceof MeshError && errnoCode(err.cause) === 'EEXIST')
      return (await readKeyFile(path, kind)).identity
    throw err
  }
  return identity
}

function isNotFound(err: unknown): boolean {
  return errnoCode(err) === 'ENOENT'
}

function errnoCode(err: unknown): unknown {
  return typeof err === 'object' && err !== null ? (err as { code?: unknown }).code : undefined
}
