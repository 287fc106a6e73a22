/**
 * Progress of a file transfer on stderr, on both ends: on a TTY one bar redrawn in place
 * (`report.pdf  [#######.....]  58%  11.6/20.0 MiB  6.2 MiB/s`), otherwise a plain line at every tenth
 * (`agentmesh: report.pdf: 30% (6.0 of 20.0 MiB)`), so a log or a pipe gets ten lines, not a flood.
 */

/** Where the lines go: a stream with `write`, and `isTTY` when it is a terminal. */
export interface ProgressOut {
  write(text: string): unknown
  isTTY?: boolean
  columns?: number
}

/** `20.0 MiB`, `512 B`, `1.5 KiB`. */
export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`
  const units = ['KiB', 'MiB', 'GiB', 'TiB']
  let v = n / 1024
  let u = 0
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024
    u++
  }
  return `${v.toFixed(1)} ${units[u]}`
}

/** One transfer's progress display; `update` often, `done` once at the end (it clears a TTY bar). */
export class Progress {
  readonly #out: ProgressOut
  readonly #label: string
  readonly #size: number
  readonly #began = performance.now()
  /** The last tenth said (plain lines). */
  #tenth = -1
  #drawnAt = 0
  #drawn = false

  constructor(out: ProgressOut, label: string, size: number) {
    this.#out = out
    this.#label = label
    this.#size = size
  }

  update(bytes: number): void {
    const fraction = this.#size === 0 ? 1 : Math.min(1, bytes / this.#size)
    if (this.#out.isTTY === true) {
      const now = performance.now()
      // A redraw every 100 ms at most, and always the last one.
      if (now - this.#drawnAt < 100 && fraction < 1) return
      this.#drawnAt = now
      this.#out.write(`\r${this.#bar(bytes, fraction)}\u001b[K`)
      this.#drawn = true
      return
    }
    const tenth = Math.floor(fraction * 10)
    if (tenth <= this.#tenth) return
    this.#tenth = tenth
    this.#out.write(
      `agentmesh: ${this.#label}: ${tenth * 10}% (${formatBytes(bytes)} of ${formatBytes(this.#size)})\n`,
    )
  }

  /** Ends the display: a TTY bar is erased, so the summary line that follows stands alone. */
  done(): void {
    if (this.#drawn) this.#out.write('\r\u001b[K')
    this.#drawn = false
  }

  #bar(bytes: number, fraction: number): string {
    const seconds = (performance.now() - this.#began) / 1000
    const rate = seconds > 0 ? `${formatBytes(Math.round(bytes / seconds))}/s` : ''
    const pct = `${Math.floor(fraction * 100)}%`.padStart(4)
    const amount = `${formatBytes(bytes)}/${formatBytes(this.#size)}`
    const text = `  ${pct}  ${amount}  ${rate}`
    const columns = this.#out.columns ?? 80
    const width = Math.max(10, Math.min(40, columns - this.#label.length - text.length - 6))
    const filled = Math.round(fraction * width)
    return `${this.#label}  [${'#'.repeat(filled)}${'.'.repeat(width - filled)}]${text}`
  }
}
