import { describe, expect, it } from 'vitest'
import { formatBytes, Progress } from './progress.js'

/** An output that records what was written, a terminal or not. */
function out(isTTY: boolean): { write(text: string): void; isTTY: boolean; columns: number; text: string } {
  return {
    isTTY,
    columns: 80,
    text: '',
    write(text: string) {
      this.text += text
    },
  }
}

describe('file transfer progress', () => {
  it('off a terminal: one plain line at each tenth, none twice', () => {
    const o = out(false)
    const p = new Progress(o, 'a.bin', 1000)
    for (let b = 0; b <= 1000; b += 7) p.update(b)
    p.update(1000)
    p.done()
    const lines = o.text.trimEnd().split('\n')
    expect(lines).toHaveLength(11)
    expect(lines[0]).toBe('agentmesh: a.bin: 0% (0 B of 1000 B)')
    expect(lines[5]).toMatch(/^agentmesh: a\.bin: 50% \(\d+ B of 1000 B\)$/)
    expect(lines[10]).toBe('agentmesh: a.bin: 100% (1000 B of 1000 B)')
  })

  it('on a terminal: one bar redrawn in place (at most every 100 ms, always at the end), erased by done', () => {
    const o = out(true)
    const p = new Progress(o, 'a.bin', 2 * 1024 * 1024)
    p.update(0)
    for (let i = 1; i < 50; i++) p.update(i * 1000)
    p.update(2 * 1024 * 1024)
    expect(o.text).not.toContain('\n')
    const draws = o.text.split('\r').filter((s) => s !== '')
    // The first draw, then nothing within 100 ms but the last one.
    expect(draws).toHaveLength(2)
    expect(draws[0]).toMatch(/^a\.bin {2}\[\.+\] {4}0% {2}0 B\/2\.0 MiB/)
    expect(draws[1]).toMatch(/^a\.bin {2}\[#+\] {2}100% {2}2\.0 MiB\/2\.0 MiB/)
    p.done()
    expect(o.text.endsWith('\r\u001b[K')).toBe(true)
  })

  it('formats sizes in binary units', () => {
    expect([0, 1023, 1024, 1536, 20 * 1024 * 1024, 3 * 1024 ** 3].map(formatBytes)).toEqual([
      '0 B',
      '1023 B',
      '1.0 KiB',
      '1.5 KiB',
      '20.0 MiB',
      '3.0 GiB',
    ])
  })
})
