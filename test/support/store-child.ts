/**
 * A runtime store in a child process, for tests that need a second process on a store file or that
 * `kill -9` one mid-write. Run with `node --import tsx test/support/store-child.ts <mode> <path> …`:
 *
 * - `hold <path>`: opens the store, prints `open`, and keeps it open until killed; prints
 *   `error <code>` (and exits 1) when the open fails.
 * - `insert <path> <first>`: opens the store and inserts outbox rows `first, first+1, …` forever, each
 *   alone or (every third) as a batch of three with `insertOutboxMany`; after each insert's promise
 *   resolved it prints the numbers it committed (`ok <n> [<n>…]`). Every tenth row is also moved
 *   on (`claimDue` and an update), so the file sees updates beside inserts.
 */
import { testOutboxRow } from '../../peer-runtime/store/compliance.js'
import { sqliteStore } from '../../peer-runtime/node/sqlite-store.js'
import { isMeshError } from '../../protocol/errors.js'

const [mode, path, arg] = process.argv.slice(2)

function out(line: string): void {
  process.stdout.write(`${line}\n`)
}

async function main(): Promise<void> {
  if (path === undefined) throw new Error('usage: store-child.ts <hold|insert> <path> [first]')
  let store
  try {
    store = sqliteStore({ path })
  } catch (err) {
    out(`error ${isMeshError(err) ? err.code : String(err)}`)
    process.exitCode = 1
    return
  }
  if (mode === 'hold') {
    out('open')
    setInterval(() => {}, 60_000)
    return
  }
  let n = Number(arg ?? '1')
  for (;;) {
    if (n % 3 === 0) {
      const batch = [n, n + 1, n + 2]
      await store.insertOutboxMany(batch.map((i) => testOutboxRow(i)))
      out(`ok ${batch.join(' ')}`)
      n += 3
    } else {
      await store.insertOutbox(testOutboxRow(n))
      out(`ok ${n}`)
      n += 1
    }
    if (n % 10 < 3) {
      const [row] = await store.claimDue(Number.MAX_SAFE_INTEGER, 1)
      if (row !== undefined)
        await store.updateOutbox(row.id, { state: 'accepted', updatedAt: n }, ['inflight'])
    }
  }
}

await main()
