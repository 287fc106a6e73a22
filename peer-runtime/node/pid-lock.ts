/**
 * A lock file naming the process that holds it: one process per runtime store (`<store>.lock`) and
 * one daemon per home (`daemon.lock`).
 *
 * The file holds `{"pid", "bootId", "startTime"}` as JSON: the pid, the kernel's boot id
 * (`/proc/sys/kernel/random/boot_id`) and the process's start time in clock ticks since boot
 * (`/proc/<pid>/stat` field 22), the last two where `/proc` has them (Linux). A lock is **held** while
 * its pid runs and, where both sides are known, on the same boot with the same start time; otherwise
 * it is **stale** (a `kill -9`, a crash, a reboot, or a pid since reused by an unrelated process) and
 * the next opener takes it over. A bare pid (a file from an older build) is checked by the pid alone.
 *
 * The file is written whole under a temporary name and hard-linked into place (`link` fails when the
 * name exists), so nobody ever reads a half-written lock. A file that still does not parse is treated
 * as held while it is younger than 10 s (a writer of an older build between create and write), stale
 * after.
 *
 * Everything is synchronous: the sqlite store opens in a constructor, and these are a few small file
 * operations.
 */
import { randomBytes } from 'node:crypto'
import { linkSync, readFileSync, renameSync, statSync, unlinkSync, writeFileSync } from 'node:fs'

/** What a lock file records about its holder. */
export interface PidLockRecord {
  pid: number
  /** The kernel boot id when the lock was taken, where known. */
  bootId?: string
  /** The holder's start time (clock ticks since boot, `/proc/<pid>/stat` field 22), where known. */
  startTime?: string
}

/** A held lock. `release()` removes the file if it is still ours (idempotent). */
export interface PidLock {
  readonly path: string
  readonly record: PidLockRecord
  release(): void
}

/** Options of `acquirePidLock`. */
export interface AcquirePidLock {
  /**
   * The error to throw when a live process holds the lock: `holder` is its record (with `pid`), or
   * undefined when the file cannot be read yet (a writer mid-way).
   */
  held: (holder: PidLockRecord | undefined) => Error
  /** The lock file's mode (default 0600). */
  mode?: number
}

/** A lock file that does not parse, younger than this, is a writer of an older build mid-way. */
const UNWRITTEN_GRACE_MS = 10_000

let cachedBootId: string | null | undefined

/** This machine's boot id, or undefined where `/proc` does not give it. */
export function currentBootId(): string | undefined {
  if (cachedBootId === undefined) {
    try {
      cachedBootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim() || null
    } catch {
      cachedBootId = null
    }
  }
  return cachedBootId ?? undefined
}

/** The start time of `pid` (field 22 of `/proc/<pid>/stat`), or undefined where it cannot be read. */
export function processStartTime(pid: number): string | undefined {
  let stat: string
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  } catch {
    return undefined
  }
  // Field 2, the command name, is in parentheses and may hold spaces and parentheses itself: count the
  // fields after its last `)`, where field 3 begins.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  const start = fields[22 - 3]
  return start !== undefined && /^\d+$/.test(start) ? start : undefined
}

/** The record this process writes. */
export function ownRecord(): PidLockRecord {
  const record: PidLockRecord = { pid: process.pid }
  const bootId = currentBootId()
  if (bootId !== undefined) record.bootId = bootId
  const startTime = processStartTime(process.pid)
  if (startTime !== undefined) record.startTime = startTime
  return record
}

/** A lock file's text as a record: JSON, or a bare pid (older builds); undefined when neither. */
export function parsePidLock(text: string): PidLockRecord | undefined {
  const trimmed = text.trim()
  if (/^\d{1,10}$/.test(trimmed)) return validPid(Number(trimmed))
  let value: unknown
  try {
    value = JSON.parse(trimmed)
  } catch {
    return undefined
  }
  if (typeof value !== 'object' || value === null) return undefined
  const v = value as Record<string, unknown>
  if (typeof v['pid'] !== 'number') return undefined
  const record = validPid(v['pid'])
  if (record === undefined) return undefined
  if (typeof v['bootId'] === 'string') record.bootId = v['bootId']
  if (typeof v['startTime'] === 'string') record.startTime = v['startTime']
  return record
}

