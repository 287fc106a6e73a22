/**
 * Creates a PGlite database in a fresh data directory from a short-lived child process. PGlite's initdb
 * runs a second PGlite and an initdb WebAssembly module beside the one being created, and the process
 * that ran it keeps about 800 MB resident afterwards (measured with PGlite 0.5.16: 850 MB right after
 * the first `create()` in a fresh directory, ~300 MB when the directory already holds a database). In a
 * child, that memory goes away with the child; the coordinator then opens a directory that is ready.
 */
import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { join } from 'node:path'
import { MeshError } from '../../protocol/errors.js'

/** initdb takes ~5 s on a quiet 2-core machine; this bounds a hang, it is not a speed target. */
const INITDB_TIMEOUT_MS = 180_000

// The child runs plain CommonJS: no loader (tsx, vitest) is needed to run it, from sources or bundle.
const CHILD = `require(process.argv[2]).PGlite.create({ dataDir: process.argv[1] })
  .then((pg) => pg.close())
  .catch((err) => { console.error(err); process.exit(1) })`

/** True when `dataDir` holds no database yet (PGlite checks for the same file). */
export function needsInitdb(dataDir: string): boolean {
  return !existsSync(join(dataDir, 'PG_VERSION'))
}

/** Runs PGlite's initdb for `dataDir` in a child process; the caller holds the directory's lock. */
export async function initdbApart(dataDir: string): Promise<void> {
  const pglite = createRequire(import.meta.url).resolve('@electric-sql/pglite')
  await new Promise<void>((resolve, reject) => {
    execFile(
      process.execPath,
      ['-e', CHILD, dataDir, pglite],
      { timeout: INITDB_TIMEOUT_MS, maxBuffer: 1024 * 1024 },
      (err, _stdout, stderr) => {
        if (err === null) resolve()
        else
          reject(
            new MeshError('MESH_ERR_STORE_UNAVAILABLE', `PGlite initdb failed: ${stderr}`, { cause: err }),
          )
      },
    )
  })
}
