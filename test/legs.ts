import { constants } from 'node:fs'
import { access, stat } from 'node:fs/promises'
import postgres from 'postgres'

/** An optional test leg: on when its variable is set, and then it must work or the run fails. */
export interface Leg {
  name: 'postgres' | 'browser'
  variable: 'DATABASE_URL' | 'AGENTMESH_CHROMIUM'
  value: string | undefined
}

/** Reads which optional legs this run asks for; an empty variable counts as unset. */
export function legsFrom(env: NodeJS.ProcessEnv): Leg[] {
  return [
    { name: 'postgres', variable: 'DATABASE_URL', value: env['DATABASE_URL'] || undefined },
    { name: 'browser', variable: 'AGENTMESH_CHROMIUM', value: env['AGENTMESH_CHROMIUM'] || undefined },
  ]
}

/** The one line a run prints about its optional legs. */
export function describeLegs(legs: readonly Leg[]): string {
  const on = legs.filter((leg) => leg.value !== undefined).map((leg) => leg.name)
  const off = legs
    .filter((leg) => leg.value === undefined)
    .map((leg) => `${leg.name} (${leg.variable} unset)`)
  if (off.length === 0) return `agentmesh tests: all legs on (${on.join(', ')})`
  return `agentmesh tests: left out ${off.join(', ')}` + (on.length > 0 ? `; on: ${on.join(', ')}` : '')
}

/** Throws unless the Postgres server at `url` answers a query within a few seconds. */
export async function assertPostgresReachable(url: string): Promise<void> {
  const sql = postgres(url, { max: 1, connect_timeout: 5, idle_timeout: 1, onnotice: () => {} })
  try {
    await sql`select 1`
  } catch (cause) {
    throw new Error(`DATABASE_URL is set but Postgres is unreachable at ${redact(url)}`, { cause })
  } finally {
    await sql.end({ timeout: 1 })
  }
}

/** Throws unless `path` is an executable file. */
export async function assertExecutable(path: string): Promise<void> {
  try {
    await access(path, constants.X_OK)
    if (!(await stat(path)).isFile()) throw new Error(`${path} is not a file`)
  } catch (cause) {
    throw new Error(`AGENTMESH_CHROMIUM=${path} does not name an executable browser binary`, { cause })
  }
}

function redact(url: string): string {
  try {
    const parsed = new URL(url)
    if (parsed.password) parsed.password = '***'
    return parsed.toString()
  } catch {
    return '(unparsable URL)'
  }
}