function validPid(pid: number): PidLockRecord | undefined {
  // 0 and negative numbers address process groups in kill(2); never probe those.
  return Number.isSafeInteger(pid) && pid > 0 ? { pid } : undefined
}

/** Whether `pid` runs (EPERM: it does, as another user). */
export function pidRuns(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return errnoCode(err) === 'EPERM'
  }
}

/**
 * Whether the process `record` names still holds its lock: its pid runs, and it is the same process
 * (same boot, same start time) wherever both sides can be read.
 */
export function holderLives(record: PidLockRecord): boolean {
  if (!pidRuns(record.pid)) return false
  if (record.bootId !== undefined) {
    const boot = currentBootId()
    if (boot !== undefined && boot !== record.bootId) return false
  }
  if (record.startTime !== undefined) {
    const start = processStartTime(record.pid)
    if (start !== undefined && start !== record.startTime) return false
  }
  return true
}

/** The live holder of the lock at `path`, or undefined when there is none (no file, or a stale one). */
export function liveHolder(path: string): PidLockRecord | undefined {
  const text = readIfExists(path)
  if (text === undefined) return undefined
  const record = parsePidLock(text)
  return record !== undefined && holderLives(record) ? record : undefined
}

/**
 * Takes the lock at `path`, taking over a stale one. A lock a live process holds (this process
 * included: a second opener in one process is refused too) throws `o.held(holder)`.
 */
export function acquirePidLock(path: string, o: AcquirePidLock): PidLock {
  const record = ownRecord()
  const text = `${JSON.stringify(record)}\n`
  // Each round takes the lock, refuses, or removes a stale file; more than a few rounds means others
  // are racing for the same lock.
  for (let round = 0; round < 5; round++) {
    if (tryLink(path, text, o.mode ?? 0o600)) return heldLock(path, record)
    const found = readIfExists(path)
    if (found === undefined) continue
    const holder = parsePidLock(found)
    if (holder === undefined ? isFresh(path) : holderLives(holder)) throw o.held(holder)
    takeOver(path, found)
  }
  throw o.held(undefined)
}

/** Writes `text` to a temporary file and links it to `path`: false when `path` exists. */
function tryLink(path: string, text: string, mode: number): boolean {
  const temp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`
  writeFileSync(temp, text, { mode, flag: 'wx' })
  try {
    linkSync(temp, path)
    return true
  } catch (err) {
    if (errnoCode(err) === 'EEXIST') return false
    throw err
  } finally {
    unlinkSync(temp)
  }
}

function heldLock(path: string, record: PidLockRecord): PidLock {
  let released = false
  return {
    path,
    record,
    release() {
      if (released) return
      released = true
      // Remove only our own file: if it was taken over (we were presumed dead), it is not ours.
      const text = readIfExists(path)
      const now = text === undefined ? undefined : parsePidLock(text)
      if (now?.pid === record.pid && now.startTime === record.startTime) unlinkIfExists(path)
    },
  }
}

/**
 * Removes a stale lock file. Rename-then-check rather than unlink: if another opener replaced the stale
 * file between our read and now, we moved *its* fresh lock aside, so we put it back.
 */
function takeOver(path: string, staleText: string): void {
  const aside = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.stale`
  try {
    renameSync(path, aside)
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return
    throw err
  }
  if (readIfExists(aside) !== staleText) {
    try {
      linkSync(aside, path)
    } catch (err) {
      if (errnoCode(err) !== 'EEXIST') throw err
    }
  }
  unlinkIfExists(aside)
}

function isFresh(path: string): boolean {
  try {
    // Compared with the file's mtime, which the OS stamps from the wall clock: not an injected clock.
    return Date.now() - statSync(path).mtimeMs < UNWRITTEN_GRACE_MS
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return false
    throw err
  }
}

function readIfExists(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8')
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return undefined
    throw err
  }
}

function unlinkIfExists(path: string): void {
  try {
    unlinkSync(path)
  } catch (err) {
    if (errnoCode(err) !== 'ENOENT') throw err
  }
}

function errnoCode(err: unknown): unknown {
  return typeof err === 'object' && err !== null && 'code' in err ? err.code : undefined
}
