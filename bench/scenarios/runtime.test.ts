/**
 * A smoke test of `npm run bench -- runtime --quick`: the coordinator, the floor and its echo, an idle-peer
 * process, lightweight clients and real runtime peers (2 + 2 processes) start, and every figure is printed
 * as a JSON line. What the figures read is not asserted: a timed test on a shared machine cannot hold one.
 */
import { describe, expect, it } from 'vitest'
import { runBench } from '../../test/support/bench-run.js'

describe('bench runtime --quick', () => {
  it('prints every figure, the CPU figures beside the floor', async () => {
    const { code, stdout, stderr } = await runBench(['runtime', '--quick'])
    expect(code, stderr).toBe(0)
    const figures = stdout
      .trim()
      .split('\n')
      .map(
        (line) =>
          JSON.parse(line) as {
            name: string
            value: number
            baseline?: { value: number }
            goal?: string
            met?: unknown
          },
      )
    expect(figures.map((f) => f.name)).toEqual([
      'memory per idle peer (12 started, connected, relay only)',
      'CPU per DM, sender side, runtime relay-only',
      'CPU per DM, receiver side, runtime relay-only',
      'runtime relay-only, 12 peers, 600 DMs, 300/s offered',
      "sender's outbox wait, send() → first attempt",
      'rows refused with MESH_ERR_RATE_LIMITED',
      'highest offered rate with p99 < 250 ms, runtime relay-only',
    ])
    for (const f of figures) if (f.goal !== undefined) expect(typeof f.met, f.name).toBe('boolean')
    const byName = new Map(figures.map((f) => [f.name, f]))
    for (const side of ['sender', 'receiver']) {
      const cpu = byName.get(`CPU per DM, ${side} side, runtime relay-only`)!
      expect(cpu.value, side).toBeGreaterThan(0)
      expect(cpu.baseline!.value, side).toBeGreaterThan(0)
    }
    // Every DM of the quick run was sent and had a latency (none lost to a broken join).
    const load = byName.get('runtime relay-only, 12 peers, 600 DMs, 300/s offered') as unknown as {
      dispatched: number
      deliveredPercent: number
      value: number
    }
    expect(load.dispatched).toBe(600)
    expect(load.deliveredPercent).toBe(100)
    expect(load.value).toBeGreaterThan(0)
  }, 180_000)
})
