import { renameSync, writeFileSync } from 'node:fs'
import { dirname } from 'node:path'
import { Command, Option } from 'clipanion'
import { toHex } from '../../../protocol/encoding.js'
import { isMeshError, isMeshErrorCode, MeshError } from '../../../protocol/errors.js'
import type { InboundMessage } from '../../../peer-runtime/inbox.js'
import type { DaemonClient } from '../../../peer-runtime/node/daemon/client.js'
import { runningDaemonPid } from '../../../peer-runtime/node/daemon/files.js'
import type { MessageJson } from '../../../peer-runtime/node/daemon/ipc-json.js'
import type { RegisteredSession } from '../../../peer-runtime/node/daemon/types.js'
import { makePrivateDir } from '../../../peer-runtime/node/home.js'
import { receiveFiles } from '../../../peer-runtime/node/file-receiver.js'
import { openMeshPeer } from '../../../peer-runtime/node/home-peer.js'
import type { Peer } from '../../../peer-runtime/peer.js'
import { connectDaemon } from '../daemon/connect.js'
import { parseDuration, parsePositiveInt } from '../duration.js'
import { fileReceiveNotes } from '../file/receive-notes.js'
import { readCursor, readCursorPath } from '../inbox/cursor.js'
import { messageBody } from '../inbox/inbox-json.js'
import { HomeCommand } from '../home-command.js'
import { LongRunning } from '../long-running.js'

/** One line of `listen --json`: a stable contract. */
export interface ListenJson {
  /** The sender's key (hex): a member key, or a session key of a member. */
  from: string
  /** The sender's display name as the mesh knows it, else null. */
  fromName: string | null
  clientMessageId: string
  /** The opened payload (`{text}` from `agentmesh send`); null when it did not open. */
  payload: unknown
  /** `relay` or `p2p`. */
  via: string
  /** False for a plaintext `{to, text}` post (POST /v1/send), which the coordinator could read. */
  e2e: boolean
}

/** The daemon session `listen` registers when it goes through the home's daemon. */
export const LISTEN_SESSION_ID = 'listen'

/** What one message looks like to the printer, from either path. */
interface Printable {
  from: string
  clientMessageId: string
  payload: unknown
  status: string
  via: string
  e2e: boolean
}

/** `agentmesh listen`: prints the DMs to this home's member key as they arrive. */
export class ListenCommand extends HomeCommand {
  static override paths = [['listen']]

  static override usage = Command.Usage({
    category: 'Messages',
    description: 'Print direct messages to this member as they arrive',
    details: `
      Prints every DM to this member's key (DMs sent to the member, by key or by name) as it arrives,
      first those that were queued while it was offline: \`name: text\`, or with \`--json\` one JSON line
      per message \`{from, fromName, clientMessageId, payload, via, e2e}\`. Each message is printed once.

      Without a daemon on this home it connects as the member's control-plane presence itself; each
      message is stored and acknowledged before it is printed, so a redelivery is never printed twice.
      When the home's daemon runs, it goes through the daemon instead (the daemon holds that presence):
      it registers the daemon session \`${LISTEN_SESSION_ID}\` and follows its events, resuming after the
      last message it printed (kept in the mesh's \`listen.cursor\`). It says on stderr which path it took.

      It rides out outages by itself: while the coordinator (or the daemon) is unreachable it says so on
      stderr (\`coordinator unreachable, retrying in 2.1 s\`, then \`reconnected\`) and keeps trying,
      forever unless \`--connect-timeout\` bounds the first connection. It ends after \`--count\`
      messages, on SIGINT or SIGTERM (exit 0 after a clean close), or when retrying cannot help: revoked
      (exit 20), kicked (21), replaced by another process with this key, or by a second \`listen\` through
      the daemon (22), not a member (23), mesh gone (24); README.md lists every exit code.
    `,
    examples: [
      ['Listen on mesh "team"', '$0 listen --mesh team'],
      ['Wait for one message and print it as JSON', '$0 listen --mesh team --count 1 --json'],
    ],
  })

  mesh = Option.String('--mesh', { description: "The mesh (default: the home's only one)" })

  count = Option.String('--count', { description: 'Exit after this many messages' })

  timeout = Option.String('--connect-timeout', {
    description: 'Give up (exit 4) when the first connection takes longer (default: wait forever)',
  })

