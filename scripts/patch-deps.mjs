// Runs as `postinstall`: fixes, in the installed copy, a dependency bug that would take the coordinator
// down, until a release of the dependency fixes it. Idempotent; a dependency whose code no longer has
// the shape patched here is left alone with a warning (and test/deps-patched.test.ts fails, so we notice).
//
// postgres.js 3.4.x (porsager/postgres#1208, #1154; fixes proposed in #1176, #1209, not released as of
// 3.4.10): a write scheduled with setImmediate can run after its connection closed, and `nextWrite`
// then calls `socket.write` on null. The TypeError is thrown from the immediate, outside every query's
// promise, so it is an uncaught exception: a Postgres restart under load exited the coordinator (the
// chaos suite saw it). The guard fails the connection's queries with CONNECTION_CLOSED instead, which
// the store already handles (postgres.js reconnects on the next query).
import { existsSync } from 'node:fs'
import { readFile, writeFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'

const MARK = '/* agentmesh: nextWrite guard */'
const ORIGINAL = `  function nextWrite(fn) {
    const x = socket.write(chunk, fn)`
const GUARDED = `  function nextWrite(fn) {
    ${MARK}
    if (socket === null) {
      nextWriteTimer !== null && clearImmediate(nextWriteTimer)
      chunk = nextWriteTimer = null
      error(Errors.connection('CONNECTION_CLOSED', options, socket))
      return false
    }
    const x = socket.write(chunk, fn)`

/** The package folder of `postgres` as this package resolves it, or undefined when it is not installed. */
function postgresDir() {
  let entry
  try {
    entry = createRequire(import.meta.url).resolve('postgres')
  } catch {
    return undefined
  }
  // Its `exports` hide package.json: walk up from the entry point to the folder that holds it.
  for (let dir = dirname(entry); dir !== dirname(dir); dir = dirname(dir)) {
    if (existsSync(join(dir, 'cjs/src/connection.js')) && existsSync(join(dir, 'src/connection.js')))
      return dir
  }
  return undefined
}

export async function patchPostgres(dir = postgresDir()) {
  if (dir === undefined) return []
  const done = []
  for (const file of ['src/connection.js', 'cjs/src/connection.js']) {
    const path = join(dir, file)
    let text
    try {
      text = await readFile(path, 'utf8')
    } catch {
      continue
    }
    if (text.includes(MARK)) {
      done.push(path)
      continue
    }
    if (!text.includes(ORIGINAL) || !text.includes('function error(err)')) {
      console.warn(`agentmesh postinstall: ${path} has changed shape; its nextWrite guard was not applied`)
      continue
    }
    await writeFile(path, text.replace(ORIGINAL, GUARDED))
    done.push(path)
  }
  return done
}

if (import.meta.url === `file://${process.argv[1]}`) await patchPostgres()
