import { afterEach, describe, expect, it } from 'vitest'
import { MeshError } from '../../protocol/errors.js'
import { LongRunning } from './long-running.js'

describe('LongRunning (the helper of long-running commands)', () => {
  const made: LongRunning[] = []
  afterEach(() => made.splice(0).forEach((r) => r.dispose()))

  function helper(): { run: LongRunning; lines: string[]; at: { now: number } } {
    const lines: string[] = []
    const at = { now: 0 }
    const run = new LongRunning({ note: (t) => lines.push(t), repeatMs: 10_000, now: () => at.now })
    made.push(run)
    return { run, lines, at }
  }

  it('says an outage once when it begins, at most every repeatMs while it lasts, and reconnected at its end', () => {
    const { run, lines, at } = helper()
    run.retrying({ delayMs: 2_149 })
    for (let i = 1; i <= 20; i++) {
      at.now = i * 400
      run.retrying({ delayMs: 4_000 })
    }
    expect(lines).toEqual(['coordinator unreachable, retrying in 2.1 s'])
    at.now = 10_000
    run.retrying({ delayMs: 4_950 })
    expect(lines.at(-1)).toBe('coordinator unreachable, retrying in 5.0 s')
    expect(run.reconnected()).toBe(true)
    expect(run.reconnected()).toBe(false)
    at.now = 10_100
    run.retrying({ delayMs: 300 }, 'mesh team: ')
    expect(lines).toEqual([
      'coordinator unreachable, retrying in 2.1 s',
      'coordinator unreachable, retrying in 5.0 s',
      'reconnected',
      'mesh team: coordinator unreachable, retrying in 0.3 s',
    ])
  })

  it('holds the process with a ref’d handle until disposed, and a stop retrying cannot fix ends it with that error', async () => {
    const before = process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length
    const { run } = helper()
    expect(process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length).toBe(before + 1)
    run.fail(new MeshError('MESH_ERR_REVOKED', 'revoked'))
    expect(run.signal.aborted).toBe(true)
    await run.wait()
    expect(() => run.finish()).toThrow('revoked')
    expect(process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length).toBe(before)
  })
})
