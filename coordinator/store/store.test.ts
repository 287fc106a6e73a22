import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { openStore, valuesPlaceholders } from './index.js'
import { openTestStore, storeLegs, type TestStore } from './testing.js'
import type { Store, Tx } from './types.js'

describe.each(storeLegs())('store on %s', (driver) => {
  let store: TestStore
  beforeEach(async () => {
    store = await openTestStore(driver)
  })
  afterEach(async () => {
    await store.close()
  })

  it('answers ping and reports its driver', async () => {
    expect(store.driver).toBe(driver)
    expect(await store.ping()).toBe(true)
  })

  it('round-trips int8, bytea, null, boolean and arrays with the normalised types', async () => {
    await store.query(
      'create table t (i bigint, b bytea, n text, f boolean, tags text[], keys bytea[], small integer)',
    )
    const big = 2 ** 40 + 7
    const bytes = new Uint8Array([0, 1, 127, 128, 255])
    // A view into a larger buffer: only its own bytes may be bound.
    const view = new Uint8Array([9, 9, 1, 2, 3, 9]).subarray(2, 5)
    const tags = ['a', 'b,c', '"quoted"', 'ü', '']
    await store.query('insert into t values ($1, $2, $3, $4, $5, $6, $7)', [
      big,
      bytes,
      null,
      true,
      tags,
      [bytes, view],
      -3,
    ])
    await store.query('insert into t (i, f, b) values ($1, $2, $3)', [-1, false, Buffer.from('hi')])
    const rows = await store.query('select * from t order by i desc')
    expect(rows).toHaveLength(2)
    const [first, second] = rows
    expect(first).toEqual({ i: big, b: bytes, n: null, f: true, tags, keys: [bytes, view], small: -3 })
    expect(first?.['i']).toBeTypeOf('number')
    // Plain Uint8Array on both drivers (not a Buffer), so code never asks which driver it got.
    expect(Object.getPrototypeOf(first?.['b'])).toBe(Uint8Array.prototype)
    expect(second).toMatchObject({ i: -1, f: false, b: new Uint8Array([104, 105]), tags: null })

    const [count] = await store.query<{ n: number; total: number }>(
      'select count(*) as n, sum(i)::bigint as total from t where $1 = any(tags) or f = $2',
      ['b,c', false],
    )
    expect(count).toEqual({ n: 2, total: big - 1 })
    const [empty] = await store.query('select $1::text[] as xs, $2::bytea as e', [[], new Uint8Array()])
    expect(empty).toEqual({ xs: [], e: new Uint8Array() })
  })

  it('binds bytea[] with nulls, empty strings and the bytes of quote and backslash, as unnest rows', async () => {
    const awkward = new Uint8Array([0x22, 0x5c, 0x7b, 0x7d, 0x2c, 0x00, 0x4e])
    const keys = [awkward, null, new Uint8Array(), new Uint8Array([1, 2, 3]).subarray(1)]
    const rows = await store.query<{ k: Uint8Array | null; n: number }>(
      'select k, n from unnest($1::bytea[], $2::int[]) as u(k, n) order by n',
      [keys, [1, 2, 3, 4]],
    )
    expect(rows).toEqual([
      { k: awkward, n: 1 },
      { k: null, n: 2 },
      { k: new Uint8Array(), n: 3 },
      { k: new Uint8Array([2, 3]), n: 4 },
    ])
    // A text array is not taken for a byte array because it holds nulls.
    // (Read back element by element: postgres.js parses a NULL inside a text[] as the string 'NULL'.)
    const [t] = await store.query(
      'select ($1::text[])[1] is null as a, ($1::text[])[2] as b, ($1::text[])[3] is null as c',
      [[null, 'a"b\\c', null]],
    )
    expect(t).toEqual({ a: true, b: 'a"b\\c', c: true })
  })

  it('stores the schema columns others rely on (text[] scopes, bytea[] acl)', async () => {
    const owner = new Uint8Array(32).fill(1)
    await store.query('insert into mesh (id, owner_pk, created_at) values ($1, $2, $3)', ['m1', owner, 1])
    await store.query(
      'insert into topic (mesh, name, acl, changed_version) values ($1, $2, $3, $4), ($1, $5, null, $4)',
      ['m1', 'news', [owner, new Uint8Array(32).fill(2)], 1, 'open'],
    )
    const topics = await store.query('select name, acl, next_offset, key_epoch from topic order by name')
    expect(topics).toEqual([
      { name: 'news', acl: [owner, new Uint8Array(32).fill(2)], next_offset: 0, key_epoch: 1 },
      { name: 'open', acl: null, next_offset: 0, key_epoch: 1 },
    ])
    const [bumped] = await store.query(
      'update topic set next_offset = next_offset + $3 where mesh = $1 and name = $2 returning next_offset',
      ['m1', 'news', 2 ** 35],
    )
    expect(bumped).toEqual({ next_offset: 2 ** 35 })
  })

  it('commits a transaction and returns its result', async () => {
    await store.query('create table t (v text)')
    const result = await store.transaction(async (tx) => {
      await tx.query('insert into t values ($1)', ['a'])
      return (await tx.query<{ v: string }>('select v from t'))[0]?.v
    })
    expect(result).toBe('a')
    expect(await store.query('select v from t')).toEqual([{ v: 'a' }])
  })

  it('rolls back when the callback throws, and rethrows the same error', async () => {
    await store.query('create table t (v text)')
    const boom = new Error('boom')
    await expect(
      store.transaction(async (tx) => {
        await tx.query('insert into t values ($1)', ['a'])
        throw boom
      }),
    ).rejects.toBe(boom)
    // A failed statement aborts the transaction; it rolls back too.
    await expect(
      store.transaction(async (tx) => {
        await tx.query('insert into t values ($1)', ['b'])
        await tx.query('insert into no_such_table values (1)')
      }),
    ).rejects.toMatchObject({ code: '42P01' })
    expect(await store.query('select v from t')).toEqual([])
  })

  it('keeps SQLSTATE codes on SQL errors', async () => {
    await store.query('create table t (v text primary key)')
    await store.query("insert into t values ('x')")
    await expect(store.query("insert into t values ('x')")).rejects.toMatchObject({ code: '23505' })
  })

  it('serialises concurrent transactions: 20 read-modify-write increments give 20', async () => {
    await store.query('create table counter (id int primary key, n int not null)')
    await store.query('insert into counter values (1, 0)')
    await Promise.all(
      Array.from({ length: 20 }, () =>
        store.transaction(async (tx) => {
          const [row] = await tx.query<{ n: number }>('select n from counter where id = 1 for update')
          await tx.query('update counter set n = $1 where id = 1', [(row?.n ?? 0) + 1])
        }),
      ),
    )
    expect(await store.query('select n from counter')).toEqual([{ n: 20 }])
  })

  it('never runs a query outside a transaction inside it', async () => {
    await store.query('create table t (v text)')
    let release!: () => void
    const gate = new Promise<void>((resolve) => (release = resolve))
    let inserted!: () => void
    const insertedSignal = new Promise<void>((resolve) => (inserted = resolve))
    const tx = store.transaction(async (t) => {
      await t.query('insert into t values ($1)', ['uncommitted'])
      inserted()
      await gate
      throw new Error('roll back')
    })
    await insertedSignal
    const outside = store.query('select count(*) as n from t')
    release()
    await expect(tx).rejects.toThrow('roll back')
    expect(await outside).toEqual([{ n: 0 }])
  })

  it('refuses the store itself inside its transaction, and a handle after its transaction', async () => {
    let leaked: Tx | undefined
    await expect(
      store.transaction(async (tx) => {
        leaked = tx
        await store.query('select 1')
      }),
    ).rejects.toMatchObject(meshError('MESH_ERR_INTERNAL'))
    await expect(leaked!.query('select 1')).rejects.toMatchObject(meshError('MESH_ERR_INTERNAL'))
    expect(await store.query('select 1 as one')).toEqual([{ one: 1 }])
  })

  it('delivers notifications to listeners, after commit, until unlisten', async () => {
    const received = nextNotification(store, 'mesh_Ab-1')
    const stop = await received.listening
    await store.notify('mesh_Ab-1', 'del_1')
    expect(await received.payload).toBe('del_1')

    const other = nextNotification(store, 'mesh_other')
    await other.listening
    const late: string[] = []
    const stopLate = await store.listen('mesh_Ab-1', (payload) => late.push(payload))
    await stop()
    await stopLate()
    await store.notify('mesh_Ab-1', 'after unlisten')
    await store.transaction(async (tx) => {
      await tx.query('select pg_notify($1, $2)', ['mesh_other', 'from tx'])
    })
    // Notifications arrive in commit order: once this one is here, the earlier one would have been.
    expect(await other.payload).toBe('from tx')
    expect(late).toEqual([])
    await expect(store.notify('a"b', 'x')).rejects.toMatchObject(meshError('MESH_ERR_INTERNAL'))
  })

  it('inserts 1,000 rows in one multi-row statement (group commit)', async () => {
    const cols = 9
    const params: unknown[] = []
    for (let i = 0; i < 1000; i++) {
      const envelope = new Uint8Array(64).fill(i % 256)
      params.push(
        `d${i}`,
        'm1',
        new Uint8Array(32),
        new Uint8Array(32).fill(7),
        `c${i}`,
        envelope,
        64,
        i,
        i + 1,
      )
    }
    const sql =
      'insert into delivery (id, mesh, recipient, sender, client_message_id, envelope, size, queued_at, ' +
      `expires_at) values ${valuesPlaceholders(1000, cols)} returning id`
    const returned = await store.transaction((tx) => tx.query(sql, params))
    expect(returned).toHaveLength(1000)
    const [stats] = await store.query(
      'select count(*) as n, sum(size) as bytes, max(queued_at) as last from delivery',
    )
    expect(stats).toEqual({ n: 1000, bytes: 64_000, last: 999 })
    const [row] = await store.query('select envelope, attempts, receipt from delivery where id = $1', [
      'd300',
    ])
    expect(row).toEqual({ envelope: new Uint8Array(64).fill(300 % 256), attempts: 0, receipt: true })
  })

  it('rejects every call after close() with MESH_ERR_STORE_CLOSED', async () => {
    await store.close()
    await store.close()
    await expect(store.query('select 1')).rejects.toMatchObject(meshError('MESH_ERR_STORE_CLOSED'))
    await expect(store.transaction(async () => {})).rejects.toMatchObject(meshError('MESH_ERR_STORE_CLOSED'))
    await expect(store.listen('c', () => {})).rejects.toMatchObject(meshError('MESH_ERR_STORE_CLOSED'))
    await expect(store.notify('c', 'x')).rejects.toMatchObject(meshError('MESH_ERR_STORE_CLOSED'))
    await expect(store.ping()).rejects.toMatchObject(meshError('MESH_ERR_STORE_CLOSED'))
  })
})

