/**
 * A smoke test of `npm run bench -- p2p --quick`: the scenario runs end to end (two peer processes, a
 * coordinator, the webrtc handshake through it, the correctness probes on every lane) and prints its
 * figures. The figures themselves are not asserted: a timed test on a shared machine cannot hold a rate.
 */
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))

/** Runs the bench CLI; resolves with its exit code and output. */
function runBench(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'bench/run.ts', ...args], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s))
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s))
    child.once('error', reject)
    child.once('close', (code) => resolve({ code, stdout, stderr }))
  })
}

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
