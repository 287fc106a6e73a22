import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { currentBootId, parsePidLock, processStartTime } from '../pid-lock.js'
import { daemonPaths, lockHome, runningDaemonPid } from './files.js'

const root = mkdtempSync(join(tmpdir(), 'agentmesh-lock-home-'))
afterAll(() => rmSync(root, { recursive: true, force: true }))
let n = 0
const newHome = (): string => join(root, `home-${++n}`)
const onLinux = existsSync('/proc/self/stat')

describe('daemon.lock', () => {
  it('holds pid, boot id and start time; a second daemon in a live process is refused with its pid', async () => {
    const home = newHome()
    const lock = await lockHome(home)
    const record = parsePidLock(readFileSync(daemonPaths(home).lock, 'utf8'))
    expect(record?.pid).toBe(process.pid)
    if (onLinux) expect(record?.startTime).toBe(processStartTime(process.pid))
    expect(await runningDaemonPid(home)).toBe(process.pid)
    await expect(lockHome(home)).rejects.toMatchObject({
      code: 'MESH_ERR_DAEMON_RUNNING',
      details: { home, pid: process.pid },
    })
    await lock.release()
    expect(existsSync(daemonPaths(home).lock)).toBe(false)
    expect(await runningDaemonPid(home)).toBeUndefined()
  })

  it.runIf(onLinux)('is taken over when its pid now belongs to an unrelated process', async () => {
    const home = newHome()
    await (await lockHome(home)).release()
    const pid = process.ppid
    const start = processStartTime(pid)!
    const path = daemonPaths(home).lock

    writeFileSync(path, JSON.stringify({ pid, bootId: currentBootId(), startTime: start }))
    expect(await runningDaemonPid(home)).toBe(pid)
    await expect(lockHome(home)).rejects.toMatchObject({ code: 'MESH_ERR_DAEMON_RUNNING', details: { pid } })

    // The same pid, another start time: the daemon that wrote it is gone and the pid was reused.
    writeFileSync(path, JSON.stringify({ pid, bootId: currentBootId(), startTime: `${start}0` }))
    expect(await runningDaemonPid(home)).toBeUndefined()
    const lock = await lockHome(home)
    expect(await runningDaemonPid(home)).toBe(process.pid)
    await lock.release()
  })
})
