/**
 * A smoke test of `npm run bench -- restart --quick`: logs of 100 and 1,000 events are written into the
 * coordinator's store, and each size's warm restart (saved view) is printed beside the full replay. The
 * scenario itself fails when a warm start fetches any event or a start ends below the log's version;
 * the times are not asserted (a timed test on a shared machine cannot hold one).
 */
import { describe, expect, it } from 'vitest'
import { runBench } from '../../test/support/bench-run.js'

interface Line {
  name: string
  value: number
  baseline: { value: number }
  eventsFetchedWarm?: number
  eventsFetchedCold?: number
  requestsCold?: number
}

describe('bench restart --quick', () => {
  it('prints each size warm beside the full replay, the warm one fetching nothing', async () => {
    const { code, stdout, stderr } = await runBench(['restart', '--quick'])
    expect(code, stderr).toBe(0)
    const lines = stdout
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line) as Line)
    expect(lines.map((l) => l.name)).toEqual([
      'restart, 100 events in the log',
      'verify 100 saved signed events (no network)',
      'restart, 1,000 events in the log',
      'verify 1,000 saved signed events (no network)',
    ])
    for (const l of lines) {
      expect(l.value, l.name).toBeGreaterThan(0)
      expect(l.baseline.value, l.name).toBeGreaterThan(0)
    }
    const [small, , large] = lines as [Line, Line, Line]
    expect(small).toMatchObject({ eventsFetchedWarm: 0, eventsFetchedCold: 100, requestsCold: 1 })
    // A thousand events do not fit one frame: the coordinator pages them.
    expect(large).toMatchObject({ eventsFetchedWarm: 0, eventsFetchedCold: 1000 })
    expect(large.requestsCold).toBeGreaterThan(1)
  }, 120_000)
})
