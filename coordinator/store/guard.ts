import { AsyncLocalStorage } from 'node:async_hooks'
import { MeshError } from '../../protocol/errors.js'

/** The error every call on a closed store rejects with. */
function storeClosedError(): MeshError {
  return new MeshError('MESH_ERR_STORE_CLOSED', 'the store is closed')
}

/**
 * Throws unless `channel` is a name both drivers LISTEN on verbatim: they quote it (so case is kept),
 * and Postgres caps identifiers at 63 bytes (a longer LISTEN name would be silently truncated).
 */
export function assertChannel(channel: string): void {
  const bytes = Buffer.byteLength(channel)
  if (bytes === 0 || bytes > 63 || /["\0]/.test(channel)) {
    throw new MeshError('MESH_ERR_INTERNAL', `invalid notification channel name ${JSON.stringify(channel)}`)
  }
}

interface TxScope {
  open: boolean
}

/**
 * Whether stores refuse calls made from inside their own transactions, unless told otherwise: in our
 * test runs (vitest sets `VITEST`) and with `AGENTMESH_STORE_CHECKS=1`. The check needs an
 * AsyncLocalStorage, which on Node 20 puts a hook on every promise the process makes (about 3% of the
 * coordinator's busy CPU in `bench relay`), so a production coordinator runs without it; the mistake it
 * catches is a programming error our suites meet first.
 */
export const NESTING_CHECK_DEFAULT =
  process.env['VITEST'] !== undefined || process.env['AGENTMESH_STORE_CHECKS'] === '1'

/**
 * The rules both drivers enforce the same way, so code that passes on one leg behaves alike on the
 * other: nothing runs after `close()`; a transaction handle stops working once its transaction ends;
 * and (when nesting is checked) a call on the store itself from inside one of its transaction callbacks
 * is refused. On PGlite's
 * single connection that call would wait for the transaction that is waiting for it (a silent deadlock);
 * on Postgres it would run outside the transaction, which is never what the caller meant.
 */
export class StoreGuard {
  #closed = false
  /** Set when nesting is checked (see NESTING_CHECK_DEFAULT). */
  readonly #scope: AsyncLocalStorage<TxScope> | undefined

  constructor(checkNesting = NESTING_CHECK_DEFAULT) {
    this.#scope = checkNesting ? new AsyncLocalStorage<TxScope>() : undefined
  }

  /** True once `close()` was called. */
  get closed(): boolean {
    return this.#closed
  }

  /** Marks the store closed; false when it already was. */
  close(): boolean {
    if (this.#closed) return false
    this.#closed = true
    return true
  }

  /** Throws unless the store is open and `what` is not called from inside its own transaction. */
  enter(what: string): void {
    if (this.#closed) throw storeClosedError()
    if (this.#scope?.getStore()?.open === true) {
      throw new MeshError(
        'MESH_ERR_INTERNAL',
        `store.${what}() called inside store.transaction(); use the transaction handle (tx) instead`,
      )
    }
  }

  /**
   * Runs a transaction's callback; `live` throws once the transaction has ended, so drivers call it
   * before every statement on the handle.
   */
  async inTransaction<T>(fn: (live: () => void) => Promise<T>): Promise<T> {
    const scope: TxScope = { open: true }
    const live = (): void => {
      if (!scope.open) {
        throw new MeshError('MESH_ERR_INTERNAL', 'a transaction handle was used after its transaction ended')
      }
    }
    try {
      return await (this.#scope === undefined ? fn(live) : this.#scope.run(scope, () => fn(live)))
    } finally {
      scope.open = false
    }
  }
}
