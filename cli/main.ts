import { Builtins, Cli, UsageError, type BaseContext, type Command } from 'clipanion'
import { CoordinatorUpCommand } from './commands/coordinator/up.js'
import { DaemonDownCommand } from './commands/daemon/down.js'
import { DaemonInstallCommand } from './commands/daemon/install.js'
import { DaemonStatusCommand } from './commands/daemon/status.js'
import { DaemonUpCommand } from './commands/daemon/up.js'
import { DemoCommand } from './commands/demo/demo.js'
import { DoctorCommand } from './commands/doctor/doctor.js'
import { EXIT } from './commands/exit-codes.js'
import { FileSendCommand } from './commands/file/send.js'
import { InboxCommand } from './commands/inbox/inbox.js'
import { InviteCreateCommand } from './commands/invite/create.js'
import { JoinCommand } from './commands/join/join.js'
import { ListenCommand } from './commands/listen/listen.js'
import { MeshCreateCommand } from './commands/mesh/create.js'
import { MeshListCommand } from './commands/mesh/list.js'
import { MsgStatusCommand } from './commands/msg/status.js'
import { OutboxListCommand } from './commands/outbox/list.js'
import { OutboxRequeueCommand } from './commands/outbox/requeue.js'
import { PeerListCommand } from './commands/peer/list.js'
import { RpcCommand } from './commands/rpc/rpc.js'
import { SendCommand } from './commands/send/send.js'
import { WhoamiCommand } from './commands/whoami/whoami.js'
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
  cli.register(WhoamiCommand)
  cli.register(PeerListCommand)
  cli.register(SendCommand)
  cli.register(FileSendCommand)
  cli.register(MsgStatusCommand)
  cli.register(ListenCommand)
  cli.register(InboxCommand)
  cli.register(OutboxListCommand)
  cli.register(OutboxRequeueCommand)
  cli.register(RpcCommand)
  cli.register(DaemonUpCommand)
  cli.register(DaemonDownCommand)
  cli.register(DaemonStatusCommand)
  cli.register(DaemonInstallCommand)
  cli.register(DemoCommand)
  cli.register(DoctorCommand)
  return cli
}

/**
 * Runs the CLI on `argv` (without the node and script paths) and resolves to the exit code (README.md,
 * "Exit codes"; a usage error is 2). Tests may pass their own stdout/stderr streams through `context`;
 * output is then uncoloured.
 */
export async function runCli(argv: readonly string[], context: Partial<BaseContext> = {}): Promise<number> {
  const colored = context.stdout === undefined && wantsColors()
  const cli = buildCli({ colors: colored })
  const ctx = { ...Cli.defaultContext, ...context }
  let command: Command
  try {
    command = cli.process([...argv], ctx)
  } catch (err) {
    ctx.stdout.write(cli.error(err, { colored }))
    return EXIT.USAGE
  }
  // clipanion answers 1 to a UsageError a command throws; the table says 2, for every command alike.
  const execute = command.execute.bind(command)
  command.execute = async () => {
    try {
      return await execute()
    } catch (err) {
      if (!(err instanceof UsageError)) throw err
      ctx.stdout.write(cli.error(err, { colored, command }))
      return EXIT.USAGE
    }
  }
  // The runtime's timers are unref'd (protocol/clock.ts), and so is AbortSignal.timeout's: a command
  // waiting on nothing else (a coordinator that does not answer) would let Node exit under it. Every
  // command holds the process until it settled; long-running ones hold it themselves too.
  const hold = setInterval(() => undefined, 1 << 30)
  try {
    return await cli.run(command, ctx)
  } finally {
    clearInterval(hold)
  }
}

// clipanion picks colours from $TERM alone, so piped output (tests, `--json | jq`) would carry ANSI codes.
function wantsColors(): boolean {
  return (
    process.env['NO_COLOR'] === undefined &&
    process.stdout.isTTY === true &&
    Cli.defaultContext.colorDepth > 1
  )
}
