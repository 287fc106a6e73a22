import { Command } from 'clipanion'
import type { DaemonStatus, LinkStatusJson } from '../../../peer-runtime/node/daemon/types.js'
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
      the state of each: \`connected\`, \`connecting\`, \`reconnecting\` (the coordinator is away; it
      keeps trying), \`stopped\` (for good: the member was revoked, the session kicked or replaced) or
      \`unavailable\` (it did not open, for example a damaged file; retried in the background), with the
      last error. Exits 0 when a daemon runs, 3 when none does. \`--json\` prints \`{running: true, pid,
      port, socket, startedAt, meshes, sessions}\`, each mesh and session with \`state\`, \`connected\`,
      \`since\` and, when there is one, \`lastError: {code, message}\` (\`attempts\` and \`retryAt\` for
      \`unavailable\`), or \`{running: false}\`.
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
      const now = Date.now()
      for (const m of status.meshes) {
        const url = m.coordinatorUrl === undefined ? '' : ` (${m.coordinatorUrl})`
        out.push(`  mesh ${m.mesh}${url}: ${describeLink(m, now)}`)
        for (const s of status.sessions.filter((x) => x.mesh === m.mesh)) {
          const name = s.displayName === undefined ? '' : ` "${s.displayName}"`
          const pk = s.sessionPk === undefined ? '' : ` ${s.sessionPk.slice(0, 16)}…`
          out.push(`    session ${s.sessionId}${name}${pk}: ${describeLink(s, now)}`)
        }
      }
      this.context.stdout.write(out.join('\n') + '\n')
      return 0
    } finally {
      daemon.client.close()
    }
  }
}

const STOP_REASONS: Record<string, string> = {
  MESH_ERR_REVOKED: 'revoked',
  MESH_ERR_NOT_AUTHORIZED: 'kicked',
  MESH_ERR_SESSION_REPLACED: 'replaced by another connection',
}

/** `connected`, `reconnecting (CODE: why)`, `stopped: revoked (CODE)`, `unavailable, retrying in 2.1 s (…)`. */
export function describeLink(l: LinkStatusJson, now: number): string {
  const why = l.lastError === undefined ? '' : ` (${l.lastError.code}: ${l.lastError.message})`
  switch (l.state) {
    case 'connected':
      return 'connected'
    case 'stopped': {
      const code = l.lastError?.code ?? 'closed'
      return `stopped: ${STOP_REASONS[code] ?? l.lastError?.message ?? 'closed'} (${code})`
    }
    case 'unavailable': {
      const retry =
        l.retryAt === undefined
          ? ', waiting for its mesh'
          : `, retrying in ${(Math.max(0, l.retryAt - now) / 1000).toFixed(1)} s`
      return `unavailable${retry}${why}`
    }
    default:
      return `${l.state}${why}`
  }
}
