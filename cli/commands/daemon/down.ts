import { Command, Option } from 'clipanion'
import { MeshError } from '../../../protocol/errors.js'
import { isRunning } from '../../../peer-runtime/node/daemon/files.js'
import { parseDuration } from '../duration.js'
import { HomeCommand } from '../home-command.js'
import { connectDaemon } from './connect.js'

/** `agentmesh daemon down`: asks the home's daemon to stop and waits until it exited. */
export class DaemonDownCommand extends HomeCommand {
  static override paths = [['daemon', 'down']]

  static override usage = Command.Usage({
    category: 'Daemon',
    description: "Stop the home's daemon",
    details: `
      Asks the daemon to stop (\`POST /v1/shutdown\` on its socket, with the admin token) and waits until
      its process exited: its connections are closed cleanly, and whatever is still in an outbox stays
      there for the next \`daemon up\`. Exits 0 also when no daemon runs. \`--json\` prints
      \`{stopped: true, pid}\` or \`{stopped: false}\`.
    `,
    examples: [['Stop the daemon of ~/.agentmesh', '$0 daemon down']],
  })

  timeout = Option.String('--timeout', '30s', {
    description: 'How long to wait for it to exit (default 30s)',
  })

  override async run(): Promise<number> {
    const timeoutMs = parseDuration(this.timeout, '--timeout')
    const daemon = await connectDaemon(this.home)
    if (daemon === undefined) {
      if (this.json) this.printJson({ stopped: false })
      else this.note(`no daemon runs on ${this.home}`)
      return 0
    }
    try {
      await daemon.client.call('POST', '/v1/shutdown')
    } finally {
      daemon.client.close()
    }
    // No event tells another process's exit: poll its pid, briefly.
    const deadline = Date.now() + timeoutMs
    while (isRunning(daemon.pid)) {
      if (Date.now() > deadline) {
        throw new MeshError(
          'MESH_ERR_WAIT_TIMEOUT',
          `the daemon (pid ${daemon.pid}) still runs after ${this.timeout}`,
          {
            details: { pid: daemon.pid },
          },
        )
      }
      await new Promise((resolve) => setTimeout(resolve, 25))
    }
    if (this.json) this.printJson({ stopped: true, pid: daemon.pid })
    else this.note(`daemon (pid ${daemon.pid}) stopped`)
    return 0
  }
}
