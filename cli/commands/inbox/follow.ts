/**
 * `inbox --follow`: the backlog, then each message as it arrives, for as long as the command runs
 * (cli/commands/long-running.ts rides out outages and ends it on SIGINT or SIGTERM). Without a daemon it
 * connects as the member's control-plane presence, as `listen` does; with one it follows the events of
 * the daemon session `cli`, resuming after the last message it saw when the daemon restarts.
 */
import { isMeshError, MeshError } from '../../../protocol/errors.js'
import { runningDaemonPid } from '../../../peer-runtime/node/daemon/files.js'
import { rowMessageJson, type MessageJson } from '../../../peer-runtime/node/daemon/ipc-json.js'
import { openMeshPeer } from '../../../peer-runtime/node/home-peer.js'
import { connectDaemon } from '../daemon/connect.js'
import { DaemonLink } from '../link/daemon-link.js'
import { CLI_SESSION_ID } from '../link/mesh-link.js'
import { LongRunning } from '../long-running.js'
import { knownPeerEntry } from '../peer/resolve.js'
import { advanceCursor, readCursor, readCursorPath } from './cursor.js'
import { readInbox, type InboxReader } from './read.js'
import { INBOX_CHANNELS, inboxJson, inboxLine } from './inbox-json.js'
import { SenderNames } from './names.js'

export interface FollowInit {
  home: string
  mesh: string
  coordinator: string | undefined
  /** Start at the read cursor and move it past each message printed. */
  unread: boolean
  /** Without `unread`: the backlog is the newest `limit` messages. */
  limit: number
  json: boolean
  note: (text: string) => void
  out: (line: string) => void
}

/** Runs `inbox --follow`; resolves with the exit code (or throws what stopped it for good). */
export async function followInbox(o: FollowInit): Promise<number> {
  const run = new LongRunning({ note: o.note })
  try {
    const printer = new Printer(o, await readCursor(readCursorPath(o.home, o.mesh)))
    const pid = await runningDaemonPid(o.home)
    if (pid === undefined) await followDirect(o, run, printer)
    else await followDaemon(o, pid, run, printer)
  } finally {
    run.dispose()
  }
  return run.finish()
}

/** Prints each message once, in order, and moves the read cursor with `--unread`. */
class Printer {
  readonly #o: FollowInit
  readonly #cursorPath: string
  #cursor: number
  /** The inbox position read up to (any channel). */
  last: number | undefined

  constructor(o: FollowInit, cursor: number) {
    this.#o = o
    this.#cursorPath = readCursorPath(o.home, o.mesh)
    this.#cursor = cursor
    if (o.unread) this.last = cursor
  }

