/**
 * A store that times every call it passes on: per statement (its first words), per transaction, and the
 * row count of each group-commit `insert into delivery`. The bench coordinator runs on one so that a
 * scenario can say where the accept path waits, with no change to coordinator code.
 */
import type { Row, Store, Tx } from '../../coordinator/store/types.js'

/** Calls of one statement: how many, and their wall time (queueing for a connection included). */
export interface StatementStats {
  statement: string
  calls: number
  totalMs: number
  maxMs: number
}

export interface StoreStats {
  /** Busiest first (by total time). */
  statements: StatementStats[]
  transactions: { calls: number; totalMs: number; maxMs: number }
  /** Rows per `insert into delivery`, in commit order. */
  deliveryBatches: number[]
}

/** The columns the committer binds per `delivery` row (coordinator/delivery/committer.ts). */
const DELIVERY_COLS = 12

export function timedStore(inner: Store): Store & { stats(reset?: boolean): StoreStats } {
  let byStatement = new Map<string, StatementStats>()
  let tx = { calls: 0, totalMs: 0, maxMs: 0 }
  let batches: number[] = []

  const timed = async <T>(text: string, params: readonly unknown[], run: () => Promise<T>): Promise<T> => {
    const start = performance.now()
    try {
      return await run()
    } finally {
      const ms = performance.now() - start
      const key = text.replace(/\s+/g, ' ').trim().slice(0, 72)
      let s = byStatement.get(key)
      if (s === undefined) byStatement.set(key, (s = { statement: key, calls: 0, totalMs: 0, maxMs: 0 }))
      s.calls++
      s.totalMs += ms
      s.maxMs = Math.max(s.maxMs, ms)
      if (key.startsWith('insert into delivery ')) {
        // Column arrays (`unnest`) carry one entry per row; a VALUES list carries DELIVERY_COLS per row.
        const first = params[0]
        batches.push(Array.isArray(first) ? first.length : params.length / DELIVERY_COLS)
      }
    }
  }
  const wrapTx = (t: Tx): Tx => ({
    query: <T extends Row = Row>(text: string, params: readonly unknown[] = []) =>
      timed(text, params, () => t.query<T>(text, params)),
  })

  return {
    driver: inner.driver,
    query: <T extends Row = Row>(text: string, params: readonly unknown[] = []) =>
      timed(text, params, () => inner.query<T>(text, params)),
    async transaction<T>(fn: (t: Tx) => Promise<T>): Promise<T> {
      const start = performance.now()
      try {
        return await inner.transaction((t) => fn(wrapTx(t)))
      } finally {
        const ms = performance.now() - start
        tx.calls++
        tx.totalMs += ms
        tx.maxMs = Math.max(tx.maxMs, ms)
      }
    },
    listen: (channel, onNotify) => inner.listen(channel, onNotify),
    notify: (channel, payload) => timed(`notify ${channel}`, [], () => inner.notify(channel, payload)),
    ping: () => inner.ping(),
    close: () => inner.close(),
    stats(reset = false) {
      const out: StoreStats = {
        statements: [...byStatement.values()].sort((a, b) => b.totalMs - a.totalMs),
        transactions: { ...tx },
        deliveryBatches: batches,
      }
      if (reset) {
        byStatement = new Map()
        tx = { calls: 0, totalMs: 0, maxMs: 0 }
        batches = []
      }
      return out
    },
  }
}
