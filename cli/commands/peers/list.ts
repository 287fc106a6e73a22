import { Command, Option } from 'clipanion'
import { toHex } from '../../../protocol/encoding.js'
import type { KnownPeer } from '../../../peer-runtime/directory.js'
import { parseDuration } from '../duration.js'
import { HomeCommand } from '../home-command.js'
import { CLI_SESSION_ID } from '../send/send.js'

/** One peer in `peers --json`. */
export interface PeerJson {
  pk: string
  memberPk: string
  role: KnownPeer['role']
  sessionId: string | null
  displayName: string | null
  online: boolean
  status: KnownPeer['status']
  /** True for presences of this home's own member (its listen, its other sessions). */
  mine: boolean
}

/** What `peers --json` prints. */
export interface PeersJson {
  mesh: string
  peers: PeerJson[]
}

/** `agentmesh peers`: the mesh's presences whose keys this home verified against the roster. */
export class PeersListCommand extends HomeCommand {
  static override paths = [['peers'], ['peers', 'list']]

  static override usage = Command.Usage({
    category: 'Messages',
    description: 'List the verified peers of a mesh',
    details: `
      Connects as this home's session \`${CLI_SESSION_ID}\`, asks the coordinator for every presence of the
      mesh (online and offline, daemons and listeners included) and shows those whose key chain this home
      verified: a member in the roster rooted in the pinned owner key, and for a session the member's
      attestation. Presences nobody vouches for are left out.
    `,
    examples: [['List the peers of mesh "team"', '$0 peers --mesh team']],
  })

  mesh = Option.String('--mesh', { description: "The mesh (default: the home's only one)" })

  timeout = Option.String('--timeout', '15s', { description: 'How long to try (default 15s)' })

  override async run(): Promise<number> {
    const timeoutMs = parseDuration(this.timeout, '--timeout')
    const mesh = await this.meshOrOnly(this.mesh)
    const opened = await this.connect(mesh, { role: { sessionId: CLI_SESSION_ID }, p2p: false, timeoutMs })
    try {
      const found = await opened.peer.listPeers({
        includeDaemons: true,
        includeOffline: true,
        signal: AbortSignal.timeout(timeoutMs),
      })
      const peers = found.map((p): PeerJson => ({
        pk: toHex(p.pk),
        memberPk: toHex(p.memberPk),
        role: p.role,
        sessionId: p.sessionId ?? null,
        displayName: p.displayName ?? null,
        online: p.online,
        status: p.status,
        mine: toHex(p.memberPk) === opened.config.memberPk,
      }))
      peers.sort(
        (a, b) =>
          Number(b.online) - Number(a.online) || (a.displayName ?? '').localeCompare(b.displayName ?? ''),
      )
      if (this.json) this.printJson({ mesh, peers } satisfies PeersJson)
      else this.#table(peers)
      return 0
    } finally {
      await opened.close()
    }
  }

  #table(peers: PeerJson[]): void {
    if (peers.length === 0) {
      this.note('no other peers have connected to this mesh yet')
      return
    }
    const rows = peers.map((p) => [
      p.displayName ?? '-',
      p.online ? 'online' : 'offline',
      p.role === 'session' ? `session ${p.sessionId ?? ''}` : p.role,
      p.pk.slice(0, 16) + '…',
      p.role === 'control-plane' ? '' : `member ${p.memberPk.slice(0, 16)}…`,
    ])
    const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)))
    for (const r of rows)
      this.context.stdout.write(
        r
          .map((c, i) => c.padEnd(widths[i]!))
          .join('  ')
          .trimEnd() + '\n',
      )
  }
}