describe('valuesPlaceholders', () => {
  it('numbers placeholders row by row from start', () => {
    expect(valuesPlaceholders(2, 3)).toBe('($1, $2, $3), ($4, $5, $6)')
    expect(valuesPlaceholders(1, 2, 4)).toBe('($4, $5)')
  })

  it('refuses shapes Postgres cannot bind', () => {
    expect(() => valuesPlaceholders(0, 3)).toThrow(RangeError)
    expect(() => valuesPlaceholders(10_000, 7)).toThrow(RangeError)
    expect(() => valuesPlaceholders(1, 1, 0)).toThrow(RangeError)
  })
})

describe('openStore on an unreachable Postgres', () => {
  it('fails with MESH_ERR_STORE_UNAVAILABLE', async () => {
    // Port 1 on loopback: refused at once, no test reaches beyond 127.0.0.1.
    await expect(openStore({ databaseUrl: 'postgres://postgres@127.0.0.1:1/none' })).rejects.toMatchObject({
      ...meshError('MESH_ERR_STORE_UNAVAILABLE'),
      cause: expect.any(Error),
    })
  })
})

/** What a rejection with a MeshError of `code` looks like to `toMatchObject`. */
function meshError(code: string): { name: string; code: string } {
  return { name: 'MeshError', code }
}

/** Starts listening on `channel`; `payload` resolves with the first notification. */
function nextNotification(
  store: Store,
  channel: string,
): { listening: Promise<() => Promise<void>>; payload: Promise<string> } {
  let resolve!: (payload: string) => void
  const payload = new Promise<string>((r) => (resolve = r))
  return { listening: store.listen(channel, resolve), payload }
}
