/**
 * The third way a command reaches a mesh's state: the home's runtime stores on disk, for what needs no
 * network (the inbox a member received, the rows an outbox holds) when no daemon runs. A store takes an
 * exclusive lock (`MESH_ERR_STORE_LOCKED`, naming the holder's pid): while the daemon runs it holds them
 * all, so commands go through it instead; a one-shot command holding one briefly is waited for.
 */
import { access } from 'node:fs/promises'
import { isMeshError } from '../../../protocol/errors.js'
import { sqliteStore, type SqliteRuntimeStore } from '../../../peer-runtime/node/sqlite-store.js'

/** How long a command waits at most for a store another process holds. */
export const DISK_STORE_WAIT_MS = 10_000

/**
 * The store at `path`, or undefined when there is no such file (that presence never ran on this home).
 * While another live process holds it, tries again after a short jittered backoff for up to `waitMs`
 * (`onWait` is told the holder's pid once), then throws the lock's error.
 */
export async function openDiskStore(
  path: string,
  o: { waitMs?: number; onWait?: (pid: number) => void } = {},
): Promise<SqliteRuntimeStore | undefined> {
  const exists = await access(path).then(
    () => true,
    () => false,
  )
  if (!exists) return undefined
  const deadline = Date.now() + (o.waitMs ?? DISK_STORE_WAIT_MS)
  let told = false
  for (let n = 0; ; n++) {
    try {
      return sqliteStore({ path })
    } catch (err) {
      const pid = isMeshError(err, 'MESH_ERR_STORE_LOCKED') ? err.details?.['pid'] : undefined
      if (typeof pid !== 'number' || pid === process.pid || Date.now() >= deadline) throw err
      if (!told) o.onWait?.(pid)
      told = true
      const ceiling = Math.min(500, 50 * 2 ** Math.min(n, 10))
      const delay = Math.min(Math.floor(Math.random() * ceiling) + 1, Math.max(0, deadline - Date.now()))
      await new Promise((resolve) => setTimeout(resolve, delay))
    }
  }
}
