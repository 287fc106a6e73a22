import { readFile } from 'node:fs/promises'
import { Command, Option, UsageError } from 'clipanion'
import { createMesh } from '../../../peer-runtime/node/home-membership.js'
import type { MeshConfig } from '../../../peer-runtime/node/home.js'
import { HomeCommand } from '../home-command.js'

/** What `mesh create --json` and `join --json` print: the new `mesh.json`, and the home holding it. */
export type MembershipJson = MeshConfig & { home: string }

/** `agentmesh mesh create <mesh>`: creates a mesh on a coordinator, with this home as its owner. */
export class MeshCreateCommand extends HomeCommand {
  static override paths = [['mesh', 'create']]

  static override usage = Command.Usage({
    category: 'Meshes',
    description: 'Create a mesh on a coordinator, owned by this home',
    details: `
      Makes a new owner key, asks the coordinator to create the mesh with it (\`POST /v1/meshes\`, which
      needs the operator's admin token unless the coordinator runs with \`--open-registration\`), and
      keeps the key and the pinned coordinator key in \`<home>/meshes/<mesh>/\` (mode 0600). The owner key
      is this home's member key for the mesh: it signs invites (\`agentmesh invite create\`).

      The token comes from \`--admin-token\`, \`--admin-token-file\` (a coordinator's
      \`<data-dir>/admin-token\`), or \`$AGENTMESH_ADMIN_TOKEN\`. One home holds one membership per mesh;
      \`--force\` replaces it (the old files are kept beside it).
    `,
    examples: [
      [
        'Create mesh "team" on a local coordinator',
        '$0 mesh create team --coordinator http://127.0.0.1:7700 --admin-token-file ~/.agentmesh/coordinator/admin-token --name owner',
      ],
    ],
  })

  mesh = Option.String({ name: 'mesh' })

  adminToken = Option.String('--admin-token', { description: "The coordinator operator's admin token" })

  adminTokenFile = Option.String('--admin-token-file', { description: 'A file holding the admin token' })

  name = Option.String('--name', { description: 'Your display name in the mesh' })

  force = Option.Boolean('--force', false, {
    description: "Replace this home's membership of a mesh of that id",
  })

  override async run(): Promise<number> {
    if (this.coordinator === undefined) {
      throw new UsageError('mesh create needs --coordinator <url> (e.g. http://127.0.0.1:7700)')
    }
    const adminToken = await this.#token()
    const config = await createMesh({
      home: this.home,
      mesh: this.mesh,
      coordinatorUrl: this.coordinator,
      force: this.force,
      ...(adminToken !== undefined && { adminToken }),
      ...(this.name !== undefined && { displayName: this.name }),
    })
    if (this.json) this.printJson({ ...config, home: this.home } satisfies MembershipJson)
    else {
      this.context.stdout.write(
        `created mesh ${config.mesh} on ${config.coordinatorUrl}; this home owns it (key ${config.memberPk.slice(0, 16)}…)\n`,
      )
    }
    return 0
  }

  async #token(): Promise<string | undefined> {
    if (this.adminToken !== undefined && this.adminTokenFile !== undefined) {
      throw new UsageError('pass --admin-token or --admin-token-file, not both')
    }
    if (this.adminToken !== undefined) return this.adminToken
    if (this.adminTokenFile !== undefined) {
      try {
        return (await readFile(this.adminTokenFile, 'utf8')).trim()
      } catch (err) {
        throw new UsageError(
          `cannot read --admin-token-file ${this.adminTokenFile}: ${(err as Error).message}`,
        )
      }
    }
    return process.env['AGENTMESH_ADMIN_TOKEN'] || undefined
  }
}
