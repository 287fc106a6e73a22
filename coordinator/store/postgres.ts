import type postgres from 'postgres'
import { MeshError } from '../../protocol/errors.js'
import { assertChannel, StoreGuard } from './guard.js'
import type { Row, ScriptStore, ScriptTx } from './types.js'

/** How to reach a Postgres server. */
export interface PostgresStoreOptions {
  /** Connection URL (`postgres://user@host:5432/db`). */
  url: string
  /** Pool size (default 10). */
  maxConnections?: number
  /** Schema to work in (the connections' `search_path`); default: the server's. */
  schema?: string
  /** Seconds to wait for a connection before a call fails (default 10). */
  connectTimeoutSeconds?: number
}

/**
 * Opens a store on Postgres through postgres.js and checks that the server answers, so a wrong URL
 * fails here (`MESH_ERR_STORE_UNAVAILABLE`) rather than at the first request. Migrations are not run
 * here: see `openStore`.
 */
export async function openPostgresStore(opts: PostgresStoreOptions): Promise<ScriptStore> {
  // Loaded here, not at start: a coordinator on PGlite never pays for postgres.js (about 8 MB resident).
  const { default: connect } = await import('postgres')
  PostgresError = connect.PostgresError
  const sql = connect(opts.url, {
    max: opts.maxConnections ?? 10,
    connect_timeout: opts.connectTimeoutSeconds ?? 10,
    // `create table if not exists` and friends send NOTICEs; postgres.js prints them by default.
    onnotice: () => {},
    types: {
      // int8 as a JS number, bytea as a plain Uint8Array: the normalisation types.ts promises.
      int8: { to: 20, from: [20], parse: (text: string) => Number(text), serialize: String },
      bytea: { to: 17, from: [17], parse: parseBytea, serialize: serializeBytea },
    },
    connection: opts.schema === undefined ? {} : { search_path: opts.schema },
  })
  try {
    await sql`select 1`
  } catch (cause) {
    await sql.end({ timeout: 0 })
    throw unavailable(cause)
  }
  return new PostgresStore(sql)
}

/** postgres.js's error class, once a store was opened. */
let PostgresError: typeof postgres.PostgresError | undefined

/** The custom types configured above, as postgres.js's generics see them. */
type Types = { int8: number; bytea: Uint8Array }
type Sql = postgres.Sql<Types>
type TxSql = postgres.TransactionSql<Types>
type Params = postgres.ParameterOrJSON<never>[]

// postgres.js sends a statement without parameters over the simple protocol, which would also accept
// several `;`-separated statements; PGlite's query() never does, so we keep query() to one statement.
// Prepared (postgres.js's default for its tagged queries): one round trip per call once a statement is
// known. A plan invalidated by DDL is re-prepared by postgres.js itself.
const EXTENDED = { prepare: true, simple: false } as postgres.UnsafeQueryOptions

class PostgresStore implements ScriptStore {
  readonly driver = 'postgres'
  readonly #sql: Sql
  readonly #guard = new StoreGuard()
  #closing: Promise<void> | undefined

  constructor(sql: Sql) {
    this.#sql = sql
  }

  async query<T extends Row = Row>(text: string, params: readonly unknown[] = []): Promise<T[]> {
    this.#guard.enter('query')
    return await run<T>(this.#sql, this.#sql, text, params)
  }

  async transaction<T>(fn: (tx: ScriptTx) => Promise<T>): Promise<T> {
    this.#guard.enter('transaction')
    try {
      // begin() reserves one pooled connection for the callback; the row locks and the isolation
      // level (read committed) are the server's, as they would be for any Postgres client.
      const result = await this.#sql.begin((tx) =>
        this.#guard.inTransaction((live) => fn(scriptTx(this.#sql, tx, live))),
      )
      return result as T
    } catch (err) {
      throw wrap(err)
    }
  }

