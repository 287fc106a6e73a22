import { realpathSync } from 'node:fs'
import { dirname, resolve } from 'node:path'
import { Command, Option, UsageError } from 'clipanion'
import { makePrivateDir, writePrivateFile } from '../../../peer-runtime/node/home.js'
import { serviceUnit } from '../../../peer-runtime/node/daemon/service-unit.js'
import { HomeCommand } from '../home-command.js'

/** `agentmesh daemon install`: writes a systemd user unit or a launchd agent for `daemon up`. */
export class DaemonInstallCommand extends HomeCommand {
  static override paths = [['daemon', 'install']]

  static override usage = Command.Usage({
    category: 'Daemon',
    description: 'Install the daemon as a user service (systemd on Linux, launchd on macOS)',
    details: `
      Writes a systemd user unit (\`~/.config/systemd/user/agentmesh-daemon.service\`) or a launchd agent
      (\`~/Library/LaunchAgents/dev.agentmesh.daemon.plist\`) that runs \`agentmesh daemon up\` for this
      home. It pins the absolute paths of the Node binary and of the CLI as they are now, so the service
      does not depend on PATH; run \`install\` again after moving or upgrading either. It does not start
      the service: it prints the commands that do. \`--print\` prints the unit instead of writing it.
      \`--json\` prints \`{platform, path, written, activate, text}\`.
    `,
    examples: [
      ['Install for ~/.agentmesh', '$0 daemon install'],
      ['Show the unit without writing it', '$0 daemon install --print'],
    ],
  })

  print = Option.Boolean('--print', false, { description: 'Print the unit instead of writing it' })

  platform = Option.String('--platform', { description: 'linux or darwin (default: this machine)' })

  override async run(): Promise<number> {
    const platform = this.platform ?? process.platform
    if (platform !== 'linux' && platform !== 'darwin') {
      throw new UsageError(`daemon install knows linux (systemd) and darwin (launchd), not ${platform}`)
    }
    const script = process.argv[1]
    if (script === undefined) throw new UsageError('cannot tell where the agentmesh CLI is')
    const unit = serviceUnit(
      { node: process.execPath, cli: realpathSync(script), home: resolve(this.home) },
      platform,
    )
    if (!this.print) {
      await makePrivateDir(dirname(unit.path))
      await writePrivateFile(unit.path, unit.text)
    }
    if (this.json) {
      this.printJson({
        platform: unit.platform,
        path: unit.path,
        written: !this.print,
        activate: unit.activate,
        text: unit.text,
      })
      return 0
    }
    if (this.print) {
      this.context.stdout.write(unit.text)
      return 0
    }
    this.context.stdout.write(`wrote ${unit.path}\nto start it now and at every login, run:\n`)
    for (const line of unit.activate) this.context.stdout.write(`  ${line}\n`)
    return 0
  }
}
