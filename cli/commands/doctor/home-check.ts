/**
 * The home's permissions: the home and every directory of its meshes 0700, every file in it 0600 (keys,
 * `mesh.json`, stores, the daemon's token, socket and state), owned by this user. Checked where agentmesh
 * writes: the home itself, the files at its top, everything under `meshes/`, and of a coordinator data
 * directory under the home only the directory, its key and its admin token (the database inside keeps
 * PGlite's own modes, behind the 0700 directory).
 */
import type { Stats } from 'node:fs'
import { lstat, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { ADMIN_TOKEN_FILE, COORDINATOR_KEY_FILE } from '../coordinator/data-dir.js'
import { fail, ok, type CheckResult } from './check.js'

const NAME = 'home permissions'
/** A walk stops after this many entries: a `--home` pointed at a big directory must not stall doctor. */
const MAX_ENTRIES = 20_000
/** How many offending paths the detail names. */
const SHOWN = 3

interface Problem {
  path: string
  why: string
}

/** The home's permissions check. */
export async function homePermissions(home: string): Promise<CheckResult> {
  const top = await statOrUndefined(home)
  if (top === undefined) {
    return ok(NAME, `${home} does not exist yet: nothing to protect (\`agentmesh join\` makes it 0700)`)
  }
  if (!top.isDirectory()) {
    return fail(NAME, `${home} is not a directory`, `move it away, or pass another --home`)
  }
  const problems: Problem[] = []
  const uid = process.getuid?.()
  const seen = { n: 0 }
  const look = (path: string, st: Stats): void => {
    seen.n++
    if (st.isSymbolicLink()) return
    if (uid !== undefined && st.uid !== uid) problems.push({ path, why: `owned by uid ${st.uid}` })
    else if ((st.mode & 0o077) !== 0) problems.push({ path, why: `mode ${octal(st.mode)}` })
  }
  look(home, top)
  let entries
  try {
    entries = await readdir(home, { withFileTypes: true })
  } catch (err) {
    return fail(NAME, `cannot read ${home} (${errno(err)})`, `chmod 700 ${shellQuote(home)}`)
  }
  for (const entry of entries) {
    const path = join(home, entry.name)
    const st = await statOrUndefined(path)
    if (st === undefined) continue // gone meanwhile (a daemon stopping)
    if (!st.isDirectory()) look(path, st)
    else if (entry.name === 'meshes') await walk(path, st, look, seen)
    else if (entry.name === 'coordinator') {
      look(path, st)
      for (const secret of [COORDINATOR_KEY_FILE, ADMIN_TOKEN_FILE]) {
        const inner = await statOrUndefined(join(path, secret))
        if (inner !== undefined) look(join(path, secret), inner)
      }
    }
  }
  if (problems.length === 0) {
    return ok(NAME, `${home} and the ${seen.n - 1} entries agentmesh keeps in it are private (0700/0600)`)
  }
  const shown = problems
    .slice(0, SHOWN)
    .map((p) => `${p.path} (${p.why})`)
    .join(', ')
  const more = problems.length > SHOWN ? ` and ${problems.length - SHOWN} more` : ''
  const owned = problems.some((p) => p.why.startsWith('owned'))
  const fix = owned
    ? `chown -R "$(id -u)" ${shellQuote(home)} && chmod -R go-rwx ${shellQuote(home)}`
    : `chmod -R go-rwx ${shellQuote(home)}`
  return fail(NAME, `open to other users: ${shown}${more}`, fix)
}

/** Every entry under `dir` (itself included), depth first, until `MAX_ENTRIES`. */
async function walk(
  dir: string,
  st: Stats,
  look: (path: string, st: Stats) => void,
  seen: { n: number },
): Promise<void> {
  look(dir, st)
  let names: string[]
  try {
    names = await readdir(dir)
  } catch {
    return // unreadable: its mode is what look() reported
  }
  for (const name of names.sort()) {
    if (seen.n >= MAX_ENTRIES) return
    const path = join(dir, name)
    const inner = await statOrUndefined(path)
    if (inner === undefined) continue
    if (inner.isDirectory()) await walk(path, inner, look, seen)
    else look(path, inner)
  }
}

async function statOrUndefined(path: string): Promise<Stats | undefined> {
  try {
    return await lstat(path)
  } catch {
    return undefined
  }
}

function errno(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code
  return typeof code === 'string' ? code : String(err)
}

function octal(mode: number): string {
  return (mode & 0o777).toString(8).padStart(4, '0')
}

/** `path` as one shell word. */
export function shellQuote(path: string): string {
  return /^[\w@%+=:,./-]+$/.test(path) ? path : `'${path.replace(/'/g, `'\\''`)}'`
}
