import { Command } from 'clipanion'
import { listMeshes, type MeshConfig } from '../../../peer-runtime/node/home.js'
import { HomeCommand } from '../home-command.js'

/** What `mesh list --json` prints. */
export interface MeshListJson {
  home: string
  meshes: MeshConfig[]
}

/** `agentmesh mesh list`: the meshes this home created or joined. */
export class MeshListCommand extends HomeCommand {
  static override paths = [['mesh', 'list']]

  static override usage = Command.Usage({
    category: 'Meshes',
    description: 'List the meshes this home created or joined',
    examples: [['List them as JSON', '$0 mesh list --json']],
  })

  override async run(): Promise<number> {
    const meshes = await listMeshes(this.home)
    if (this.json) {
      this.printJson({ home: this.home, meshes } satisfies MeshListJson)
      return 0
    }
    if (meshes.length === 0) this.note(`no meshes in ${this.home}; run \`agentmesh join <token>\``)
    for (const m of meshes) {
      const name = m.displayName === undefined ? '' : ` as ${m.displayName}`
      this.context.stdout.write(
        `${m.mesh}\t${m.role}${name}\t${m.coordinatorUrl}\t${m.memberPk.slice(0, 16)}…\n`,
      )
    }
    return 0
  }
}
