import { resolve } from 'node:path'
import { Command, Option, UsageError } from 'clipanion'
import { buildCoordinator, type Coordinator } from '../../../coordinator/index.js'
import { openStore } from '../../../coordinator/store/index.js'
import type { Store } from '../../../coordinator/store/types.js'
import { initCrypto, isMeshError, toHex } from '../../../protocol/index.js'
import { BaseCommand } from '../base.js'
import {
  ADMIN_TOKEN_FILE,
  type AdminToken,
  COORDINATOR_KEY_FILE,
  loadOrCreateAdminToken,
  loadOrCreateCoordinatorKey,
  prepareDataDir,
  StartupError,
  systemError,
} from './data-dir.js'

const DEFAULT_PORT = 7700
const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const

/** What `--json` prints once the coordinator listens: a stable contract. */
export interface CoordinatorUpJson {
  url: string
  nodeId: string
  driver: 'pglite' | 'postgres'
  dataDir: string
  /** The coordinator's public key (hex), which invites carry and peers pin. */
  coordinatorPk: string
}

/**
 * `agentmesh coordinator up`: runs a coordinator in the foreground until SIGTERM or SIGINT, on the
 * embedded PGlite store in the data directory or on Postgres.
 */
export class CoordinatorUpCommand extends BaseCommand {
  static override paths = [['coordinator', 'up']]

  static override usage = Command.Usage({
    category: 'Coordinator',
    description: 'Run a coordinator in the foreground',
    details: `
      Starts a coordinator and serves until SIGTERM or SIGINT, then closes every socket with 1001, flushes
      the store and exits 0.

      The store is the embedded PGlite database in the data directory (locked while it runs: one
      coordinator per directory), or Postgres when \`--database-url\` or \`$DATABASE_URL\` is set. Either
      way the data directory holds the coordinator's key (\`${COORDINATOR_KEY_FILE}\`) and the admin token
      (\`${ADMIN_TOKEN_FILE}\`), both created on the first start with mode 0600; the token is printed once,
      then. Several coordinators on one Postgres database share one key and one token: copy both files
      into each node's data directory.

      Logs go to stdout as pino JSON, one line per event. Human messages go to stderr; with \`--json\`,
      one JSON line \`{url, nodeId, driver, dataDir, coordinatorPk}\` also goes to stdout once listening.
      The port defaults to \`$AGENTMESH_PORT\`, else ${DEFAULT_PORT}.
    `,
    examples: [
      ['Run on the embedded store in ~/.agentmesh/coordinator', '$0 coordinator up'],
      ['Listen on every interface, port 8080', '$0 coordinator up --host 0.0.0.0 --port 8080'],
      [
        'Run on Postgres (the key and token stay in the data directory)',
        '$0 coordinator up --database-url postgres://mesh@db.internal/agentmesh --data-dir /etc/agentmesh',
      ],
      ['Let anyone create a mesh (a private dev setup)', '$0 coordinator up --open-registration'],
      [
        'Print the URL as JSON once listening (port 0 picks a free port)',
        '$0 coordinator up --port 0 --json',
      ],
    ],
  })

  port = Option.String('--port', {
    description: `TCP port to listen on; 0 picks a free one (default: $AGENTMESH_PORT or ${DEFAULT_PORT})`,
  })

  host = Option.String('--host', '127.0.0.1', {
    description: 'Address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)',
  })

  dataDir = Option.String('--data-dir', {
    description:
      'Directory for the key, the admin token and the PGlite database (default: <home>/coordinator)',
  })

  databaseUrl = Option.String('--database-url', {
    description: 'Postgres URL; the store is PGlite when neither this nor $DATABASE_URL is set',
  })

  openRegistration = Option.Boolean('--open-registration', false, {
    description: 'Let anyone create a mesh without the admin token',
  })

  logLevel = Option.String('--log-level', 'info', {
    description: `Log level: ${LOG_LEVELS.join(', ')}`,
  })

