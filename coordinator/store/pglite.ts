import type { PGlite, Transaction } from '@electric-sql/pglite'
import { MeshError } from '../../protocol/errors.js'
import { assertChannel, StoreGuard } from './guard.js'
import { lockDataDir, type DirLock } from './lock.js'
import { initdbApart, needsInitdb } from './pglite-initdb.js'
import type { Row, ScriptStore, ScriptTx } from './types.js'

/** How to open the embedded store. */
export interface PgliteStoreOptions {
  /** The data directory (created if missing, locked while open); absent: in memory. */
  dataDir?: string
  /** A `pgliteSnapshot()` to start an in-memory database from (skips initdb: tests). */
  snapshot?: Blob
}

/**
 * Opens an embedded PGlite store. Without `dataDir` the database lives in memory (tests). With one, the
 * directory is locked first (`MESH_ERR_STORE_LOCKED` if another live process holds it) and unlocked on
 * `close()`. Migrations are not run here: see `openStore`.
 */
export async function openPgliteStore(opts: PgliteStoreOptions = {}): Promise<ScriptStore> {
  const lock = opts.dataDir === undefined ? undefined : await lockDataDir(opts.dataDir)
  try {
    if (opts.dataDir !== undefined && needsInitdb(opts.dataDir)) await initdbApart(opts.dataDir)
    const { PGlite } = await loadPglite()
    const pg = await PGlite.create({
      ...(opts.dataDir === undefined ? {} : { dataDir: opts.dataDir }),
      ...(opts.snapshot === undefined ? {} : { loadDataDir: opts.snapshot }),
      parsers: PARSERS,
      serializers: SERIALIZERS,
      startParams: startParams(PGlite),
    })
    return new PgliteStore(pg, lock)
  } catch (cause) {
    await lock?.release()
    const where = opts.dataDir ?? 'memory'
    throw new MeshError('MESH_ERR_STORE_UNAVAILABLE', `PGlite failed to open (${where})`, { cause })
  }
}

/**
 * A dump of a fresh in-memory database after `prepare` ran on it. Test stores start from one: loading it
 * takes about a quarter of the time initdb does (~0.5 s against ~2 s), and every store-backed test pays it.
 */
export async function pgliteSnapshot(prepare: (store: ScriptStore) => Promise<unknown>): Promise<Blob> {
  const { PGlite } = await loadPglite()
  const pg = await PGlite.create({
    parsers: PARSERS,
    serializers: SERIALIZERS,
    startParams: startParams(PGlite),
  })
  const store = new PgliteStore(pg, undefined)
  try {
    await prepare(store)
    return await pg.dumpDataDir('none')
  } finally {
    await store.close()
  }
}

/**
 * PGlite's own start parameters, and a smaller buffer cache: PGlite keeps Postgres's default 128 MB of
 * `shared_buffers` inside its WebAssembly memory, on top of the OS page cache that already holds the
 * data directory's files. A store opened and migrated in a fresh directory held 432 MB resident with
 * the default and 284 MB with 16 MB (bench processes under tsx, PGlite 0.5.16). Passed on the command
 * line, so the data directory's postgresql.conf stays as initdb wrote it.
 */
function startParams(lib: typeof PGlite): string[] {
  return [...lib.defaultStartParams, '-c', 'shared_buffers=16MB']
}

/** PGlite's module, loaded when a store opens: a coordinator on Postgres never pays for it (~7 MB). */
function loadPglite(): Promise<typeof import('@electric-sql/pglite')> {
  return import('@electric-sql/pglite')
}

/** Postgres type OIDs (fixed by Postgres; PGlite's `types` names the same numbers). */
const INT8 = 20
const BYTEA = 17

/**
 * int8 as a JS number (types.ts): PGlite's default gives a BigInt beyond 2^53, which would make callers
 * check the type. Values that large do not occur in our schema (times, offsets, versions).
 */
const PARSERS = {
  [INT8]: (text: string): number => Number(text),
  [BYTEA]: (text: string): Uint8Array => new Uint8Array(Buffer.from(text.slice(2), 'hex')),
}

/** PGlite's default bytea codec builds the hex text byte by byte; Buffer's hex codec is native. */
const SERIALIZERS = {
  [BYTEA]: (value: unknown): string => {
    if (!(value instanceof Uint8Array)) throw new TypeError('a bytea parameter must be a Uint8Array')
    return '\\x' + Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('hex')
  },
}

class PgliteStore implements ScriptStore {
  readonly driver = 'pglite'
  readonly #pg: PGlite
  readonly #lock: DirLock | undefined
  readonly #guard = new StoreGuard()
  #closing: Promise<void> | undefined

  constructor(pg: PGlite, lock: DirLock | undefined) {
    this.#pg = pg
    this.#lock = lock
  }

  // PGlite itself serialises: query() and transaction() share one mutex, so a query issued while a
  // transaction runs waits for its end instead of running inside it.
  async query<T extends Row = Row>(text: string, params: readonly unknown[] = []): Promise<T[]> {
    this.#guard.enter('query')
    return (await this.#pg.query<T>(text, [...params])).rows
  }

  async transaction<T>(fn: (tx: ScriptTx) => Promise<T>): Promise<T> {
    this.#guard.enter('transaction')
    return await this.#pg.transaction((raw) => this.#guard.inTransaction((live) => fn(scriptTx(raw, live))))
  }

  async listen(channel: string, onNotify: (payload: string) => void): Promise<() => Promise<void>> {
    this.#guard.enter('listen')
    assertChannel(channel)
    // Quoted so the name keeps its case, as postgres.js does. We unlisten by the quoted name too:
    // the function PGlite returns unlistens by the unquoted name, which Postgres folds to lower case.
    const quoted = `"${channel}"`
    const handler = (payload: string): void => onNotify(payload)
    await this.#pg.listen(quoted, handler)
    let listening = true
    return async () => {
      if (!listening || this.#guard.closed) return
      listening = false
      await this.#pg.unlisten(quoted, handler)
    }
  }

  async notify(channel: string, payload: string): Promise<void> {
    this.#guard.enter('notify')
    assertChannel(channel)
    await this.#pg.query('select pg_notify($1, $2)', [channel, payload])
  }

  async ping(): Promise<boolean> {
    this.#guard.enter('ping')
    try {
      await this.#pg.query('select 1')
      return true
    } catch {
      return false
    }
  }

  close(): Promise<void> {
    if (this.#guard.close()) this.#closing = this.#shutdown()
    return this.#closing ?? Promise.resolve()
  }

  async #shutdown(): Promise<void> {
    try {
      // Waits for the running transaction and queued queries before it stops the database.
      await this.#pg.close()
    } finally {
      await this.#lock?.release()
    }
  }
}

function scriptTx(raw: Transaction, live: () => void): ScriptTx {
  return {
    async query<T extends Row = Row>(text: string, params: readonly unknown[] = []): Promise<T[]> {
      live()
      return (await raw.query<T>(text, [...params])).rows
    },
    async exec(script: string): Promise<void> {
      live()
      await raw.exec(script)
    },
  }
}
