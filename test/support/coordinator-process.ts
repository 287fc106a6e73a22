/**
 * The real `agentmesh` binary as a child process, for tests that must cross a process boundary: signals,
 * `kill -9`, lock files, exit codes. `buildOnce()` bundles the CLI first (scripts/build.mjs replaces
 * every file by rename, so concurrent test files may build while others run the binary).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const BIN = fileURLToPath(new URL('../../bin/agentmesh.js', import.meta.url))

let built: Promise<void> | undefined

/** Bundles dist/cli.js from the current sources, once per test process. */
export function buildOnce(): Promise<void> {
  built ??= promisify(execFile)(process.execPath, ['scripts/build.mjs'], { cwd: ROOT }).then(() => undefined)
  return built
}

/** The environment a child runs with: ours without DATABASE_URL and AGENTMESH_* unless the test sets them. */
function childEnv(env: Record<string, string | undefined>): NodeJS.ProcessEnv {
  const base: NodeJS.ProcessEnv = { ...process.env, NO_COLOR: '1' }
  for (const name of Object.keys(base)) {
    if (name === 'DATABASE_URL' || name.startsWith('AGENTMESH_')) delete base[name]
  }
  for (const [name, value] of Object.entries(env)) {
    if (value === undefined) delete base[name]
    else base[name] = value
  }
  return base
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/** How a child process ended. */
export interface Exit {
  code: number | null
  signal: NodeJS.Signals | null
}

/** A running `agentmesh` child with its output so far. */
export class AgentmeshProcess {
  readonly exited: Promise<Exit>
  #stdout = ''
  #stderr = ''

  constructor(readonly child: ChildProcess) {
    child.stdout?.setEncoding('utf8').on('data', (s: string) => (this.#stdout += s))
    child.stderr?.setEncoding('utf8').on('data', (s: string) => (this.#stderr += s))
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })))
  }

  get stdout(): string {
    return this.#stdout
  }

  get stderr(): string {
    return this.#stderr
  }

  /** stdout's lines that parse as JSON objects. */
  jsonLines(): Record<string, unknown>[] {
    const lines: Record<string, unknown>[] = []
    for (const line of this.#stdout.split('\n')) {
      try {
        const v: unknown = JSON.parse(line)
        if (isRecord(v)) lines.push(v)
      } catch {
        // not JSON: a partial line, or text
      }
    }
    return lines
  }

  /** Resolves with the first stdout JSON line `test` accepts; rejects if the process exits first. */
  async waitForJson(test: (line: Record<string, unknown>) => boolean, timeoutMs: number) {
    const { child } = this
    return await new Promise<Record<string, unknown>>((resolve, reject) => {
      const check = (): boolean => {
        const hit = this.jsonLines().find(test)
        if (hit === undefined) return false
        finish()
        resolve(hit)
        return true
      }
      const onExit = (): void => {
        // Output written just before exiting may still be in the pipe: read it out first.
        setImmediate(() => {
          if (check()) return
          finish()
          reject(
            new Error(
              `agentmesh exited before the line came\nstdout:\n${this.stdout}\nstderr:\n${this.stderr}`,
            ),
          )
        })
      }
      const timer = setTimeout(() => {
        finish()
        reject(
          new Error(`no such line after ${timeoutMs} ms\nstdout:\n${this.stdout}\nstderr:\n${this.stderr}`),
        )
      }, timeoutMs)
      const finish = (): void => {
        clearTimeout(timer)
        child.stdout?.off('data', check)
        child.off('exit', onExit)
      }
      if (check()) return
      child.stdout?.on('data', check)
      child.once('exit', onExit)
    })
  }

  /** Sends `signal` (default SIGTERM) and resolves with the exit. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<Exit> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal)
    return this.exited
  }
}

/** Starts `agentmesh <args>`; `env` entries override (undefined removes) the test's environment. */
export function spawnAgentmesh(
  args: readonly string[],
  env: Record<string, string | undefined> = {},
): AgentmeshProcess {
  const child = spawn(process.execPath, [BIN, ...args], {
    cwd: ROOT,
    env: childEnv(env),
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  return new AgentmeshProcess(child)
}

/** Runs `agentmesh <args>` to completion. */
export async function runAgentmesh(
  args: readonly string[],
  env: Record<string, string | undefined> = {},
): Promise<Exit & { stdout: string; stderr: string }> {
  const p = spawnAgentmesh(args, env)
  const exit = await p.exited
  return { ...exit, stdout: p.stdout, stderr: p.stderr }
}

/** What `coordinator up --json` prints once listening. */
export interface Ready {
  url: string
  nodeId: string
  driver: 'pglite' | 'postgres'
  dataDir: string
  coordinatorPk: string
}

/** A coordinator child, listening. */
export interface RunningCoordinator {
  process: AgentmeshProcess
  ready: Ready
  /** `ws://…/ws` */
  wsUrl: string
}

/**
 * Starts `agentmesh coordinator up --json` (plus `args`; `--port 0` unless `args` or `env` name a port)
 * and waits for its ready line. A first start on an empty PGlite directory runs initdb, which can take
 * several seconds.
 */
export async function startCoordinator(
  args: readonly string[],
  env: Record<string, string | undefined> = {},
  timeoutMs = 60_000,
): Promise<RunningCoordinator> {
  await buildOnce()
  const port = args.includes('--port') || env['AGENTMESH_PORT'] !== undefined ? [] : ['--port', '0']
  const p = spawnAgentmesh(['coordinator', 'up', '--json', ...port, ...args], env)
  try {
    const line = await p.waitForJson((l) => typeof l['url'] === 'string' && !('level' in l), timeoutMs)
    const ready = line as unknown as Ready
    return { process: p, ready, wsUrl: `${ready.url.replace(/^http/, 'ws')}/ws` }
  } catch (err) {
    await p.stop('SIGKILL')
    throw err
  }
}
