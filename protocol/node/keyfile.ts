/**
 * Key files on disk (Node only): written 0600 through a temporary file and a rename, so a crash never
 * leaves half a key, and refused on read when group or others can read them.
 */
import { readFile, stat } from 'node:fs/promises'
import { MeshError } from '../errors.js'
import { keyFileText, parseKeyFile, type Identity, type KeyKind } from '../keys.js'
import { errnoCode, writePrivateFile } from './secret-file.js'

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
  try {
    await writePrivateFile(path, keyFileText(identity, labels), opts)
  } catch (cause) {
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