  async listen(channel: string, onNotify: (payload: string) => void): Promise<() => Promise<void>> {
    this.#guard.enter('listen')
    assertChannel(channel)
    // postgres.js calls listeners from its socket reader; a throwing handler would unwind through it.
    // Deferred, it surfaces as an uncaught exception instead (as PGlite's listeners do).
    const handler = (payload: string): void => queueMicrotask(() => onNotify(payload))
    let subscription: postgres.ListenMeta
    try {
      subscription = await this.#sql.listen(channel, handler)
    } catch (err) {
      throw wrap(err)
    }
    let listening = true
    return async () => {
      if (!listening || this.#guard.closed) return
      listening = false
      await subscription.unlisten()
    }
  }

  async notify(channel: string, payload: string): Promise<void> {
    this.#guard.enter('notify')
    assertChannel(channel)
    await run(this.#sql, this.#sql, 'select pg_notify($1, $2)', [channel, payload])
  }

  async ping(): Promise<boolean> {
    this.#guard.enter('ping')
    try {
      await this.#sql.unsafe('select 1', [], EXTENDED)
      return true
    } catch {
      return false
    }
  }

  close(): Promise<void> {
    // end() lets running queries finish (up to 5 s) and also closes the LISTEN connection.
    if (this.#guard.close()) this.#closing = this.#sql.end({ timeout: 5 })
    return this.#closing ?? Promise.resolve()
  }
}

function scriptTx(sql: Sql, tx: TxSql, live: () => void): ScriptTx {
  return {
    async query<T extends Row = Row>(text: string, params: readonly unknown[] = []): Promise<T[]> {
      live()
      return await run<T>(sql, tx, text, params)
    },
    async exec(script: string): Promise<void> {
      live()
      await tx.unsafe(script).simple()
    },
  }
}

/** Runs one statement on `target` (the pool or a transaction's connection). */
async function run<T extends Row>(
  sql: Sql,
  target: Sql | TxSql,
  text: string,
  params: readonly unknown[],
): Promise<T[]> {
  // Every parameter typed 0 (unknown): the server infers each from the statement, as PGlite does, and
  // postgres.js then serialises by that type. Its own guess goes by the JS value and gets arrays wrong
  // (an array of Uint8Array would bind as bytea, not bytea[]).
  const bound = params.map((value) => sql.typed(byteaArrayText(value) as never, 0)) as unknown as Params
  try {
    const rows = await target.unsafe<T[]>(text, bound, EXTENDED)
    // A plain array, as PGlite returns: postgres.js's RowList carries extra fields (count, columns…).
    return Array.from(rows)
  } catch (err) {
    throw wrap(err)
  }
}

/** Connection trouble becomes `MESH_ERR_STORE_UNAVAILABLE`; SQL errors keep their SQLSTATE `code`. */
function wrap(err: unknown): unknown {
  return isConnectionFailure(err) ? unavailable(err) : err
}

function unavailable(cause: unknown): MeshError {
  const reason = cause instanceof Error ? cause.message : String(cause)
  return new MeshError('MESH_ERR_STORE_UNAVAILABLE', `Postgres is unavailable: ${reason}`, { cause })
}

function isConnectionFailure(err: unknown): boolean {
  if (err instanceof MeshError) return false
  if (typeof err !== 'object' || err === null || !('code' in err) || typeof err.code !== 'string') {
    return false
  }
  if (PostgresError !== undefined && err instanceof PostgresError) {
    // 08: connection exception; 57P01-3: admin shutdown, crash shutdown, cannot connect now;
    // 53300: too many connections.
    return /^(08|57P0[123]$|53300$)/.test(err.code)
  }
  // postgres.js's own connection errors and Node's socket errors (ECONNREFUSED, ENOTFOUND, …).
  return /^(E[A-Z]+|CONNECT_TIMEOUT|CONNECTION_[A-Z]+)$/.test(err.code)
}

function parseBytea(text: string): Uint8Array {
  // A copy, not a view: Buffer.from() may slice Node's shared pool, whose .buffer is not ours to hand out.
  return new Uint8Array(Buffer.from(text.slice(2), 'hex'))
}

/**
 * An array of byte strings (or nulls) as Postgres's array text, which postgres.js passes through as it
 * is; anything else unchanged. postgres.js would serialise each element to hex and then run two regular
 * expressions over every hex string to escape it; for the group commit's envelope column that was about
 * a tenth of the coordinator's busy CPU in `bench relay`, and most of its garbage. Hex needs no escaping
 * inside a quoted element but the backslash of its `\x` prefix.
 */
function byteaArrayText(value: unknown): unknown {
  if (!Array.isArray(value) || value.length === 0) return value
  let out = '{'
  for (let i = 0; i < value.length; i++) {
    const x: unknown = value[i]
    if (i > 0) out += ','
    if (x === null) out += 'NULL'
    else if (x instanceof Uint8Array) out += '"\\\\x' + hex(x) + '"'
    else return value
  }
  return out + '}'
}

function hex(value: Uint8Array): string {
  return Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('hex')
}

function serializeBytea(value: Uint8Array): string {
  return '\\x' + hex(value)
}
