import { describe, expect, it } from 'vitest'
import { checkHistory, type FinalState, type History } from './history.js'
import { drawSchedule, prng } from './schedule.js'

const ALICE = 'a'.repeat(64)
const delivered: FinalState = { state: 'done', recipients: { [ALICE]: 'delivered' } }

function history(o: Partial<History> & Pick<History, 'attempted' | 'printed'>): History {
  return {
    acked: new Map(o.attempted.map((id) => [id, 0])),
    finals: new Map(o.attempted.map((id) => [id, delivered])),
    recipient: ALICE,
    ...o,
  }
}

describe('the chaos history checker', () => {
  it('passes a history where every acknowledged send was printed once and reported delivered', () => {
    const v = checkHistory(history({ attempted: ['m1', 'm2'], printed: ['m2', 'm1'] }))
    expect(v).toMatchObject({ ok: true, acked: 2, printedOnce: 2 })
  })

  it('finds lost, duplicated and phantom messages', () => {
    const v = checkHistory(history({ attempted: ['m1', 'm2', 'm3'], printed: ['m1', 'm1', 'm2', 'x9'] }))
    expect(v.ok).toBe(false)
    expect(v.lost).toEqual(['m3'])
    expect(v.duplicated).toEqual(['m1'])
    expect(v.phantom).toEqual(['x9'])
    expect(v.receiptWithoutArrival).toEqual(['m3'])
  })

  it('finds an unacknowledged send that was delivered, and receipts that disagree with arrivals', () => {
    const v = checkHistory(
      history({
        attempted: ['m1', 'm2', 'm3'],
        acked: new Map([
          ['m1', 0],
          ['m3', 0],
        ]),
        printed: ['m1', 'm2', 'm3'],
        finals: new Map<string, FinalState | undefined>([
          ['m1', delivered],
          ['m2', undefined],
          ['m3', { state: 'accepted', recipients: { [ALICE]: 'queued' } }],
        ]),
      }),
    )
    expect(v.unackedDelivered).toEqual(['m2'])
    expect(v.arrivalWithoutReceipt).toEqual(['m2', 'm3'])
    expect(v.lost).toEqual([])
  })
})

describe('seeded fault schedules', () => {
  it('are the same for the same seed and differ between seeds', () => {
    const a = drawSchedule({ seed: 7, windowMs: 20_000, postgres: true })
    expect(drawSchedule({ seed: 7, windowMs: 20_000, postgres: true })).toEqual(a)
    expect(drawSchedule({ seed: 8, windowMs: 20_000, postgres: true })).not.toEqual(a)
    expect(a.length).toBeGreaterThanOrEqual(3)
    expect(a.length).toBeLessThanOrEqual(6)
    expect(a.map((f) => f.atMs)).toEqual([...a.map((f) => f.atMs)].sort((x, y) => x - y))
  })

  it('restart Postgres only on the Postgres leg', () => {
    for (let seed = 1; seed <= 50; seed++) {
      expect(drawSchedule({ seed, windowMs: 10_000, postgres: false }).map((f) => f.kind)).not.toContain(
        'pg-restart',
      )
    }
    const kinds = new Set(
      Array.from({ length: 50 }, (_, i) => drawSchedule({ seed: i + 1, windowMs: 10_000, postgres: true }))
        .flat()
        .map((f) => f.kind),
    )
    expect([...kinds].sort()).toEqual(['cut', 'drop', 'kill', 'pg-restart', 'stall'])
  })

  it('draw from a PRNG uniform enough to spread faults over the window', () => {
    const rand = prng(1)
    const xs = Array.from({ length: 10_000 }, rand)
    expect(Math.min(...xs)).toBeGreaterThanOrEqual(0)
    expect(Math.max(...xs)).toBeLessThan(1)
    expect(xs.reduce((a, b) => a + b, 0) / xs.length).toBeCloseTo(0.5, 1)
  })
})
