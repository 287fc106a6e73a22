import { Builtins, Cli, type BaseContext } from 'clipanion'
import { CoordinatorUpCommand } from './commands/coordinator/up.js'
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
