import { Command, Option, UsageError } from 'clipanion'
import { initCrypto } from '../../../protocol/crypto.js'
import { startDaemon } from '../../../peer-runtime/node/daemon/daemon.js'
import type { DaemonMesh } from '../../../peer-runtime/node/daemon/types.js'
import { version } from '../../version.js'
import { HomeCommand } from '../home-command.js'
import { LongRunning } from '../long-running.js'

/** What `daemon up --json` prints once listening: a stable contract. */
export interface DaemonUpJson {
  pid: number
  socket: string
  port: number
  meshes: string[]
  sessions: number
}

/** `agentmesh daemon up`: holds every mesh of the home and serves the local IPC until SIGTERM. */
export class DaemonUpCommand extends HomeCommand {
  static override paths = [['daemon', 'up']]

  static override usage = Command.Usage({
    category: 'Daemon',
    description: 'Run the daemon in the foreground',
    details: `
      Holds every mesh this home joined: a control-plane connection per mesh (the member key) and one per
      registered session (its stable key), each with its durable outbox. Local agents talk to it over HTTP
      on \`<home>/daemon.sock\` (mode 0600) or on \`127.0.0.1:<port>\` (the port is in
      \`<home>/daemon.json\`), always with \`Authorization: Bearer <token>\`: the admin token in
      \`<home>/daemon.token\` registers sessions (\`POST /v1/sessions\`), and each session's token scopes
      \`/v1/send\`, \`/v1/inbox\`, \`/v1/peers\`, \`/v1/messages/:id\` and \`/v1/events\` to that session.

      One daemon per home (\`daemon.lock\`). Runs until SIGTERM or SIGINT (or \`agentmesh daemon down\`),
      then closes every connection and exits 0; what is still in an outbox goes out after the next start.
      A coordinator that goes away is retried forever, per mesh, and said on stderr (\`mesh team:
      coordinator unreachable, retrying in 2.1 s\`, then \`mesh team: reconnected\`).
      With \`--json\`, one line \`{pid, socket, port, meshes, sessions}\` goes to stdout once listening.
    `,
    examples: [
      ['Run the daemon for ~/.agentmesh', '$0 daemon up'],
      ['On a fixed loopback port', '$0 daemon up --port 7710'],
      ['Relay only, no WebRTC', '$0 daemon up --no-p2p'],
    ],
  })

  port = Option.String('--port', '0', { description: 'The loopback port (default 0: any free port)' })

  p2p = Option.Boolean('--p2p', true, {
    description:
      'Deliver peer to peer over WebRTC when possible (on by default; --no-p2p keeps every message on the relay)',
  })

  override async run(): Promise<number> {
    const port = Number(this.port)
    if (!/^\d{1,5}$/.test(this.port) || port > 65535) throw new UsageError('--port must be a port number')
    await initCrypto()
    const run = new LongRunning({ note: (text) => this.note(text) })
    try {
      return await this.#serve(port, run)
    } finally {
      run.dispose()
    }
  }

  async #serve(port: number, run: LongRunning): Promise<number> {
    const daemon = await startDaemon({
      home: this.home,
      port,
      version,
      peer: {
        p2p: this.p2p,
        // Each mesh's control-plane connection says when its coordinator is unreachable (throttled).
        connection: {
          reconnect: {
            onRetry: (info) => {
              if (info.role === 'control-plane') run.retrying(info, `mesh ${info.mesh}: `)
            },
          },
        },
      },
    })
    const stop = (): void => void daemon.close()
    run.signal.addEventListener('abort', stop, { once: true })
    if (run.signal.aborted) stop()
    // Every mesh, also one a background retry opens later, reports its outages the same way.
    const watched = new Set<string>()
    const watch = (m: DaemonMesh): void => {
      if (watched.has(m.config.mesh)) return
      watched.add(m.config.mesh)
      const label = `mesh ${m.config.mesh}: `
      m.control.peer.on('connected', () => {
        if (run.reconnected(label)) return
        this.note(`${label}connected`)
      })
      m.control.peer.on('disconnected', () => this.note(`${label}disconnected, reconnecting`))
      m.control.peer.on('stopped', (err) =>
        this.note(`${label}stopped${err === undefined ? '' : ` (${err.code}: ${err.message})`}`),
      )
      // A mesh can be connected before it is watched (the daemon starts its meshes first): say so now.
      if (m.control.peer.connected) this.note(`${label}connected`)
    }
    const opened = (m: DaemonMesh): void => {
      watch(m)
      this.note(`mesh ${m.config.mesh}: opened`)
    }
    daemon.on('mesh', opened)
    try {
      for (const m of daemon.meshes()) watch(m)
      const status = daemon.status()
      this.note(
        `daemon up (pid ${process.pid}): ${daemon.socketPath} and 127.0.0.1:${daemon.port}; ` +
          `meshes: ${status.meshes.map((m) => m.mesh).join(', ') || 'none'}; sessions: ${status.sessions.length}`,
      )
      if (this.json) {
        this.printJson({
          pid: process.pid,
          socket: daemon.socketPath,
          port: daemon.port,
          meshes: status.meshes.map((m) => m.mesh),
          sessions: status.sessions.length,
        } satisfies DaemonUpJson)
      }
      await daemon.closed()
      this.note('daemon stopped')
      return 0
    } finally {
      daemon.off('mesh', opened)
      run.signal.removeEventListener('abort', stop)
      await daemon.close()
    }
  }
}
