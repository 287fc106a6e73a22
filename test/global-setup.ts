import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { migratedPgliteSnapshot, SHARED_SNAPSHOT_ENV } from '../coordinator/store/testing.js'
import { assertExecutable, assertPostgresReachable, describeLegs, legsFrom } from './legs.js'

/**
 * Vitest global setup: an optional leg that is asked for must work (DESIGN.md §7), so a set but
 * broken DATABASE_URL or AGENTMESH_CHROMIUM fails the whole run instead of skipping quietly.
 */
export default async function setup(): Promise<() => Promise<void>> {
  const legs = legsFrom(process.env)
  for (const leg of legs) {
    if (leg.value === undefined) continue
    if (leg.name === 'postgres') await assertPostgresReachable(leg.value)
    else await assertExecutable(leg.value)
  }
  console.log(describeLegs(legs))
  // One migrated PGlite snapshot for the whole run: each test process would otherwise run initdb and
  // every migration once before its first store (seconds per file on this 2-core machine).
  const dir = await mkdtemp(join(tmpdir(), 'agentmesh-test-'))
  const path = join(dir, 'pglite-migrated.tar')
  await writeFile(path, new Uint8Array(await (await migratedPgliteSnapshot()).arrayBuffer()))
  process.env[SHARED_SNAPSHOT_ENV] = path
  return async () => {
    delete process.env[SHARED_SNAPSHOT_ENV]
    await rm(dir, { recursive: true, force: true })
  }
}
