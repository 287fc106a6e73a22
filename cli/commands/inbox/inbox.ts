import { Command, Option } from 'clipanion'
import { parseKeyHex } from '../../../protocol/encoding.js'
import { isMeshError, MeshError } from '../../../protocol/errors.js'
import { rowMessageJson } from '../../../peer-runtime/node/daemon/ipc-json.js'
import {
  sessionKeyPath,
  loadOrCreateSessionKey,
  readMeshConfig,
  storePath,
} from '../../../peer-runtime/node/home.js'
import type { RuntimeStore } from '../../../peer-runtime/store/types.js'
import { access } from 'node:fs/promises'
import { connectDaemon } from '../daemon/connect.js'
import { parsePositiveInt } from '../duration.js'
import { HomeCommand } from '../home-command.js'
import { DaemonLink } from '../link/daemon-link.js'
import { openDiskStore } from '../link/disk-store.js'
import { CLI_SESSION_ID } from '../link/mesh-link.js'
import { knownPeerEntry, type PeerEntry } from '../peer/resolve.js'
import { advanceCursor, readCursor, readCursorPath } from './cursor.js'
import { followInbox } from './follow.js'
import { inboxJson, inboxLine, type InboxJson } from './inbox-json.js'
import { readInbox, type InboxReader } from './read.js'
import { SenderNames } from './names.js'

/** What `inbox --json` prints (without `--follow`). */
export interface InboxListJson {
  mesh: string
  /** How this command read the inbox: through the daemon, or from the store on disk. */
  via: 'daemon' | 'direct'
  /** Oldest first. */
  messages: InboxJson[]
  /** The read cursor after this command (`--unread` moves it past what it printed). */
  cursor: number
}

/** `agentmesh inbox [--unread] [--follow]`: the messages this home's member received. */
export class InboxCommand extends HomeCommand {
  static override paths = [['inbox']]

  static override usage = Command.Usage({
    category: 'Messages',
    description: 'List the messages this member received',
    details: `
      Lists the direct and group messages this home received in the mesh, oldest first: time, sender,
      text (or the JSON payload) and how each came (\`relay\`, \`p2p\`) with its id; \`--json\` prints
      \`{mesh, via, messages, cursor}\`, each message \`{seq, receivedAt, from, fromName, clientMessageId,
      channel, payload, status, e2e, via, read}\`.

      A message is read once \`agentmesh listen\` or \`inbox --unread\` printed it: both move the mesh's read
      cursor (its \`listen.cursor\`) past each message they print, and nothing else does. Without
      \`--unread\` it prints the newest \`--limit\` messages (default 50), read or not, and changes nothing;
      with it, the oldest \`--limit\` unread ones, which are read from then on (run it again for the next).

      \`--follow\` prints the same first (every unread message with \`--unread\`; \`--limit\` bounds only the
      messages before the live ones), then each message as it arrives (with \`--json\` one message per
      line), until SIGINT or SIGTERM (exit 0). It rides out outages of the coordinator and of the daemon
      as \`listen\` does, and says so on stderr; with \`--unread\` it moves the read cursor as it prints.

      When the home's daemon runs, it reads through it (its session \`${CLI_SESSION_ID}\`, which sees the
      member's messages). Otherwise it reads the member's store on disk (messages the coordinator still
      holds for an offline member arrive once it connects: \`listen\`, \`inbox --follow\` or the daemon),
      and \`--follow\` connects as the member itself, as \`listen\` does; a \`listen\` running without a
      daemon holds that store (exit 5). It says on stderr which path it took.
    `,
    examples: [
      ['The last 50 messages', '$0 inbox'],
      ['What came since the last look, as JSON', '$0 inbox --unread --json'],
      ['Print new messages as they arrive', '$0 inbox --unread --follow'],
    ],
  })

  mesh = Option.String('--mesh', { description: "The mesh (default: the home's only one)" })

  unread = Option.Boolean('--unread', false, {
    description: 'Only messages not read yet (and mark those printed read)',
  })

  follow = Option.Boolean('--follow', false, { description: 'Keep printing messages as they arrive' })

  limit = Option.String('--limit', { description: 'At most this many messages (default 50)' })