  override async run(): Promise<number> {
    const limit = this.count === undefined ? Infinity : parsePositiveInt(this.count, '--count')
    const timeoutMs =
      this.timeout === undefined ? undefined : parseDuration(this.timeout, '--connect-timeout')
    const mesh = await this.meshOrOnly(this.mesh)
    const run = new LongRunning({ note: (text) => this.note(text) })
    try {
      const pid = await runningDaemonPid(this.home)
      if (pid === undefined) await this.#direct(mesh, run, limit, timeoutMs)
      else await this.#viaDaemon(mesh, pid, run, limit)
    } finally {
      run.dispose()
    }
    return run.finish()
  }

  /** As the member's control-plane presence, with this process's own connection. */
  async #direct(mesh: string, run: LongRunning, limit: number, timeoutMs: number | undefined): Promise<void> {
    const opened = await openMeshPeer(this.home, mesh, {
      role: 'control-plane',
      ...(this.coordinator !== undefined && { coordinatorUrl: this.coordinator }),
      peer: { connection: { reconnect: run.reconnect() } },
    })
    try {
      const { peer } = opened
      run.watch(peer)
      // Files streamed to the member (`agentmesh file send`) are saved under the home, said on stderr.
      receiveFiles(peer, { home: this.home, onEvent: fileReceiveNotes(this.context.stderr) })
      const who = opened.config.displayName === undefined ? '' : ` as ${opened.config.displayName}`
      let announced = false
      peer.on('connected', () => {
        if (announced) return
        announced = true
        this.note(`listening on mesh ${mesh}${who} (key ${opened.config.memberPk.slice(0, 16)}…)`)
      })
      this.note('no daemon runs on this home: listening as the member itself')
      // Shared with the path through the daemon (same store, same inbox positions): what either printed
      // is never printed again by the other.
      const cursorPath = readCursorPath(this.home, mesh)
      await makePrivateDir(dirname(cursorPath))
      let cursor = await readCursor(cursorPath)
      await peer.start()
      if (timeoutMs !== undefined) await this.#firstConnection(peer, run, timeoutMs, opened.config.wsUrl)
      const names = new Names(peer)
      let printed = 0
      if (printed < limit && !run.signal.aborted) {
        for await (const m of peer.messages({ signal: run.signal })) {
          if (m.seq <= cursor) continue
          const name = await names.of(m.from)
          // Printed and recorded in one turn, no await between: a kill -9 can hardly fall in between.
          this.#print(printable(m), name)
          cursor = m.seq
          writeCursor(cursorPath, cursor)
          if (++printed >= limit) break
        }
      }
    } finally {
      await opened.close()
    }
  }

  /** `--connect-timeout`: the first connection within `timeoutMs`, else `MESH_ERR_COORDINATOR_UNREACHABLE`. */
  async #firstConnection(peer: Peer, run: LongRunning, timeoutMs: number, url: string): Promise<void> {
    const deadline = AbortSignal.timeout(timeoutMs)
    try {
      await peer.whenConnected(AbortSignal.any([deadline, run.signal]))
    } catch (err) {
      if (run.signal.aborted) return
      if (!deadline.aborted) throw err
      throw new MeshError(
        'MESH_ERR_COORDINATOR_UNREACHABLE',
        `could not connect to the coordinator at ${url} within ${this.timeout}`,
        { details: { url } },
      )
    }
  }

  /**
   * Through the home's daemon, which holds the member's presence: a `listen` of its own would displace it
   * (4003). Registers the daemon session `listen` once and follows its events with that token, resuming
   * from the cursor file after each outage of the daemon; a token that stops working was replaced by a
   * second `listen` (exit 22).
   */
  async #viaDaemon(mesh: string, pid: number, run: LongRunning, limit: number): Promise<void> {
    this.note(
      `a daemon runs on this home (pid ${pid}): listening through it, so the member's presence stays the daemon's`,
    )
    const cursorPath = readCursorPath(this.home, mesh)
    await makePrivateDir(dirname(cursorPath))
    let after = await readCursor(cursorPath)
    let token: string | undefined
    let announced = false
    let printed = 0
    let failures = 0
    // The daemon's own connection to the coordinator, as its events tell it: said on state changes.
    const coordinator = new LinkNotes((text) => this.note(text))
    while (!run.signal.aborted && printed < limit) {
      let admin: DaemonClient | undefined
      let session: DaemonClient | undefined
      try {
        const daemon = await connectDaemon(this.home)
        if (daemon === undefined) {
          throw new MeshError('MESH_ERR_DAEMON_NOT_RUNNING', `no daemon runs on ${this.home}`)
        }
        admin = daemon.client
        if (token === undefined) {
          const registered = await admin.call<RegisteredSession>('POST', '/v1/sessions', {
            mesh,
            sessionId: LISTEN_SESSION_ID,
          })
          token = registered.token
        }
        session = admin.as(token)
        const names = new DaemonNames(session)
        for await (const ev of session.events({ signal: run.signal, after })) {
          if (ev.event === 'ready') {
            failures = 0
            run.reconnected('')
            if (!announced) {
              announced = true
              this.note(`listening on mesh ${mesh} through the daemon (session ${LISTEN_SESSION_ID})`)
            }
            coordinator.seen(meshLinkUp(ev.data))
            continue
          }
          if (ev.event === 'link') {
            coordinator.seen(meshLinkUp(ev.data))
            continue
          }
          if (ev.event === 'stopped') {
            // The session or its mesh stopped for good in the daemon (revoked, kicked, …): so do we.
            const d = ev.data as { code?: string; message?: string }
            const code = typeof d.code === 'string' && isMeshErrorCode(d.code) ? d.code : 'MESH_ERR_INTERNAL'
            run.fail(new MeshError(code, d.message ?? 'stopped in the daemon'))
            break
          }
          if (ev.event !== 'message') continue
          const m = ev.data as MessageJson
          // The daemon's events carry every inbox row; file chunks (`stream`) and `rpc` are the daemon's.
          if (m.channel === 'stream' || m.channel === 'rpc') continue
          const name = await names.of(m.from)
          this.#print(m, name)
          after = m.seq
          writeCursor(cursorPath, after)
          if (++printed >= limit) break
        }
      } catch (err) {
        if (run.signal.aborted) break
        const stop = daemonStop(err)
        if (stop !== undefined) {
          run.fail(stop)
          break
        }
      } finally {
        session?.close()
        admin?.close()
      }
      if (run.signal.aborted || printed >= limit) break
      // The daemon went away (restarted, killed) or ended the stream: back off as the runtime does.
      const cap = Math.min(5_000, 500 * 2 ** Math.min(failures++, 10))
      const delayMs = Math.floor(Math.random() * cap)
      run.retrying({ delayMs }, '', 'daemon')
      await sleep(delayMs, run.signal)
    }
    if (token !== undefined && run.interrupted) {
      // A clean stop: the session is ours no longer (a new `listen` registers it again).
      const daemon = await connectDaemon(this.home).catch(() => undefined)
      await daemon?.client
        .request('DELETE', `/v1/sessions/${LISTEN_SESSION_ID}?mesh=${encodeURIComponent(mesh)}`, {
          signal: AbortSignal.timeout(5_000),
        })
        .catch(() => undefined)
      daemon?.client.close()
    }
  }

  #print(m: Printable, fromName: string | undefined): void {
    if (this.json) {
      this.printJson({
        from: m.from,
        fromName: fromName ?? null,
        clientMessageId: m.clientMessageId,
        payload: m.payload,
        via: m.via,
        e2e: m.e2e,
      } satisfies ListenJson)
      return
    }
    const name = fromName ?? m.from.slice(0, 16)
    const body = messageBody(m)
    this.context.stdout.write(`${name}: ${body}${m.e2e ? '' : ' (not end-to-end encrypted)'}\n`)
  }
}

