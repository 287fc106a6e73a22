/**
 * A smoke test of `npm run bench -- p2p --quick`: the scenario runs end to end (two peer processes, a
 * coordinator, the webrtc handshake through it, the correctness probes on every lane) and prints its
 * figures. The figures themselves are not asserted: a timed test on a shared machine cannot hold a rate.
 */
import { describe, expect, it } from 'vitest'
import { runBench } from '../../test/support/bench-run.js'

describe('bench p2p --quick', () => {
  it('runs every lane and prints each figure as a JSON line with its goal', async () => {
    const { code, stdout, stderr } = await runBench(['p2p', '--quick'])
    expect(code, stderr).toBe(0)
    const figures = stdout
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line) as { name: string; value: number; met?: boolean })
    expect(figures.map((f) => f.name.replace(/ \((pglite|postgres)\)$/, ''))).toEqual([
      'send 1KiB, webrtc',
      'send 1KiB, ws-relay',
      'send 60KiB, webrtc',
      'send 60KiB, ws-relay',
      'latency 1KiB, webrtc p50',
      'latency 60KiB, webrtc p50',
    ])
    for (const f of figures) expect(f.value, f.name).toBeGreaterThan(0)
    const goals = figures.filter((f) => f.met !== undefined)
    expect(goals.map((f) => typeof f.met)).toEqual(['boolean', 'boolean', 'boolean', 'boolean'])
  }, 120_000)
})