  override async run(): Promise<number> {
    const limit = this.limit === undefined ? 50 : parsePositiveInt(this.limit, '--limit')
    const mesh = await this.meshOrOnly(this.mesh)
    if (this.follow) {
      return await followInbox({
        home: this.home,
        mesh,
        coordinator: this.coordinator,
        unread: this.unread,
        limit,
        json: this.json,
        note: (text) => this.note(text),
        out: (line) => this.context.stdout.write(line + '\n'),
      })
    }
    const cursorPath = readCursorPath(this.home, mesh)
    let cursor = await readCursor(cursorPath)
    const daemon = await connectDaemon(this.home)
    let link: DaemonLink | undefined
    let store: RuntimeStore | undefined
    try {
      let read: InboxReader
      let names: SenderNames
      if (daemon !== undefined) {
        this.note(`through the daemon (pid ${daemon.pid})`)
        link = await DaemonLink.open(daemon.client, this.home, mesh).catch((err: unknown) => {
          daemon.client.close()
          throw err
        })
        const l = link
        read = (after, n) => l.inbox(after, n, AbortSignal.timeout(15_000))
        names = new SenderNames(() => l.peers({ offline: true, signal: AbortSignal.timeout(10_000) }))
      } else {
        this.note('no daemon runs on this home: reading the inbox on disk')
        const disk = await this.#diskReader(mesh)
        store = disk.store
        read = disk.read
        names = new SenderNames(() => this.#peersDirectly(mesh))
      }
      const { messages: all } = await readInbox(read, this.unread ? cursor : 0)
      // Not held while names are looked up: a `listen` starting meanwhile needs it.
      await store?.close()
      store = undefined
      const chosen = this.unread ? all.slice(0, limit) : all.slice(Math.max(0, all.length - limit))
      const printed: InboxJson[] = []
      for (const m of chosen) printed.push(inboxJson(m, await names.of(m.from), cursor))
      if (this.unread && printed.length > 0) cursor = await advanceCursor(cursorPath, printed.at(-1)!.seq)
      if (this.json) {
        this.printJson({
          mesh,
          via: daemon === undefined ? 'direct' : 'daemon',
          messages: printed,
          cursor,
        } satisfies InboxListJson)
      } else {
        for (const m of printed) this.context.stdout.write(inboxLine(m) + '\n')
        if (printed.length === 0) this.note(this.unread ? 'no unread messages' : 'no messages')
      }
      return 0
    } finally {
      await link?.close()
      await store?.close()
    }
  }

  /** The member's store on disk (its inbox holds what the member and, through a daemon, its sessions got). */
  async #diskReader(mesh: string): Promise<{ store: RuntimeStore | undefined; read: InboxReader }> {
    const config = await readMeshConfig(this.home, mesh)
    const memberPk = parseKeyHex(config.memberPk)
    const recipients = [memberPk]
    // The session `cli`'s own DMs, which the daemon kept in this same inbox while it ran.
    const hasCli = await access(sessionKeyPath(this.home, mesh, CLI_SESSION_ID)).then(
      () => true,
      () => false,
    )
    if (hasCli) recipients.push((await loadOrCreateSessionKey(this.home, mesh, CLI_SESSION_ID)).publicKey)
    let store
    try {
      store = await openDiskStore(storePath(this.home, mesh, memberPk), { waitMs: 3_000 })
    } catch (err) {
      if (!isMeshError(err, 'MESH_ERR_STORE_LOCKED')) throw err
      throw new MeshError(
        'MESH_ERR_STORE_LOCKED',
        `process ${String(err.details?.['pid'])} holds this member's inbox (a \`listen\` without a daemon?): ` +
          'stop it, or start the daemon (agentmesh daemon up) so that both read through it',
        { details: err.details ?? {}, cause: err },
      )
    }
    if (store === undefined) return { store: undefined, read: () => Promise.resolve([]) }
    const s = store
    return {
      store: s,
      read: async (after, limit) =>
        (await s.readInbox({ mesh, recipients, afterSeq: after, limit })).map((r) =>
          rowMessageJson(r, config.memberPk),
        ),
    }
  }

  /** The mesh's verified peers, through a connection of the session `cli` (for sender names). */
  async #peersDirectly(mesh: string): Promise<PeerEntry[]> {
    const opened = await this.connect(mesh, {
      role: { sessionId: CLI_SESSION_ID },
      p2p: false,
      timeoutMs: 10_000,
    })
    try {
      const peers = await opened.peer.listPeers({
        includeDaemons: true,
        includeOffline: true,
        signal: AbortSignal.timeout(10_000),
      })
      return peers.map(knownPeerEntry)
    } finally {
      await opened.close()
    }
  }
}
