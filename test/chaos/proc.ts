/**
 * A child process of the built binary (`bin/agentmesh.js`, which loads dist/cli.js) for the chaos
 * suite: stdout split into lines as they come, each stamped with its arrival time, so the history
 * checker knows when alice printed what; stderr kept (bounded) for the report of a failing run.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const BIN = fileURLToPath(new URL('../../bin/agentmesh.js', import.meta.url))
const STDERR_KEEP = 64 * 1024

/** How a process ended. */
export interface Exit {
  code: number | null
  signal: NodeJS.Signals | null
}

/** One stdout line and when it was read (ms since the epoch). */
export interface Line {
  text: string
  at: number
}

/** The environment of a child: ours without DATABASE_URL and AGENTMESH_*, plus `env`. */
function childEnv(env: Record<string, string>): NodeJS.ProcessEnv {
  const base: NodeJS.ProcessEnv = { ...process.env, NO_COLOR: '1' }
  for (const name of Object.keys(base)) {
    if (name === 'DATABASE_URL' || name.startsWith('AGENTMESH_') || name === 'VITEST') delete base[name]
  }
  return { ...base, ...env }
}

/** A running `agentmesh <args>`. */
export class Proc {
  readonly child: ChildProcess
  readonly exited: Promise<Exit>
  readonly lines: Line[] = []
  readonly startedAt = Date.now()
  #partial = ''
  #stderr = ''
  readonly #waiters = new Set<() => void>()

  constructor(
    readonly name: string,
    readonly args: readonly string[],
    env: Record<string, string> = {},
    onLine?: (line: Line) => void,
  ) {
    this.child = spawn(process.execPath, [BIN, ...args], {
      cwd: ROOT,
      env: childEnv(env),
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    this.child.stdout!.setEncoding('utf8').on('data', (s: string) => {
      const at = Date.now()
      const parts = (this.#partial + s).split('\n')
      this.#partial = parts.pop() ?? ''
      for (const text of parts) {
        const line = { text, at }
        this.lines.push(line)
        onLine?.(line)
      }
      this.#wake()
    })
    this.child.stderr!.setEncoding('utf8').on('data', (s: string) => {
      this.#stderr = (this.#stderr + s).slice(-STDERR_KEEP)
      this.#wake()
    })
    this.exited = new Promise((resolve) =>
      this.child.once('close', (code, signal) => {
        this.#wake()
        resolve({ code, signal })
      }),
    )
  }

  get stderr(): string {
    return this.#stderr
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null
  }

  get pid(): number {
    return this.child.pid ?? -1
  }

  #wake(): void {
    for (const w of [...this.#waiters]) w()
  }

  /**
   * Resolves once `test` holds (checked on every output and at exit); rejects when the process exits
   * before, or after `timeoutMs`, with its output in the message.
   */
  until(test: () => boolean, what: string, timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        if (test()) return finish(resolve)
        if (!this.running) {
          // Output written just before the exit may still be in the pipe: the close event comes after it.
          void this.exited.then(() =>
            test()
              ? finish(resolve)
              : finish(() => reject(new Error(`${this.name} exited before ${what}\n${this.describe()}`))),
          )
        }
      }
      const finish = (fn: () => void): void => {
        clearTimeout(timer)
        this.#waiters.delete(check)
        fn()
      }
      const timer = setTimeout(
        () =>
          finish(() =>
            reject(new Error(`${this.name}: no ${what} after ${timeoutMs} ms\n${this.describe()}`)),
          ),
        timeoutMs,
      )
      this.#waiters.add(check)
      check()
    })
  }

  /** The first stdout line that parses to an object passing `test`. */
  async json(test: (v: Record<string, unknown>) => boolean, what: string, timeoutMs: number) {
    let hit: Record<string, unknown> | undefined
    await this.until(
      () => {
        for (const l of this.lines) {
          const v = parseObject(l.text)
          if (v !== undefined && test(v)) {
            hit = v
            return true
          }
        }
        return false
      },
      what,
      timeoutMs,
    )
    return hit!
  }

  /** `kill -9`; resolves once it is gone. */
  async kill9(): Promise<Exit> {
    if (this.running) this.child.kill('SIGKILL')
    return this.exited
  }

  /** Sends `signal` and resolves with the exit. */
  async signal(signal: NodeJS.Signals): Promise<Exit> {
    if (this.running) this.child.kill(signal)
    return this.exited
  }

  describe(): string {
    // The head of stdout too: a crash prints its error there first and its stack after.
    const all = this.lines.map((l) => l.text)
    const out = all.length <= 12 ? all : [...all.slice(0, 6), '…', ...all.slice(-5)]
    return (
      `${this.name} (pid ${this.pid}, ${this.args.join(' ')})` +
      `\n  stdout: ${out.join('\n    ')}\n  stderr: ${this.#stderr.slice(-4000)}`
    )
  }
}

/** Runs `agentmesh <args>` to the end. */
export async function runOnce(
  args: readonly string[],
  env: Record<string, string> = {},
): Promise<Exit & { stdout: string; stderr: string }> {
  const p = new Proc(args[0] ?? 'agentmesh', args, env)
  const exit = await p.exited
  return { ...exit, stdout: p.lines.map((l) => l.text).join('\n'), stderr: p.stderr }
}

/** A JSON object, or undefined for anything else (text, a partial line). */
export function parseObject(text: string): Record<string, unknown> | undefined {
  if (!text.startsWith('{')) return undefined
  try {
    const v: unknown = JSON.parse(text)
    return typeof v === 'object' && v !== null && !Array.isArray(v)
      ? (v as Record<string, unknown>)
      : undefined
  } catch {
    return undefined
  }
}
