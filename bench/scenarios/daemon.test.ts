/**
 * A smoke test of `npm run bench -- daemon --quick`: a coordinator process and a daemon process start, a
 * session registers, and every figure (IPC beside direct `Peer.send`; two daemons end to end beside a raw
 * `ws` relay) is printed as a JSON line. The rates
 * are not asserted: a timed test on a shared machine cannot hold one.
 */
import { describe, expect, it } from 'vitest'
import { runBench } from '../../test/support/bench-run.js'

describe('bench daemon --quick', () => {
  it('prints each figure beside its same-run baseline', async () => {
    const { code, stdout, stderr } = await runBench(['daemon', '--quick'])
    expect(code, stderr).toBe(0)
    const figures = stdout
      .trim()
      .split('\n')
      .map(
        (line) =>
          JSON.parse(line) as { name: string; value: number; baseline: { value: number }; met: unknown },
      )
    expect(figures.map((f) => f.name)).toEqual([
      'IPC send over daemon.sock, 16 in flight',
      'IPC send over 127.0.0.1, 16 in flight',
      'IPC send over daemon.sock, 1 in flight',
      'durable DMs, daemon to daemon',
    ])
    for (const f of figures) {
      expect(f.value, f.name).toBeGreaterThan(0)
      expect(f.baseline.value, f.name).toBeGreaterThan(0)
      expect(typeof f.met).toBe('boolean')
    }
  }, 120_000)
})
