import { access } from 'node:fs/promises'
import postgres from 'postgres'
import { describe, expect, it } from 'vitest'
import { startPgCluster } from '../support/pg-cluster.js'

describe('the private Postgres cluster of the chaos suite', () => {
  it('serves on its own port (never 5432), comes back after an immediate restart, and is removed', async () => {
    const cluster = await startPgCluster()
    try {
      expect(cluster.port).not.toBe(5432)
      expect(cluster.url).toMatch(/^postgres:\/\/postgres@127\.0\.0\.1:\d+\/postgres$/)
      const sql = postgres(cluster.url, { max: 1, onnotice: () => {} })
      try {
        await sql`create table t (n int)`
        await sql`insert into t values (1)`
      } finally {
        await sql.end({ timeout: 1 })
      }
      await cluster.restartImmediate()
      const again = postgres(cluster.url, { max: 1, onnotice: () => {} })
      try {
        // A committed row survives the crash-like stop (WAL replay on start).
        expect(await again`select n from t`).toEqual([{ n: 1 }])
      } finally {
        await again.end({ timeout: 1 })
      }
    } finally {
      await cluster.destroy()
    }
    await expect(access(cluster.dir)).rejects.toThrow()
  }, 60_000)
})
