import { Command, Option } from 'clipanion'
import { runningDaemonPid } from '../../../peer-runtime/node/daemon/files.js'
import { listMeshes, readMeshConfig, type MeshConfig } from '../../../peer-runtime/node/home.js'
import { HomeCommand } from '../home-command.js'

/** One membership in `whoami --json`. */
export interface WhoamiMeshJson {
  mesh: string
  /** This home's member key for the mesh (hex). */
  memberPk: string
  displayName: string | null
  role: MeshConfig['role']
  coordinatorUrl: string
  /** The pinned coordinator key (hex). */
  coordinatorPk: string
  joinedAt: number
}

/** What `whoami --json` prints. */
export interface WhoamiJson {
  home: string
  daemon: { running: true; pid: number } | { running: false }
  meshes: WhoamiMeshJson[]
}

/** `agentmesh whoami`: who this home is in each mesh it joined, and whether its daemon runs. */
export class WhoamiCommand extends HomeCommand {
  static override paths = [['whoami']]

  static override usage = Command.Usage({
    category: 'Meshes',
    description: 'Show this home: member key, name, meshes, coordinator, daemon',
    details: `
      Reads the home (nothing goes over the network): for each mesh it joined, the member key, the display
      name, the role, the coordinator and its pinned key; and whether the home's daemon runs (its pid).
      \`--mesh\` shows one mesh only. \`--json\` prints \`{home, daemon: {running, pid?}, meshes: [{mesh,
      memberPk, displayName, role, coordinatorUrl, coordinatorPk, joinedAt}]}\`.
    `,
    examples: [['Show ~/.agentmesh', '$0 whoami']],
  })

  mesh = Option.String('--mesh', { description: 'Show this mesh only' })

  override async run(): Promise<number> {
    // `--mesh` of a mesh this home never joined: MESH_ERR_NOT_JOINED, as every command says it.
    const chosen =
      this.mesh === undefined ? await listMeshes(this.home) : [await readMeshConfig(this.home, this.mesh)]
    const pid = await runningDaemonPid(this.home)
    const meshes = chosen.map((m): WhoamiMeshJson => ({
      mesh: m.mesh,
      memberPk: m.memberPk,
      displayName: m.displayName ?? null,
      role: m.role,
      coordinatorUrl: m.coordinatorUrl,
      coordinatorPk: m.coordinatorPk,
      joinedAt: m.joinedAt,
    }))
    const daemon: WhoamiJson['daemon'] = pid === undefined ? { running: false } : { running: true, pid }
    if (this.json) {
      this.printJson({ home: this.home, daemon, meshes } satisfies WhoamiJson)
      return 0
    }
    const out = [`home ${this.home}`, `daemon ${pid === undefined ? 'not running' : `running (pid ${pid})`}`]
    if (meshes.length === 0) out.push('no mesh joined yet: `agentmesh join <token>` joins one')
    for (const m of meshes) {
      const name = m.displayName === null ? '' : ` as ${m.displayName}`
      out.push(
        `mesh ${m.mesh}${name} (${m.role})`,
        `  member key  ${m.memberPk}`,
        `  coordinator ${m.coordinatorUrl} (key ${m.coordinatorPk.slice(0, 16)}…)`,
      )
    }
    this.context.stdout.write(out.join('\n') + '\n')
    return 0
  }
}
