import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ManualClock } from '../../../protocol/clock.js'
import { buildOnce } from '../../../test/support/coordinator-process.js'
import { startWorld, type World } from '../../../test/support/coordinator-world.js'
import { am } from '../../../test/support/cli-mesh.js'
import { EXIT } from '../exit-codes.js'
import type { DoctorJson } from './doctor.js'

const H = 3_600_000

// The clock check of the real binary against coordinators whose clock (the one that judges attestations,
// `GET /health`'s `time`) is off by more than session attestations tolerate, one each way.
describe('agentmesh doctor: clock skew against the coordinator', () => {
  const worlds: World[] = []

  beforeAll(async () => {
    await buildOnce()
    // One after the other: two PGlite stores opening at once on a busy 2-core machine time out.
    worlds.push(await startWorld('pglite', { clock: new ManualClock(Date.now() + 6 * H + 10 * 60_000) }))
    worlds.push(await startWorld('pglite', { clock: new ManualClock(Date.now() - 12 * H - 10 * 60_000) }))
  }, 90_000)

  afterAll(async () => {
    for (const w of worlds) await w.close()
  })

  async function clockOf(world: World) {
    const r = await am(['doctor', '--coordinator', world.url, '--json', '--home', '/nonexistent-home'])
    expect(r.code, r.stdout + r.stderr).toBe(EXIT.DOCTOR_FAILED)
    const out = JSON.parse(r.stdout) as DoctorJson
    expect(out.ok).toBe(false)
    expect(out.checks.filter((c) => c.status === 'fail').map((c) => c.name)).toEqual([
      `clock skew (${world.url})`,
    ])
    return out.checks.find((c) => c.name === `clock skew (${world.url})`)!
  }

  it('fails when this machine is over 6 h behind (attestations expire before they are renewed)', async () => {
    const check = await clockOf(worlds[0]!)
    expect(check.detail).toMatch(
      /^this machine's clock is 6 h \d+ min behind the coordinator's: .*MESH_ERR_EXPIRED/,
    )
    expect(check.fix).toMatch(/NTP/)
  })

  it('fails when this machine is over 12 h ahead (attestations refused as too long)', async () => {
    const check = await clockOf(worlds[1]!)
    expect(check.detail).toMatch(
      /^this machine's clock is 12 h \d+ min ahead of the coordinator's: .*MESH_ERR_TTL_TOO_LONG/,
    )
  })
})