  /**
   * What `read` holds after the last position printed; the first time without `--unread`, only the
   * newest `limit` messages of it.
   */
  async backlog(read: InboxReader, names: SenderNames): Promise<void> {
    if (this.last !== undefined) {
      const { messages, head } = await readInbox(read, this.last)
      for (const m of messages) await this.print(m, names)
      this.last = Math.max(this.last, head)
      return
    }
    const { messages, head } = await readInbox(read, 0)
    for (const m of messages.slice(Math.max(0, messages.length - this.#o.limit))) await this.print(m, names)
    this.last = Math.max(this.last ?? 0, head)
  }

  async print(m: MessageJson, names: SenderNames): Promise<void> {
    if (this.last !== undefined && m.seq <= this.last) return
    this.last = Math.max(this.last ?? 0, m.seq)
    if (!INBOX_CHANNELS.has(m.channel)) return
    const message = inboxJson(m, await names.of(m.from), this.#cursor)
    this.#o.out(this.#o.json ? JSON.stringify(message) : inboxLine(message))
    if (this.#o.unread) this.#cursor = await advanceCursor(this.#cursorPath, m.seq)
  }
}

/** As the member's control-plane presence, with this process's own connection. */
async function followDirect(o: FollowInit, run: LongRunning, printer: Printer): Promise<void> {
  const opened = await openMeshPeer(o.home, o.mesh, {
    role: 'control-plane',
    ...(o.coordinator !== undefined && { coordinatorUrl: o.coordinator }),
    peer: { connection: { reconnect: run.reconnect() } },
  })
  try {
    const { peer } = opened
    run.watch(peer)
    o.note('no daemon runs on this home: following the inbox as the member itself')
    let announced = false
    peer.on('connected', () => {
      if (announced) return
      announced = true
      o.note(`following the inbox of mesh ${o.mesh}`)
    })
    let wake: (() => void) | undefined
    peer.on('message', () => wake?.())
    await peer.start()
    const read: InboxReader = async (after, limit) =>
      (
        await peer.store.readInbox({
          mesh: o.mesh,
          recipients: [opened.identity.publicKey],
          afterSeq: after,
          limit,
        })
      ).map((r) => rowMessageJson(r, opened.config.memberPk))
    const names = new SenderNames(async () => {
      // Stored messages print before the connection is up: give it a moment for their names.
      if (!peer.connected) await peer.whenConnected(AbortSignal.any([AbortSignal.timeout(3_000), run.signal]))
      const peers = await peer.listPeers({
        includeDaemons: true,
        includeOffline: true,
        signal: AbortSignal.timeout(5_000),
      })
      return peers.map(knownPeerEntry)
    })
    while (!run.signal.aborted) {
      // Armed before the read, so a message stored while it runs wakes the next round.
      const woke = new Promise<void>((resolve) => (wake = resolve))
      await printer.backlog(read, names)
      await Promise.race([woke, run.wait()])
    }
  } finally {
    await opened.close()
  }
}

/**
 * Through the home's daemon, which holds the member's presence: the events of its session `cli`, from
 * the last position seen after each outage of the daemon (`DaemonClient.follow` re-dials by itself; this
 * loop opens the link again when the daemon was gone at the start or the token needs registering anew).
 */
async function followDaemon(o: FollowInit, pid: number, run: LongRunning, printer: Printer): Promise<void> {
  o.note(`through the daemon (pid ${pid}): following the inbox of its session ${CLI_SESSION_ID}`)
  const coordinator = new CoordinatorNotes(o.note)
  let announced = false
  let failures = 0
  let unauthorized = 0
  while (!run.signal.aborted) {
    let link: DaemonLink | undefined
    try {
      const daemon = await connectDaemon(o.home)
      if (daemon === undefined) {
        throw new MeshError('MESH_ERR_DAEMON_NOT_RUNNING', `no daemon runs on ${o.home}`)
      }
      link = await DaemonLink.open(daemon.client, o.home, o.mesh).catch((err: unknown) => {
        daemon.client.close()
        throw err
      })
      const l = link
      const names = new SenderNames(() => l.peers({ offline: true, signal: AbortSignal.timeout(5_000) }))
      if (printer.last === undefined) {
        await printer.backlog((after, n) => l.inbox(after, n, AbortSignal.timeout(15_000)), names)
      }
      for await (const ev of l.events({
        signal: run.signal,
        after: printer.last ?? 0,
        onNotice: (n) => {
          if (n.kind === 'unreachable') run.retrying({ delayMs: n.retryInMs }, '', 'daemon')
          else run.reconnected('')
        },
      })) {
        if (ev.event === 'ready') {
          failures = 0
          unauthorized = 0
          run.reconnected('')
          if (!announced) {
            announced = true
            o.note(`following the inbox of mesh ${o.mesh}`)
          }
          coordinator.seen(ev.data)
        } else if (ev.event === 'link') coordinator.seen(ev.data)
        else if (ev.event === 'message') await printer.print(ev.data as MessageJson, names)
      }
    } catch (err) {
      if (run.signal.aborted) break
      if (isMeshError(err) && err.details?.['status'] === 401 && link !== undefined) {
        // Another command registered the session anew (`outbox requeue` does, around its requeue): the
        // token file names the new token, read on the next round. Registering it ourselves only when
        // that keeps failing (the daemon lost the registry), so as not to take it from under them.
        if (++unauthorized >= 3) {
          unauthorized = 0
          await link.renew().catch(() => undefined)
        }
      } else if (isMeshError(err) && (err.details?.['stopped'] === true || (err.permanent && !gone(err)))) {
        run.fail(err)
        break
      }
    } finally {
      await link?.close()
    }
    if (run.signal.aborted) break
    const cap = Math.min(5_000, 500 * 2 ** Math.min(failures++, 10))
    const delayMs = Math.floor(Math.random() * cap)
    run.retrying({ delayMs }, '', 'daemon')
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, delayMs)
      run.signal.addEventListener('abort', done, { once: true })
      function done(): void {
        clearTimeout(timer)
        run.signal.removeEventListener('abort', done)
        resolve()
      }
    })
  }
}

/** Errors that mean the daemon is away for now (stopped, restarting), not that it refused us. */
function gone(err: MeshError): boolean {
  return err.code === 'MESH_ERR_DAEMON_NOT_RUNNING' || err.code === 'MESH_ERR_SESSION_UNAVAILABLE'
}

/** Says when the daemon's own connection to the coordinator goes and comes back (its events tell). */
class CoordinatorNotes {
  readonly #note: (text: string) => void
  #up = true

  constructor(note: (text: string) => void) {
    this.#note = note
  }

  seen(data: unknown): void {
    const d = data as { link?: { mesh?: { connected?: unknown } }; mesh?: { connected?: unknown } } | null
    const connected = d?.mesh?.connected ?? d?.link?.mesh?.connected
    if (typeof connected !== 'boolean' || connected === this.#up) return
    this.#up = connected
    this.#note(connected ? 'reconnected (the daemon)' : 'coordinator unreachable; the daemon keeps retrying')
  }
}
