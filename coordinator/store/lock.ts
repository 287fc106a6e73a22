import { randomBytes } from 'node:crypto'
import { link, mkdir, open, readFile, rename, stat, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import { MeshError } from '../../protocol/errors.js'

/** The lock file's name inside a PGlite data directory. */
export const LOCK_FILE = 'coordinator.lock'

/**
 * An empty or unreadable lock file younger than this is a holder between creating the file and writing
 * its pid; older, it is debris of a crash at that instant and is taken over.
 */
const UNWRITTEN_GRACE_MS = 10_000

/** An exclusive hold on a data directory; `release()` gives it up (idempotent). */
export interface DirLock {
  readonly path: string
  release(): Promise<void>
}

/**
 * Takes `<dir>/coordinator.lock` (creating `dir` if missing): a file holding our pid, created with
 * O_EXCL. Two PGlite instances on one directory would corrupt it, so a lock held by a live process
 * (this one included) throws `MESH_ERR_STORE_LOCKED` with `details.pid`; a lock whose pid no longer runs
 * is left from a crash and is taken over.
 */
export async function lockDataDir(dir: string): Promise<DirLock> {
  await mkdir(dir, { recursive: true })
  const path = join(dir, LOCK_FILE)
  // Each round either takes the lock, refuses, or removes a stale file; more than a few rounds means
  // others are racing for the same directory.
  for (let round = 0; round < 5; round++) {
    if (await tryCreate(path)) return heldLock(path)
    const text = await readFile(path, 'utf8').catch(ignore('ENOENT'))
    if (text === undefined) continue
    const pid = parsePid(text)
    const live = pid !== undefined ? isRunning(pid) : await isFresh(path)
    if (live) throw lockedError(path, pid)
    await takeOver(path, text)
  }
  throw lockedError(path, undefined)
}

async function tryCreate(path: string): Promise<boolean> {
  let file
  try {
    file = await open(path, 'wx', 0o644)
  } catch (err) {
    if (errorCode(err) === 'EEXIST') return false
    throw err
  }
  try {
    await file.writeFile(`${process.pid}\n`)
  } finally {
    await file.close()
  }
  return true
}

function heldLock(path: string): DirLock {
  let released = false
  return {
    path,
    async release() {
      if (released) return
      released = true
      // Remove only our own file: if it was taken over (we were presumed dead), it is not ours to delete.
      const text = await readFile(path, 'utf8').catch(ignore('ENOENT'))
      if (text !== undefined && parsePid(text) === process.pid) await unlink(path).catch(ignore('ENOENT'))
    },
  }
}

/**
 * Removes a stale lock file. Rename-then-check rather than unlink: if another starter replaced the
 * stale file between our read and now, we moved *its* fresh lock aside, so we put it back. (A third
 * starter racing in that same instant can still win; two coordinators starting on one directory over a
 * crashed one's lock, within microseconds, is a risk we accept.)
 */
async function takeOver(path: string, staleText: string): Promise<void> {
  const aside = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.stale`
  try {
    await rename(path, aside)
  } catch (err) {
    if (errorCode(err) === 'ENOENT') return
    throw err
  }
  const moved = await readFile(aside, 'utf8').catch(ignore('ENOENT'))
  if (moved !== staleText) await link(aside, path).catch(ignore('EEXIST'))
  await unlink(aside).catch(ignore('ENOENT'))
}

function parsePid(text: string): number | undefined {
  const trimmed = text.trim()
  if (!/^\d{1,10}$/.test(trimmed)) return undefined
  const pid = Number(trimmed)
  // 0 and negative numbers address process groups in kill(2); never probe those.
  return pid > 0 ? pid : undefined
}

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    // EPERM: the process exists but belongs to another user.
    return errorCode(err) === 'EPERM'
  }
}

async function isFresh(path: string): Promise<boolean> {
  const info = await stat(path).catch(ignore('ENOENT'))
  // Compared with the file's mtime, which the OS stamps from the wall clock: not the injected clock.
  return info !== undefined && Date.now() - info.mtimeMs < UNWRITTEN_GRACE_MS
}

function lockedError(path: string, pid: number | undefined): MeshError {
  const who = pid === undefined ? 'another process' : pid === process.pid ? 'this process' : `pid ${pid}`
  return new MeshError(
    'MESH_ERR_STORE_LOCKED',
    `the data directory is in use by ${who} (${path}); stop that coordinator, or delete the file if ` +
      'that process is not one',
    { details: pid === undefined ? { path } : { path, pid } },
  )
}

function errorCode(err: unknown): unknown {
  return typeof err === 'object' && err !== null && 'code' in err ? err.code : undefined
}

/** A `.catch` handler that turns the given errno into `undefined` and rethrows anything else. */
function ignore(code: string): (err: unknown) => undefined {
  return (err) => {
    if (errorCode(err) === code) return undefined
    throw err
  }
}