function printable(m: InboundMessage): Printable {
  return {
    from: toHex(m.from),
    clientMessageId: m.clientMessageId,
    payload: m.payload,
    status: m.status,
    via: m.via,
    e2e: m.e2e,
  }
}

/**
 * What ends a `listen` through the daemon for good: a session token that no longer works (a second
 * `listen` registered the session again: replaced), or a mesh the daemon stopped (revoked, kicked, …).
 */
function daemonStop(err: unknown): MeshError | undefined {
  if (!isMeshError(err)) return undefined
  if (err.code === 'MESH_ERR_DAEMON_NOT_RUNNING' || err.code === 'MESH_ERR_SESSION_UNAVAILABLE')
    return undefined
  if (err.code === 'MESH_ERR_UNAUTHENTICATED' || err.details?.['status'] === 401) {
    return new MeshError('MESH_ERR_SESSION_REPLACED', 'another `listen` took over the daemon session', {
      details: { sessionId: LISTEN_SESSION_ID },
    })
  }
  // The daemon's own verdict on the mesh or the session (revoked 403, kicked 403) keeps its code.
  return err.permanent ? err : undefined
}

/** Whether a `ready` or `link` event says the daemon's mesh connection is up (undefined: it does not say). */
function meshLinkUp(data: unknown): boolean | undefined {
  const d = data as { link?: { mesh?: { connected?: unknown } }; mesh?: { connected?: unknown } } | null
  const connected = d?.mesh?.connected ?? d?.link?.mesh?.connected
  return typeof connected === 'boolean' ? connected : undefined
}

