/**
 * A private, throwaway Postgres cluster for tests that restart Postgres (test use only): `initdb` and
 * `pg_ctl` from /usr/lib/postgresql/<version>/bin in a temp directory, on a free port of 127.0.0.1 with
 * trust auth for 127.0.0.1 only — never the shared server. initdb refuses to run as root, so when we
 * are root every command runs as the `postgres` user (`runuser`) on a directory chowned to it.
 */
import { execFile } from 'node:child_process'
import { chown, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir, userInfo } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { freePort } from './tcp-proxy.js'

const run = promisify(execFile)

/** A running private cluster. */
export interface PgCluster {
  /** `postgres://postgres@127.0.0.1:<port>/postgres` */
  readonly url: string
  readonly port: number
  readonly dir: string
  /** The fault: an immediate shutdown (no checkpoint, as after a crash), then a start. */
  restartImmediate(): Promise<void>
  /** Stops it and removes its directory. */
  destroy(): Promise<void>
}

/** The bin directory of the newest installed Postgres, or undefined when there is none. */
export async function postgresBin(): Promise<string | undefined> {
  const base = '/usr/lib/postgresql'
  const versions = await readdir(base).catch(() => [] as string[])
  const newest = versions
    .filter((v) => /^\d+$/.test(v))
    .sort((a, b) => Number(b) - Number(a))
    .at(0)
  return newest === undefined ? undefined : join(base, newest, 'bin')
}

/** Creates and starts a cluster; throws when no Postgres is installed. */
export async function startPgCluster(): Promise<PgCluster> {
  const bin = await postgresBin()
  if (bin === undefined) throw new Error('no Postgres under /usr/lib/postgresql: cannot make a cluster')
  const root = userInfo().uid === 0
  let pgUid = -1
  let pgGid = -1
  if (root) {
    const { stdout } = await run('id', ['-u', 'postgres'])
    const { stdout: g } = await run('id', ['-g', 'postgres'])
    pgUid = Number(stdout.trim())
    pgGid = Number(g.trim())
  }
  const dir = await mkdtemp(join(tmpdir(), 'agentmesh-pg-'))
  const data = join(dir, 'data')
  if (root) await chown(dir, pgUid, pgGid)
  const as = (cmd: string, args: string[]): Promise<{ stdout: string; stderr: string }> =>
    root
      ? run('runuser', ['-u', 'postgres', '--', join(bin, cmd), ...args], { cwd: dir })
      : run(join(bin, cmd), args, { cwd: dir })

  await as('initdb', ['-D', data, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-sync'])
  const port = await freePort()
  // 127.0.0.1 only, a socket in our own directory, and small: a test cluster on a shared machine.
  const conf = [
    `listen_addresses = '127.0.0.1'`,
    `port = ${port}`,
    `unix_socket_directories = '${dir}'`,
    `max_connections = 60`,
    `shared_buffers = 16MB`,
    `fsync = off`, // only the process dies in these tests, never the kernel
    `log_min_messages = fatal`,
    `logging_collector = off`,
  ].join('\n')
  const confPath = join(data, 'postgresql.auto.conf')
  const hbaPath = join(data, 'pg_hba.conf')
  await writeFile(confPath, conf + '\n')
  await writeFile(hbaPath, 'host all all 127.0.0.1/32 trust\n')
  if (root) {
    await chown(confPath, pgUid, pgGid)
    await chown(hbaPath, pgUid, pgGid)
  }
  const log = join(dir, 'postgres.log')
  const start = (): Promise<unknown> => as('pg_ctl', ['-D', data, '-l', log, '-w', '-t', '60', 'start'])
  await start()
  let stopped = false
  return {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    port,
    dir,
    async restartImmediate() {
      await as('pg_ctl', ['-D', data, '-m', 'immediate', '-w', 'stop'])
      await start()
    },
    async destroy() {
      if (stopped) return
      stopped = true
      await as('pg_ctl', ['-D', data, '-m', 'immediate', '-w', 'stop']).catch(() => undefined)
      await rm(dir, { recursive: true, force: true })
    },
  }
}
