/**
 * The ground the CLI tests stand on: a mesh made with the real binary on a coordinator that is already
 * listening (`mesh create` by an owner home, one invite, `join` of each member into its own home), and
 * the small waits those tests share. The coordinator is the caller's (an in-process world or a
 * `coordinator up` child), so a test that restarts it keeps doing so.
 */
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { expect } from 'vitest'
import { runAgentmesh, type AgentmeshProcess } from './coordinator-process.js'

/** What one `agentmesh` run gave. */
export interface CliRun {
  code: number | null
  stdout: string
  stderr: string
}

/** Runs `agentmesh <args>` to completion (the built binary; call `buildOnce()` first). */
export async function am(
  args: readonly string[],
  env: Record<string, string | undefined> = {},
): Promise<CliRun> {
  const r = await runAgentmesh(args, env)
  return { code: r.code, stdout: r.stdout, stderr: r.stderr }
}

export interface CliMeshOptions {
  /** The temp directory that holds every home (`<root>/<name>`). */
  root: string
  coordinatorUrl: string
  /** The coordinator's admin token file, or the token itself (then written to `<root>/admin-token`). */
  admin: { tokenFile: string } | { token: string }
  /** Default `team`. */
  mesh?: string
  /** The owner's display name and home name. Default `owner`. */
  owner?: string
  /**
   * Joined in this order, each into `<root>/<name>` with display name `<name>`, or into `<root>/<home>`
   * with display name `name` (two homes may share a name).
   */
  members: readonly (string | { home: string; name: string })[]
  /** The invite's uses. Default: one per member. */
  uses?: number
}

/** The mesh a CLI test works in, and what its set-up commands printed (`--json`). */
export interface CliMesh {
  mesh: string
  /** `<root>/<name>`. */
  home(name: string): string
  /** The invite token the members joined with. */
  invite: string
  /** `mesh create --json` of the owner. */
  created: Record<string, unknown>
  /** `join --json` of each member, by home name. */
  joined: Record<string, Record<string, unknown>>
}

/** Creates the mesh, an invite and the members' memberships with the real binary; each step must exit 0. */
export async function createCliMesh(o: CliMeshOptions): Promise<CliMesh> {
  const mesh = o.mesh ?? 'team'
  const ownerName = o.owner ?? 'owner'
  const home = (name: string): string => join(o.root, name)
  let tokenFile: string
  if ('tokenFile' in o.admin) tokenFile = o.admin.tokenFile
  else {
    tokenFile = join(o.root, 'admin-token')
    await writeFile(tokenFile, o.admin.token, { mode: 0o600 })
  }
  const created = await am([
    'mesh',
    'create',
    mesh,
    '--coordinator',
    o.coordinatorUrl,
    '--admin-token-file',
    tokenFile,
    '--name',
    ownerName,
    '--home',
    home(ownerName),
    '--json',
  ])
  expect(created.code, created.stderr).toBe(0)
  const uses = String(o.uses ?? Math.max(1, o.members.length))
  const invited = await am(['invite', 'create', '--mesh', mesh, '--uses', uses, '--home', home(ownerName)])
  expect(invited.code, invited.stderr).toBe(0)
  const invite = invited.stdout.trim()
  const joined: Record<string, Record<string, unknown>> = {}
  for (const m of o.members) {
    const { home: dir, name } = typeof m === 'string' ? { home: m, name: m } : m
    const r = await am(['join', invite, '--name', name, '--home', home(dir), '--json'])
    expect(r.code, r.stderr).toBe(0)
    joined[dir] = JSON.parse(r.stdout) as Record<string, unknown>
  }
  return { mesh, home, invite, created: JSON.parse(created.stdout) as Record<string, unknown>, joined }
}

/**
 * Resolves once the child's stderr contains `text` `times` times; rejects if it exits first or after
 * `timeoutMs`.
 */
export async function stderrSays(
  p: AgentmeshProcess,
  text: string,
  timeoutMs = 30_000,
  times = 1,
): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (p.stderr.split(text).length - 1 < times) {
    if (p.child.exitCode !== null || p.child.signalCode !== null) {
      throw new Error(
        `exited before saying ${JSON.stringify(text)}\nstdout:\n${p.stdout}\nstderr:\n${p.stderr}`,
      )
    }
    if (Date.now() > deadline)
      throw new Error(`no ${JSON.stringify(text)} after ${timeoutMs} ms:\n${p.stderr}`)
    await new Promise((resolve) => p.child.stderr?.once('data', resolve).once('close', resolve))
  }
}

/**
 * Until the daemon's control plane of `mesh` is connected: its `mesh <m>: connected` note, or its JSON log
 * line; throws when it exits first or 30 s pass. Reads stderr as it comes, and at least every second.
 */
export async function daemonConnected(daemon: AgentmeshProcess, mesh = 'team'): Promise<void> {
  const connected = new RegExp(
    `mesh ${mesh}: connected|"mesh":"${mesh}","role":"control-plane","msg":"connected"`,
  )
  const deadline = Date.now() + 30_000
  while (!connected.test(daemon.stderr)) {
    if (daemon.child.exitCode !== null || Date.now() > deadline) {
      throw new Error(`the daemon did not say it connected:\n${daemon.stderr}`)
    }
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, 1_000)
      daemon.child.stderr?.once('data', () => {
        clearTimeout(timer)
        resolve(undefined)
      })
    })
  }
}