/** Says when the daemon's connection to the coordinator goes and comes back, once per change. */
class LinkNotes {
  readonly #note: (text: string) => void
  #up = true

  constructor(note: (text: string) => void) {
    this.#note = note
  }

  seen(up: boolean | undefined): void {
    if (up === undefined || up === this.#up) return
    this.#up = up
    this.#note(up ? 'reconnected (the daemon)' : 'coordinator unreachable; the daemon keeps retrying')
  }
}

/** Replaces the cursor file (0600) synchronously: it must be on disk before the next line is printed. */
function writeCursor(path: string, seq: number): void {
  const tmp = `${path}.${process.pid}.tmp`
  writeFileSync(tmp, `${seq}\n`, { mode: 0o600 })
  renameSync(tmp, path)
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms)
    signal.addEventListener('abort', done, { once: true })
    function done(): void {
      clearTimeout(timer)
      signal.removeEventListener('abort', done)
      resolve()
    }
  })
}

/** Display names of senders, asked of the coordinator (as verified peers) when a key is new. */
class Names {
  readonly #peer: Peer
  readonly #known = new Map<string, string>()
  /** After a lookup that could not be made, none is tried before this (ms). */
  #quietUntil = 0

  constructor(peer: Peer) {
    this.#peer = peer
  }

  async of(pk: Uint8Array): Promise<string | undefined> {
    const hex = toHex(pk)
    if (!this.#known.has(hex) && Date.now() >= this.#quietUntil) {
      try {
        // Messages stored before the connection came print right away; give the connection a moment.
        if (!this.#peer.connected) await this.#peer.whenConnected(AbortSignal.timeout(3_000))
        const peers = await this.#peer.listPeers({
          includeDaemons: true,
          includeOffline: true,
          signal: AbortSignal.timeout(5000),
        })
        for (const p of peers) if (p.displayName !== undefined) this.#known.set(toHex(p.pk), p.displayName)
      } catch {
        // The name is a nicety: print the key instead, and do not hold every message up while offline.
        this.#quietUntil = Date.now() + 10_000
      }
    }
    return this.#known.get(hex)
  }
}

/** The same, asked of the daemon (`GET /v1/peers`). */
class DaemonNames {
  readonly #client: DaemonClient
  readonly #known = new Map<string, string>()
  /** After a lookup that did not answer, none is tried before this (ms). */
  #quietUntil = 0

  constructor(client: DaemonClient) {
    this.#client = client
  }

  async of(hex: string): Promise<string | undefined> {
    if (this.#known.has(hex) || Date.now() < this.#quietUntil) return this.#known.get(hex)
    // A session the daemon just (re)opened answers once its presence is connected: give it a moment.
    const deadline = Date.now() + 3_000
    for (;;) {
      try {
        const res = await this.#client.request<{ peers?: { pk: string; displayName?: string }[] }>(
          'GET',
          '/v1/peers?offline=true',
          { signal: AbortSignal.timeout(3_000) },
        )
        if (res.status === 200) {
          for (const p of res.body.peers ?? []) {
            if (p.displayName !== undefined) this.#known.set(p.pk, p.displayName)
          }
          return this.#known.get(hex)
        }
      } catch {
        // The name is a nicety: print the key instead.
      }
      if (Date.now() >= deadline) break
      await new Promise((resolve) => setTimeout(resolve, 200))
    }
    this.#quietUntil = Date.now() + 10_000
    return undefined
  }
}
