import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, readFile, rm, utimes, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { openStore } from './index.js'
import { LOCK_FILE, lockDataDir } from './lock.js'

let dir: string
let lockPath: string
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'agentmesh-store-'))
  lockPath = join(dir, LOCK_FILE)
})
afterEach(async () => {
  await rm(dir, { recursive: true, force: true })
})

describe('PGlite data directory', () => {
  it('survives a reopen', async () => {
    const first = await openStore({ dataDir: dir, now: () => 1 })
    await first.query('insert into node values ($1, $2, $3)', ['n1', 2 ** 41, 3])
    await first.close()
    const second = await openStore({ dataDir: dir, now: () => 2 })
    expect(await second.query('select * from node')).toEqual([
      { id: 'n1', started_at: 2 ** 41, heartbeat_at: 3 },
    ])
    await second.close()
  })

  it('is locked while open, even against this process, and unlocked by close()', async () => {
    const first = await openStore({ dataDir: dir })
    expect(await readFile(lockPath, 'utf8')).toBe(`${process.pid}\n`)
    await expect(openStore({ dataDir: dir })).rejects.toMatchObject({
      code: 'MESH_ERR_STORE_LOCKED',
      details: { pid: process.pid },
    })
    await first.close()
    await expect(readFile(lockPath)).rejects.toMatchObject({ code: 'ENOENT' })
    await (await openStore({ dataDir: dir })).close()
  })

  it('refuses a directory locked by another live process', async () => {
    const holder = spawn(process.execPath, ['-e', 'setInterval(() => {}, 60_000)'], { stdio: 'ignore' })
    try {
      await once(holder, 'spawn')
      await writeFile(lockPath, `${holder.pid}\n`)
      await expect(openStore({ dataDir: dir })).rejects.toMatchObject({
        name: 'MeshError',
        code: 'MESH_ERR_STORE_LOCKED',
        details: { pid: holder.pid, path: lockPath },
      })
      // Refusing leaves the holder's lock alone.
      expect(await readFile(lockPath, 'utf8')).toBe(`${holder.pid}\n`)
    } finally {
      await stop(holder)
    }
  })

  it('takes over a lock whose process is gone', async () => {
    const gone = spawn(process.execPath, ['-e', ''], { stdio: 'ignore' })
    await once(gone, 'exit')
    await writeFile(lockPath, `${gone.pid}\n`)
    const store = await openStore({ dataDir: dir })
    expect(await readFile(lockPath, 'utf8')).toBe(`${process.pid}\n`)
    await store.close()
  })
})

describe('lockDataDir', () => {
  it('treats a fresh empty lock file as a holder mid-write, an old one as debris', async () => {
    await writeFile(lockPath, '')
    await expect(lockDataDir(dir)).rejects.toMatchObject({
      code: 'MESH_ERR_STORE_LOCKED',
      details: { path: lockPath },
    })
    const longAgo = new Date(Date.now() - 60_000)
    await utimes(lockPath, longAgo, longAgo)
    const lock = await lockDataDir(dir)
    await lock.release()
    await lock.release()
    await expect(readFile(lockPath)).rejects.toMatchObject({ code: 'ENOENT' })
  })

  it('does not delete a lock that another process took over', async () => {
    const lock = await lockDataDir(dir)
    await writeFile(lockPath, '999999999\n')
    await lock.release()
    expect(await readFile(lockPath, 'utf8')).toBe('999999999\n')
  })
})

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = once(child, 'exit')
  child.kill()
  await exited
}
