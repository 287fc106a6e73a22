import { readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { Command, Option } from 'clipanion'
import { isMeshError } from '../../../protocol/errors.js'
import { MESH_ID_RE } from '../../../protocol/ids.js'
import { coordinatorUrls } from '../../../peer-runtime/node/home-membership.js'
import { errnoCode, readMeshConfig, type MeshConfig } from '../../../peer-runtime/node/home.js'
import { parseDuration } from '../duration.js'
import { EXIT } from '../exit-codes.js'
import { HomeCommand } from '../home-command.js'
import { fail, reason, warn, type CheckResult } from './check.js'
import {
  coordinatorChecks,
  probeCoordinator,
  type CoordinatorProbe,
  type ProbeChecks,
} from './coordinator-check.js'
import { daemonCheck } from './daemon-check.js'
import { homePermissions } from './home-check.js'
import { loadNodeDataChannel, p2pLoopback } from './p2p-check.js'

/** What `doctor --json` prints. */
export interface DoctorJson {
  checks: CheckResult[]
  /** No check failed (warnings allowed). */
  ok: boolean
}

/** A coordinator to probe, and how to read the probe. */
interface Target extends ProbeChecks {
  urls: { http: string; ws: string }
}

/** `agentmesh doctor`: checks the home, its coordinators, its daemon and P2P on this machine. */
export class DoctorCommand extends HomeCommand {
  static override paths = [['doctor']]

  static override usage = Command.Usage({
    category: 'Meshes',
    description: 'Check the home, its coordinators, the daemon and P2P on this machine',
    details: `
      Runs each check and prints one line per check: \`ok\`, \`warn\` or \`fail\`, a short reason and, when
      something is wrong, what to do. Exits 0 when no check failed (warnings allowed) and 7 when one did.

      The checks: the home's permissions (directories 0700, files 0600, owned by you); for each mesh the
      home joined (or \`--mesh\`), that its coordinator answers (\`GET /health\` and the challenge on
      \`/ws\`), that it presents the key the home pinned at join, and how far its clock is from this
      machine's (a warning above 5 s, a failure beyond what session attestations tolerate: 6 h behind,
      12 h ahead); whether the home's daemon runs and answers on its socket (none running is fine); that
      node-datachannel loads, and that two of its connections in this process exchange a message over
      127.0.0.1 with no ICE servers. \`--coordinator <url>\` checks that coordinator instead, without a
      membership (with \`--mesh\`, the mesh's pinned key at that URL). Each network check gives up after
      \`--timeout\` (default 5s). Nothing is sent as the member: no hello, so a running daemon or
      \`listen\` keeps its connection.

      \`--json\` prints \`{checks: [{name, status, detail, fix?}], ok}\`.
    `,
    examples: [
      ['Check ~/.agentmesh and every mesh it joined', '$0 doctor'],
      ['Check one mesh', '$0 doctor --mesh team'],
      ['Check a coordinator before joining', '$0 doctor --coordinator https://mesh.example.com'],
    ],
  })

  mesh = Option.String('--mesh', {
    description: 'Check this mesh only (default: every mesh the home joined)',
  })

  timeout = Option.String('--timeout', '5s', {
    description: 'How long each network check may take (default 5s)',
  })

  override async run(): Promise<number> {
    const timeoutMs = parseDuration(this.timeout, '--timeout')
    const { targets, problems } = await this.#targets()
    const probes = new Map<string, Promise<CoordinatorProbe>>()
    const probe = (t: Target): Promise<CoordinatorProbe> => {
      let p = probes.get(t.urls.ws)
      if (p === undefined) probes.set(t.urls.ws, (p = probeCoordinator(t.urls, timeoutMs)))
      return p
    }
    const p2p = (async () => {
      const loaded = await loadNodeDataChannel()
      return [loaded.check, await p2pLoopback(loaded.module, timeoutMs)]
    })()
    const [home, network, daemon, local] = await Promise.all([
      homePermissions(this.home),
      Promise.all(targets.map(async (t) => coordinatorChecks(await probe(t), t))),
      daemonCheck(this.home, timeoutMs),
      p2p,
    ])
    const checks = [home, ...problems, ...network.flat(), daemon, ...local]
    const healthy = checks.every((c) => c.status !== 'fail')
    if (this.json) this.printJson({ checks, ok: healthy } satisfies DoctorJson)
    else this.context.stdout.write(checks.map(line).join('\n') + '\n')
    return healthy ? EXIT.OK : EXIT.DOCTOR_FAILED
  }

  /** The coordinators to check, and the checks that say why one could not be (a damaged mesh.json). */
  async #targets(): Promise<{ targets: Target[]; problems: CheckResult[] }> {
    if (this.mesh !== undefined) {
      // A mesh this home never joined: MESH_ERR_NOT_JOINED, as every command says it.
      const config = await readMeshConfig(this.home, this.mesh)
      return { targets: [meshTarget(config, this.coordinator)], problems: [] }
    }
    if (this.coordinator !== undefined) {
      const urls = coordinatorUrls(this.coordinator)
      return { targets: [{ urls, where: urls.http }], problems: [] }
    }
    const targets: Target[] = []
    const problems: CheckResult[] = []
    let names: string[]
    try {
      names = await meshNames(this.home)
    } catch (err) {
      const dir = join(this.home, 'meshes')
      return {
        targets: [],
        problems: [fail('mesh config', `cannot read ${dir} (${reason(err)})`, `chmod 700 ${dir}`)],
      }
    }
    for (const mesh of names) {
      try {
        targets.push(meshTarget(await readMeshConfig(this.home, mesh), undefined))
      } catch (err) {
        if (isMeshError(err) && err.code === 'MESH_ERR_NOT_JOINED') continue // half-made join
        problems.push(
          fail(
            `mesh config (${mesh})`,
            reason(err),
            `restore ${join(this.home, 'meshes', mesh, 'mesh.json')}, or join again: \`agentmesh join <token> --force\``,
          ),
        )
      }
    }
    if (targets.length === 0 && problems.length === 0) {
      problems.push(
        warn(
          'coordinator reachable',
          `this home (${this.home}) has joined no mesh: no coordinator to check`,
          '`agentmesh join <token>` joins one; `agentmesh doctor --coordinator <url>` checks a coordinator ' +
            'without joining',
        ),
      )
    }
    return { targets, problems }
  }
}

function meshTarget(config: MeshConfig, coordinator: string | undefined): Target {
  const urls =
    coordinator === undefined
      ? { http: config.coordinatorUrl, ws: config.wsUrl }
      : coordinatorUrls(coordinator)
  return { urls, where: config.mesh, mesh: config.mesh, pinnedPk: config.coordinatorPk }
}

/** The mesh ids under `<home>/meshes` (replaced or half-made joins carry a dot, which no mesh id has). */
async function meshNames(home: string): Promise<string[]> {
  try {
    return (await readdir(join(home, 'meshes'))).filter((n) => MESH_ID_RE.test(n)).sort()
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return []
    throw err
  }
}

/** `ok   home permissions: …`, and for a warning or failure with a fix ` → fix: …`. */
function line(c: CheckResult): string {
  const fix = c.fix === undefined ? '' : ` → fix: ${c.fix}`
  return `${c.status.padEnd(4)} ${c.name}: ${c.detail}${fix}`
}
