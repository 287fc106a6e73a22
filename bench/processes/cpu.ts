/**
 * CPU time of processes from /proc (Linux; zero elsewhere), so that a figure can say which process the
 * machine's cores went to: the coordinator, the load clients, or the Postgres server.
 */
import { readdirSync, readFileSync } from 'node:fs'

/** Clock ticks per second of /proc's utime and stime (USER_HZ: 100 on every Linux that Node runs on). */
const TICKS = 100

/** A set of processes to meter: by pid, or every process whose command name starts with `command`. */
export type CpuTargets = Record<string, number[] | { command: string }>

/** Starts metering; `stop()` returns each target's CPU seconds (user + system) since the start. */
export function cpuMeter(targets: CpuTargets): { stop(): Record<string, number> } {
  const read = (): Record<string, number> =>
    Object.fromEntries(Object.entries(targets).map(([name, t]) => [name, cpuSeconds(t)]))
  const start = read()
  return {
    stop() {
      const end = read()
      return Object.fromEntries(
        Object.keys(targets).map((name) => [name, Math.round((end[name]! - start[name]!) * 100) / 100]),
      )
    },
  }
}

function cpuSeconds(target: number[] | { command: string }): number {
  const pids = Array.isArray(target)
    ? target
    : readdirSync('/proc')
        .filter((d) => /^\d+$/.test(d))
        .map(Number)
  let total = 0
  for (const pid of pids) {
    let stat: string
    try {
      stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    } catch {
      continue
    }
    // The command name is in parentheses and may hold spaces: fields are counted after its `)`.
    const open = stat.indexOf('(')
    const close = stat.lastIndexOf(')')
    if (!Array.isArray(target) && !stat.slice(open + 1, close).startsWith(target.command)) continue
    const fields = stat.slice(close + 2).split(' ')
    total += (Number(fields[11]) + Number(fields[12])) / TICKS
  }
  return total
}
