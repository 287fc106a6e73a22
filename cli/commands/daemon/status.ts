import { Command } from 'clipanion'
import type { DaemonStatus } from '../../../peer-runtime/node/daemon/daemon.js'
import { connectDaemon } from './connect.js'
import { HomeCommand } from '../home-command.js'

/** `agentmesh daemon status`: whether a daemon holds the home, and what it holds. */
export class DaemonStatusCommand extends HomeCommand {
  static override paths = [['daemon', 'status']]

  static override usage = Command.Usage({
    category: 'Daemon',
    description: "Show the home's daemon: meshes, sessions, connections",
    details: `
      Asks the daemon over \`<home>/daemon.sock\` (with the admin token) for its meshes and sessions and
      whether each is connected to its coordinator. Exits 0 when a daemon runs, 3 when none does.
      \`--json\` prints \`{running: true, pid, port, socket, startedAt, meshes, sessions}\` or
      \`{running: false}\`.
    `,
    examples: [['Show the daemon of ~/.agentmesh', '$0 daemon status']],
  })

  override async run(): Promise<number> {
    const daemon = await connectDaemon(this.home)
    if (daemon === undefined) {
      if (this.json) this.printJson({ running: false })
      else this.context.stdout.write(`no daemon runs on ${this.home}\n`)
      return 3
    }
    try {
      const status = await daemon.client.call<DaemonStatus>('GET', '/v1/status')
      if (this.json) {
        this.printJson({ running: true, ...status })
        return 0
      }
      const out: string[] = [
        `daemon pid ${status.pid}, up since ${new Date(status.startedAt).toISOString()}`,
        `  socket ${status.socket}, 127.0.0.1:${status.port}`,
      ]
      for (const m of status.meshes) {
        out.push(`  mesh ${m.mesh} (${m.coordinatorUrl}): ${m.connected ? 'connected' : 'not connected'}`)
        for (const s of status.sessions.filter((x) => x.mesh === m.mesh)) {
          const name = s.displayName === undefined ? '' : ` "${s.displayName}"`
          out.push(
            `    session ${s.sessionId}${name} ${s.sessionPk.slice(0, 16)}…: ${s.connected ? 'connected' : 'not connected'}`,
          )
        }
      }
      this.context.stdout.write(out.join('\n') + '\n')
      return 0
    } finally {
      daemon.client.close()
    }
  }
}
