import { assertExecutable, assertPostgresReachable, describeLegs, legsFrom } from './legs.js'

/**
 * Vitest global setup: an optional leg that is asked for must work (DESIGN.md §7), so a set but
 * broken DATABASE_URL or AGENTMESH_CHROMIUM fails the whole run instead of skipping quietly.
 */
export default async function setup(): Promise<void> {
  const legs = legsFrom(process.env)
  for (const leg of legs) {
    if (leg.value === undefined) continue
    if (leg.name === 'postgres') await assertPostgresReachable(leg.value)
    else await assertExecutable(leg.value)
  }
  console.log(describeLegs(legs))
}
