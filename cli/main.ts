import { Builtins, Cli, type BaseContext } from 'clipanion'
import { CoordinatorUpCommand } from './commands/coordinator/up.js'
import { DaemonDownCommand } from './commands/daemon/down.js'
import { DaemonInstallCommand } from './commands/daemon/install.js'
import { DaemonStatusCommand } from './commands/daemon/status.js'
import { DaemonUpCommand } from './commands/daemon/up.js'
import { InviteCreateCommand } from './commands/invite/create.js'
import { JoinCommand } from './commands/join/join.js'
import { ListenCommand } from './commands/listen/listen.js'
import { MeshCreateCommand } from './commands/mesh/create.js'
import { MeshListCommand } from './commands/mesh/list.js'
import { PeersListCommand } from './commands/peers/list.js'
import { SendCommand } from './commands/send/send.js'
import { version } from './version.js'

/** Builds the agentmesh CLI with every command registered. */
export function buildCli({ colors = wantsColors() }: { colors?: boolean } = {}): Cli {
  const cli = new Cli({
    binaryLabel: 'agentmesh',
    binaryName: 'agentmesh',
    binaryVersion: version,
    enableColors: colors,
  })
  cli.register(Builtins.HelpCommand)
  cli.register(Builtins.VersionCommand)
  cli.register(CoordinatorUpCommand)
  cli.register(MeshCreateCommand)
  cli.register(MeshListCommand)
  cli.register(InviteCreateCommand)
  cli.register(JoinCommand)
  cli.register(PeersListCommand)
  cli.register(SendCommand)
  cli.register(ListenCommand)
  cli.register(DaemonUpCommand)
  cli.register(DaemonDownCommand)
  cli.register(DaemonStatusCommand)
  cli.register(DaemonInstallCommand)
  return cli
}

/**
 * Runs the CLI on `argv` (without the node and script paths) and resolves to the exit code.
 * Tests may pass their own stdout/stderr streams through `context`; output is then uncoloured.
 */
export async function runCli(argv: readonly string[], context: Partial<BaseContext> = {}): Promise<number> {
  const colors = context.stdout === undefined && wantsColors()
  return buildCli({ colors }).run([...argv], { ...Cli.defaultContext, ...context })
}

// clipanion picks colours from $TERM alone, so piped output (tests, `--json | jq`) would carry ANSI codes.
function wantsColors(): boolean {
  return (
    process.env['NO_COLOR'] === undefined &&
    process.stdout.isTTY === true &&
    Cli.defaultContext.colorDepth > 1
  )
}
