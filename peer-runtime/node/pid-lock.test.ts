import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { existsSync, mkdtempSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { afterAll, afterEach, describe, expect, it } from 'vitest'
import { MeshError } from '../../protocol/errors.js'
import {
  acquirePidLock,
  currentBootId,
  liveHolder,
  parsePidLock,
  processStartTime,
  type PidLockRecord,
} from './pid-lock.js'

const root = mkdtempSync(join(tmpdir(), 'agentmesh-pid-lock-'))
afterAll(() => rmSync(root, { recursive: true, force: true }))
let n = 0
const lockPath = (): string => join(root, `lock-${++n}`)

const held = (holder: PidLockRecord | undefined): MeshError =>
  new MeshError('MESH_ERR_STORE_LOCKED', 'held', { details: { pid: holder?.pid ?? null } })

const children: ChildProcess[] = []
afterEach(async () => {
  for (const child of children.splice(0)) {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL')
      await once(child, 'exit')
    }
  }
})

/** A child process that takes the lock at `path` through this module and holds it until killed. */
async function holder(path: string): Promise<ChildProcess> {
  const module = pathToFileURL(join(import.meta.dirname, 'pid-lock.ts')).href
  const code = `
    const { acquirePidLock } = await import(${JSON.stringify(module)})
    acquirePidLock(${JSON.stringify(path)}, { held: () => new Error('held') })
    process.stdout.write('locked\\n')
    setInterval(() => {}, 60_000)
  `
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], {
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  children.push(child)
  const [chunk] = (await once(child.stdout, 'data')) as [Buffer]
  expect(chunk.toString()).toBe('locked\n')
  return child
}

const onLinux = existsSync('/proc/self/stat')

describe('pid lock', () => {
  it('records pid, boot id and start time; refuses a second opener in this process; release frees it', () => {
    const path = lockPath()
    const lock = acquirePidLock(path, { held })
    const record = parsePidLock(readFileSync(path, 'utf8'))
    expect(record?.pid).toBe(process.pid)
    if (onLinux) {
      expect(record?.bootId).toBe(readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim())
      expect(record?.startTime).toMatch(/^\d+$/)
      expect(record?.startTime).toBe(processStartTime(process.pid))
    }
    expect(() => acquirePidLock(path, { held })).toThrow(
      expect.objectContaining({ code: 'MESH_ERR_STORE_LOCKED', details: { pid: process.pid } }),
    )
    expect(liveHolder(path)?.pid).toBe(process.pid)
    lock.release()
    lock.release()
    expect(existsSync(path)).toBe(false)
    expect(liveHolder(path)).toBeUndefined()
    acquirePidLock(path, { held }).release()
  })

  it('refuses while another live process holds it, with its pid; takes it over after kill -9', async () => {
    const path = lockPath()
    const child = await holder(path)
    expect(() => acquirePidLock(path, { held })).toThrow(
      expect.objectContaining({ details: { pid: child.pid } }),
    )
    // Refusing leaves the holder's file alone.
    expect(parsePidLock(readFileSync(path, 'utf8'))?.pid).toBe(child.pid)
    child.kill('SIGKILL')
    await once(child, 'exit')
    const lock = acquirePidLock(path, { held })
    expect(parsePidLock(readFileSync(path, 'utf8'))?.pid).toBe(process.pid)
    lock.release()
  })

  it.runIf(onLinux)(
    'takes over a lock whose pid now belongs to an unrelated process (another start time or boot)',
    () => {
      // The parent of this test process runs, but it is not the process that wrote these locks.
      const pid = process.ppid
      const start = processStartTime(pid)
      const boot = currentBootId()
      expect(start).toBeDefined()
      expect(boot).toBeDefined()

      const genuine = lockPath()
      writeFileSync(genuine, JSON.stringify({ pid, bootId: boot, startTime: start }))
      expect(() => acquirePidLock(genuine, { held })).toThrow(expect.objectContaining({ details: { pid } }))

      const reused = lockPath()
      writeFileSync(reused, JSON.stringify({ pid, bootId: boot, startTime: String(Number(start) + 1) }))
      expect(liveHolder(reused)).toBeUndefined()
      const a = acquirePidLock(reused, { held })
      expect(parsePidLock(readFileSync(reused, 'utf8'))?.pid).toBe(process.pid)
      a.release()

      const rebooted = lockPath()
      writeFileSync(rebooted, JSON.stringify({ pid, bootId: 'another-boot', startTime: start }))
      const b = acquirePidLock(rebooted, { held })
      expect(parsePidLock(readFileSync(rebooted, 'utf8'))?.pid).toBe(process.pid)
      b.release()
    },
  )

  it('reads a bare pid (an older build) by the pid alone', async () => {
    const live = lockPath()
    writeFileSync(live, `${process.ppid}\n`)
    expect(() => acquirePidLock(live, { held })).toThrow(
      expect.objectContaining({ details: { pid: process.ppid } }),
    )
    const gone = spawn(process.execPath, ['-e', ''], { stdio: 'ignore' })
    await once(gone, 'exit')
    const dead = lockPath()
    writeFileSync(dead, `${gone.pid}\n`)
    acquirePidLock(dead, { held }).release()
  })

  it('treats a fresh unreadable file as a writer mid-way, an old one as debris', () => {
    const path = lockPath()
    writeFileSync(path, '')
    expect(() => acquirePidLock(path, { held })).toThrow(expect.objectContaining({ details: { pid: null } }))
    const longAgo = new Date(Date.now() - 60_000)
    utimesSync(path, longAgo, longAgo)
    acquirePidLock(path, { held }).release()
  })

  it('release leaves a lock another process took over', () => {
    const path = lockPath()
    const lock = acquirePidLock(path, { held })
    const other = JSON.stringify({ pid: process.ppid })
    writeFileSync(path, other)
    lock.release()
    expect(readFileSync(path, 'utf8')).toBe(other)
  })
})
