/**
 * Timing for benchmarks. A figure and its baseline are measured in alternating rounds inside one run, so
 * that drift on a shared machine hits both alike; each reports the median of its rounds.
 */

/** One measured figure, printed as one JSON line. */
export interface Figure {
  scenario: string
  name: string
  unit: string
  value: number
  /** The same-run baseline this figure is compared with, when there is one. */
  baseline?: { name: string; value: number }
  /** value / baseline.value (for rates: how many times the baseline's speed). */
  ratio?: number
  goal?: string
  [extra: string]: unknown
}

/** Calls `fn` repeatedly for about `ms` milliseconds; returns operations per second. */
export function rate(fn: () => void, ms: number): number {
  // Warm up briefly so the JIT settles before timing.
  const warmEnd = performance.now() + Math.min(50, ms / 4)
  while (performance.now() < warmEnd) fn()
  let ops = 0
  let batch = 1
  const start = performance.now()
  let now = start
  while (now - start < ms) {
    for (let i = 0; i < batch; i++) fn()
    ops += batch
    batch = Math.min(batch * 2, 4096)
    now = performance.now()
  }
  return (ops * 1000) / (now - start)
}

/** Rates of `ours` and `baseline`, in `rounds` alternating rounds of `ms` each; medians of both. */
export function compareRates(
  ours: () => void,
  baseline: () => void,
  opts: { rounds?: number; ms?: number } = {},
): { ours: number; baseline: number } {
  const rounds = opts.rounds ?? 5
  const ms = opts.ms ?? 300
  const a: number[] = []
  const b: number[] = []
  for (let i = 0; i < rounds; i++) {
    if (i % 2 === 0) {
      a.push(rate(ours, ms))
      b.push(rate(baseline, ms))
    } else {
      b.push(rate(baseline, ms))
      a.push(rate(ours, ms))
    }
  }
  return { ours: median(a), baseline: median(b) }
}

/** The median of numbers. */
export function median(values: number[]): number {
  const sorted = [...values].sort((x, y) => x - y)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

/** Prints a figure: one JSON line on stdout, and a readable line on stderr. */
export function report(figure: Figure): void {
  const out: Figure = { ...figure, value: round(figure.value) }
  if (figure.baseline !== undefined) {
    out.baseline = { name: figure.baseline.name, value: round(figure.baseline.value) }
    out.ratio = round(figure.value / figure.baseline.value, 3)
  }
  process.stdout.write(JSON.stringify(out) + '\n')
  const vs =
    out.baseline === undefined ? '' : `   vs ${out.baseline.name}: ${fmt(out.baseline.value)} (×${out.ratio})`
  process.stderr.write(
    `  ${figure.name.padEnd(44)} ${fmt(out.value)} ${figure.unit}${vs}${figure.goal ? `   goal: ${figure.goal}` : ''}\n`,
  )
}

function round(n: number, digits = 1): number {
  const f = 10 ** digits
  return Math.round(n * f) / f
}

function fmt(n: number): string {
  return n >= 1000 ? Math.round(n).toLocaleString('en-US') : String(n)
}
