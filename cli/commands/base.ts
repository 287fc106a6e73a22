import { homedir } from 'node:os'
import { join } from 'node:path'
import { Command, Option } from 'clipanion'

/** Where agentmesh keeps keys, stores and daemon state unless `--home` says otherwise. */
export function defaultHome(env: NodeJS.ProcessEnv = process.env): string {
  return env['AGENTMESH_HOME'] ?? join(homedir(), '.agentmesh')
}

/**
 * The options every agentmesh command shares. `--json` output is a stable contract: commands that
 * honour it print exactly one JSON document on stdout.
 */
export abstract class BaseCommand extends Command {
  json = Option.Boolean('--json', false, {
    description: 'Print machine-readable JSON instead of text',
  })

  home = Option.String('--home', defaultHome(), {
    description: 'Directory holding keys and local state (default: $AGENTMESH_HOME or ~/.agentmesh)',
  })

  coordinator = Option.String('--coordinator', {
    description: 'Coordinator URL, e.g. https://mesh.example.com',
  })
}
