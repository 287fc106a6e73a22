/**
 * The parent side of bench processes: `Children.start(entry)` bundles a TypeScript entry with esbuild and
 * forks it under plain node with an IPC channel (structured clone, so byte arrays cross as they are),
 * waits for its ready message, and hands back a handle that runs jobs in it. `Children.stopAll()` ends
 * every child it started (SIGTERM, then SIGKILL after a grace period); scenarios call it in `finally`.
 *
 * Bundled, not run under tsx: a user's coordinator is the bundle `npm install` builds (dist/cli.js), and
 * tsx adds what no user runs: 40–80 MB of resident memory for its loader and the sources it transformed,
 * and a `__name()` call around every function for its keepNames option.
 */
import { fork, type ChildProcess } from 'node:child_process'
import { cpSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'
import type { JobReply, ReadyMessage } from './jobs.js'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))

/** A running bench process. */
export interface ChildHandle<R = unknown> {
  readonly name: string
  readonly pid: number
  /** What the child posted when it became ready. */
  readonly ready: R
  /** Runs a job in the child; rejects with the child's error, or when it exits first. */
  run<T>(kind: string, args?: unknown, timeoutMs?: number): Promise<T>
  /** Everything the child wrote to stderr so far (the last 64 KiB). */
  stderr(): string
  /** SIGTERM, then SIGKILL after `graceMs`; resolves once it exited. */
  stop(graceMs?: number): Promise<void>
}

export interface StartOptions {
  /** Extra node flags (e.g. `--cpu-prof`). */
  nodeArgs?: string[]
  env?: Record<string, string>
  /** How long the child may take to post ready (default 120 s: PGlite's initdb is slow on a busy machine). */
  readyTimeoutMs?: number
}

/** The children a scenario started: each is stopped by `stopAll`, whatever happened. */
export class Children {
  readonly #all = new Set<ChildHandle>()

  /** Forks `bench/processes/<entry>.ts` and waits until it is ready. */
  async start<R>(name: string, entry: string, o: StartOptions = {}): Promise<ChildHandle<R>> {
    const file = await bundled(entry)
    const child = fork(file, [], {
      cwd: ROOT,
      execArgv: o.nodeArgs ?? [],
      env: { ...process.env, ...o.env },
      serialization: 'advanced',
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
    })
    const handle = wrap<R>(name, child)
    this.#all.add(handle)
    try {
      await handle.whenReady(o.readyTimeoutMs ?? 120_000)
    } catch (err) {
      await handle.stop()
      throw err
    }
    return handle
  }

  async stopAll(): Promise<void> {
    const all = [...this.#all]
    this.#all.clear()
    await Promise.all(all.map((c) => c.stop()))
  }
}

/** Bundles of this process's entries, by entry; in a directory removed when the process exits. */
const bundles = new Map<string, Promise<string>>()
let bundleDir: string | undefined

/**
 * `bench/processes/<entry>.ts` bundled into one ES module (dependencies stay external and resolve from
 * the project's node_modules, as dist/cli.js's do), with the store's migrations beside it where
 * coordinator/store/migrate.ts looks for them; built once per entry and process.
 */
function bundled(entry: string): Promise<string> {
  let file = bundles.get(entry)
  if (file === undefined) {
    file = bundle(entry)
    bundles.set(entry, file)
  }
  return file
}

async function bundle(entry: string): Promise<string> {
  if (bundleDir === undefined) {
    // Inside the project, so bare imports resolve from its node_modules; named by this process, and
    // the directories of bench runs that died without their exit handler go first.
    const modules = join(ROOT, 'node_modules')
    for (const name of readdirSync(modules)) {
      const pid = /^\.agentmesh-bench-(\d+)$/.exec(name)?.[1]
      if (pid !== undefined && !alive(Number(pid)))
        rmSync(join(modules, name), { recursive: true, force: true })
    }
    const dir = join(modules, `.agentmesh-bench-${process.pid}`)
    mkdirSync(dir, { recursive: true })
    process.once('exit', () => rmSync(dir, { recursive: true, force: true }))
    cpSync(join(ROOT, 'coordinator/store/migrations'), join(dir, 'migrations'), { recursive: true })
    bundleDir = dir
  }
  const outfile = join(bundleDir, `${entry.replace(/[^a-z0-9-]/gi, '_')}.mjs`)
  await build({
    absWorkingDir: ROOT,
    entryPoints: [fileURLToPath(new URL(`./${entry}.ts`, import.meta.url))],
    outfile,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    bundle: true,
    packages: 'external',
    sourcemap: true,
    logLevel: 'warning',
  })
  return outfile
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

function wrap<R>(
  name: string,
  child: ChildProcess,
): ChildHandle<R> & { whenReady(ms: number): Promise<void> } {
  let err = ''
  child.stderr?.setEncoding('utf8').on('data', (s: string) => {
    err = (err + s).slice(-65_536)
  })
  // A bench child's stdout is for humans running it by hand; the parent reads the IPC channel.
  child.stdout?.resume()
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve()
    else child.once('exit', () => resolve())
  })
  let nextId = 1
  const pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>()
  let ready: R | undefined
  let onReady: (() => void) | undefined
  child.on('message', (msg: JobReply | ReadyMessage) => {
    if ('ready' in msg) {
      ready = msg.ready as R
      onReady?.()
      return
    }
    const p = pending.get(msg.id)
    if (p === undefined) return
    pending.delete(msg.id)
    if (msg.ok) p.resolve(msg.result)
    else p.reject(new Error(`${name}: ${msg.error}`))
  })
  void exited.then(() => {
    const gone = new Error(`${name} exited (${child.exitCode ?? child.signalCode})\n${err.slice(-4000)}`)
    for (const p of pending.values()) p.reject(gone)
    pending.clear()
  })

  return {
    name,
    get pid() {
      return child.pid ?? -1
    },
    get ready() {
      if (ready === undefined) throw new Error(`${name} is not ready`)
      return ready
    },
    whenReady(ms) {
      return new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`${name} not ready after ${ms} ms\n${err}`)), ms)
        onReady = () => {
          clearTimeout(timer)
          resolve()
        }
        if (ready !== undefined) onReady()
        void exited.then(() => {
          clearTimeout(timer)
          reject(new Error(`${name} exited before it was ready\n${err.slice(-4000)}`))
        })
      })
    },
    run<T>(kind: string, args?: unknown, timeoutMs = 300_000) {
      return new Promise<T>((resolve, reject) => {
        if (!child.connected) {
          reject(new Error(`${name} is not running`))
          return
        }
        const id = nextId++
        const timer = setTimeout(() => {
          pending.delete(id)
          reject(new Error(`${name}: job ${kind} timed out after ${timeoutMs} ms`))
        }, timeoutMs)
        pending.set(id, {
          resolve: (v) => (clearTimeout(timer), resolve(v as T)),
          reject: (e) => (clearTimeout(timer), reject(e)),
        })
        child.send({ id, kind, args })
      })
    },
    stderr: () => err,
    async stop(graceMs = 10_000) {
      if (child.exitCode !== null || child.signalCode !== null) return
      child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs)
      await exited
      clearTimeout(timer)
    },
  }
}

/** A process's memory from /proc in bytes: resident now and its peak (VmHWM); undefined off Linux. */
export function memoryOf(pid: number): { rss: number; peakRss: number } | undefined {
  let text: string
  try {
    text = readFileSync(`/proc/${pid}/status`, 'utf8')
  } catch {
    return undefined
  }
  const kb = (field: string): number =>
    Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN)
  return { rss: kb('VmRSS') * 1024, peakRss: kb('VmHWM') * 1024 }
}
