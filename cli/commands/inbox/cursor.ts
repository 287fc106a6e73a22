/**
 * The read cursor of a mesh: the inbox position (`seq`) of the last message `listen` or `inbox --unread`
 * printed, kept in the mesh's `listen.cursor` (0600). A message is *read* once its seq is at or below
 * it; `inbox --unread` prints the ones above it. Both paths share it: the daemon's inbox is the member's
 * store, the one a direct `listen` writes, so the positions are the same.
 */
import { renameSync, writeFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { meshDir } from '../../../peer-runtime/node/home.js'

/** Where the cursor of `mesh` lives (the file `listen` writes). */
export function readCursorPath(home: string, mesh: string): string {
  return join(meshDir(home, mesh), 'listen.cursor')
}

/** The cursor, 0 when there is none (nothing was read yet). */
export async function readCursor(path: string): Promise<number> {
  try {
    const n = Number((await readFile(path, 'utf8')).trim())
    return Number.isSafeInteger(n) && n >= 0 ? n : 0
  } catch {
    return 0
  }
}

/**
 * Moves the cursor to `seq` unless it is already past it (a `listen` running meanwhile may have read
 * further): replaced synchronously, so it is on disk before the next line is printed.
 */
export async function advanceCursor(path: string, seq: number): Promise<number> {
  const now = await readCursor(path)
  if (now >= seq) return now
  const tmp = `${path}.${process.pid}.tmp`
  writeFileSync(tmp, `${seq}\n`, { mode: 0o600 })
  renameSync(tmp, path)
  return seq
}