  override async execute(): Promise<number> {
    const port = parsePort(this.port, process.env['AGENTMESH_PORT'])
    const logLevel = this.logLevel
    if (!(LOG_LEVELS as readonly string[]).includes(logLevel)) {
      throw new UsageError(
        `--log-level must be one of ${LOG_LEVELS.join(', ')} (got ${JSON.stringify(logLevel)})`,
      )
    }
    const dataDir = resolve(this.dataDir ?? resolve(this.home, 'coordinator'))
    // An empty value (`DATABASE_URL= agentmesh coordinator up`) means PGlite, as an unset one does.
    const databaseUrl = (this.databaseUrl ?? process.env['DATABASE_URL']) || undefined

    // Listen for signals from the start: one that comes while we start up stops us as soon as we are up.
    const signals: NodeJS.Signals[] = ['SIGTERM', 'SIGINT']
    let onSignal: (signal: NodeJS.Signals) => void = () => {}
    const stop = new Promise<NodeJS.Signals>((done) => (onSignal = done))
    const unlisten = (): void => signals.forEach((s) => process.removeListener(s, onSignal))
    for (const s of signals) process.once(s, onSignal)
    try {
      const coordinator = await this.#start({ port, dataDir, databaseUrl, logLevel })
      const log = coordinator.context.log
      const signal = await stop
      log.info({ signal }, 'shutting down')
      // A second signal while closing falls to Node's default handler and ends the process at once.
      unlisten()
      await coordinator.close()
      log.info('stopped')
      return 0
    } catch (err) {
      const failure = describeFailure(err)
      if (failure === undefined) throw err // a bug, not a user mistake: clipanion prints the stack
      this.context.stderr.write(`error: ${failure.code}: ${failure.message}\n`)
      if (this.json) this.context.stdout.write(JSON.stringify({ error: failure }) + '\n')
      return 1
    } finally {
      unlisten()
    }
  }

  /** Opens the store, loads or creates the key and token, builds the coordinator and listens. */
  async #start(o: {
    port: number
    dataDir: string
    databaseUrl: string | undefined
    logLevel: string
  }): Promise<Coordinator> {
    await prepareDataDir(o.dataDir)
    // Takes the directory's lock (PGlite) before anything else writes there, and runs the migrations.
    const store = await openStore(
      o.databaseUrl === undefined ? { dataDir: o.dataDir } : { databaseUrl: o.databaseUrl },
    )
    let coordinator: Coordinator | undefined
    try {
      await initCrypto()
      const identity = await loadOrCreateCoordinatorKey(o.dataDir)
      const admin = await loadOrCreateAdminToken(o.dataDir)
      this.#announceToken(admin)
      coordinator = await buildCoordinator({
        store,
        ownsStore: true,
        identity,
        adminToken: admin.token,
        openRegistration: this.openRegistration,
        logger: { level: o.logLevel },
      })
      const url = await coordinator.listen({ port: o.port, host: this.host }).catch((cause: unknown) => {
        throw systemError(cause, `cannot listen on ${this.host} port ${o.port}`)
      })
      const ready: CoordinatorUpJson = {
        url,
        nodeId: coordinator.context.nodeId,
        driver: store.driver,
        dataDir: o.dataDir,
        coordinatorPk: toHex(identity.publicKey),
      }
      coordinator.context.log.info({ ...ready, openRegistration: this.openRegistration }, 'coordinator up')
      this.#announce(ready)
      return coordinator
    } catch (err) {
      await (coordinator?.close() ?? closeQuietly(store))
      throw err
    }
  }

  /** The token in full on the first start only (also when that start fails later on), else its path. */
  #announceToken(admin: AdminToken): void {
    this.context.stderr.write(
      admin.created
        ? `agentmesh: created an admin token. It is shown this once; it is kept in ${admin.path} (mode 0600).\n\n` +
            `    ${admin.token}\n\n` +
            '  Send it as "Authorization: Bearer <token>" to the admin HTTP routes (POST /v1/meshes creates\n' +
            '  a mesh). Anyone holding it can create meshes on this coordinator.\n'
        : `agentmesh: admin token in ${admin.path}\n`,
    )
  }

  #announce(ready: CoordinatorUpJson): void {
    this.context.stderr.write(
      `agentmesh: coordinator listening on ${ready.url} (${ready.driver}, data dir ${ready.dataDir})\n`,
    )
    if (this.json) this.context.stdout.write(JSON.stringify(ready) + '\n')
  }
}

/** The port from `--port`, else `$AGENTMESH_PORT`, else 7700; anything but 0–65535 is a usage error. */
function parsePort(option: string | undefined, env: string | undefined): number {
  const [text, source] =
    option !== undefined ? [option, '--port'] : env ? [env, '$AGENTMESH_PORT'] : [String(DEFAULT_PORT), '']
  const port = /^\d{1,5}$/.test(text) ? Number(text) : NaN
  if (!(port >= 0 && port <= 65535)) {
    throw new UsageError(`${source} must be a port number from 0 to 65535 (got ${JSON.stringify(text)})`)
  }
  return port
}

/** The code and message of a failure the user can act on; undefined for anything else (a bug). */
function describeFailure(err: unknown): { code: string; message: string } | undefined {
  if (isMeshError(err)) {
    // The store wraps driver errors: their text says what went wrong (connection refused, bad password).
    const cause = err.cause instanceof Error ? err.cause.message : ''
    const message = cause === '' || err.message.includes(cause) ? err.message : `${err.message} (${cause})`
    return { code: err.code, message }
  }
  if (err instanceof StartupError) return { code: err.code, message: err.message }
  return undefined
}

async function closeQuietly(store: Store): Promise<void> {
  await store.close().catch(() => undefined)
}
