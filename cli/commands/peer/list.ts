import { Command, Option } from 'clipanion'
import { readMeshConfig } from '../../../peer-runtime/node/home.js'
import { parseDuration } from '../duration.js'
import { HomeCommand } from '../home-command.js'
import { CLI_SESSION_ID } from '../link/mesh-link.js'
import type { PeerEntry } from './resolve.js'

/** One peer in `peer list --json`. */
export interface PeerJson extends PeerEntry {
  /** True for presences of this home's own member (its listen, its daemon's sessions). */
  mine: boolean
  /**
   * `p2p` or `relay` when known; null today on both paths (neither the runtime's peer list nor the
   * daemon's `GET /v1/peers` says whether a P2P session is up).
   */
  transport: 'p2p' | 'relay' | null
}

/** What `peer list --json` prints. */
export interface PeerListJson {
  mesh: string
  /** How this command reached the mesh. */
  via: 'daemon' | 'direct'
  peers: PeerJson[]
}

/** `agentmesh peer list` (also `agentmesh peers`): the mesh's presences whose keys this home verified. */
export class PeerListCommand extends HomeCommand {
  static override paths = [['peer', 'list'], ['peers'], ['peers', 'list']]

  static override usage = Command.Usage({
    category: 'Messages',
    description: 'List the verified peers of a mesh',
    details: `
      Asks the coordinator (through the home's daemon when one runs, else as this home's session
      \`${CLI_SESSION_ID}\`) for the mesh's presences and shows those whose key chain this home verified: a
      member in the roster rooted in the pinned owner key, and for a session the member's attestation.
      Presences nobody vouches for are left out.

      By default it lists the online presences and every member, online or not (a message to an offline
      member is queued for it); \`--all\` adds the offline sessions. Each line: name, online or offline,
      role, key. \`--json\` prints \`{mesh, via, peers: [{pk, memberPk, role, sessionId, displayName,
      online, status, mine, transport}]}\`. \`agentmesh peers\` is the same command.
    `,
    examples: [
      ['List the peers of mesh "team"', '$0 peer list --mesh team'],
      ['Every presence, offline sessions too, as JSON', '$0 peer list --all --json'],
    ],
  })

  mesh = Option.String('--mesh', { description: "The mesh (default: the home's only one)" })

  all = Option.Boolean('--all', false, { description: 'Also list offline sessions' })

  timeout = Option.String('--timeout', '15s', { description: 'How long to try (default 15s)' })

  override async run(): Promise<number> {
    const timeoutMs = parseDuration(this.timeout, '--timeout')
    const mesh = await this.meshOrOnly(this.mesh)
    const link = await this.openLink(mesh, timeoutMs)
    try {
      const found = await link.peers({ offline: true, signal: AbortSignal.timeout(timeoutMs) })
      const { memberPk } = await readMeshConfig(this.home, mesh)
      const peers = found
        .filter((p) => this.all || p.online || p.role === 'control-plane')
        .map((p): PeerJson => ({ ...p, mine: p.memberPk === memberPk, transport: null }))
      peers.sort(
        (a, b) =>
          Number(b.online) - Number(a.online) || (a.displayName ?? '').localeCompare(b.displayName ?? ''),
      )
      if (this.json) this.printJson({ mesh, via: link.via, peers } satisfies PeerListJson)
      else this.#table(peers)
      return 0
    } finally {
      await link.close()
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
      p.role === 'session' ? `session ${p.sessionId ?? ''}` : p.role === 'control-plane' ? 'member' : p.role,
      p.pk.slice(0, 16) + '…',
      p.role === 'control-plane' ? '' : `of member ${p.memberPk.slice(0, 16)}…`,
    ])
    const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)))
    for (const r of rows) {
      this.context.stdout.write(
        r
          .map((c, i) => c.padEnd(widths[i]!))
          .join('  ')
          .trimEnd() + '\n',
      )
    }
  }
}
