import { stat } from 'node:fs/promises'
import { basename, resolve } from 'node:path'
import { Command, Option, UsageError } from 'clipanion'
import { fromHex } from '../../../protocol/encoding.js'
import { MeshError } from '../../../protocol/errors.js'
import { runningDaemonPid } from '../../../peer-runtime/node/daemon/files.js'
import { fileNameProblem } from '../../../peer-runtime/node/file-header.js'
import { sendFile } from '../../../peer-runtime/node/file-sender.js'
import { parseDuration } from '../duration.js'
import { HomeCommand } from '../home-command.js'
import { knownPeerEntry, resolvePeer } from '../peer/resolve.js'
import { formatBytes, Progress } from './progress.js'

/** The session `file send` connects as, on either path: it never displaces a daemon or a `listen`. */
export const FILE_SESSION_ID = 'cli-file'

/** What `file send --json` prints on success. */
export interface FileSendJson {
  mesh: string
  /** The recipient key (hex). */
  to: string
  toName: string | null
  name: string
  /** The name the receiver saved it under (`name`, or `name-1` … when that was taken). */
  savedAs: string
  size: number
  /** Hex, checked by the receiver before it kept the file. */
  sha256: string
  /** What carried most of the chunks. */
  transport: 'p2p' | 'relay'
  /** Chunks per transport, as the receiver counted them. */
  chunks: Record<string, number>
  /** From the first byte out to the receiver's verdict. */
  ms: number
}

/** `agentmesh file send <peer> <path>`: one file, streamed end-to-end encrypted and checked on arrival. */
export class FileSendCommand extends HomeCommand {
  static override paths = [['file', 'send']]

  static override usage = Command.Usage({
    category: 'Files',
    description: 'Send a file to a peer, checked by SHA-256 on arrival',
    details: `
      Streams \`<path>\` to \`<peer>\` in sealed chunks of 60 KiB (peer to peer when a WebRTC session
      comes up, else through the relay) and waits until the receiver saved it with a matching SHA-256,
      then prints \`sent 20.0 MiB to alice in 3.1 s (p2p), sha-256 …\`. The receiver is the peer's
      daemon or its \`agentmesh listen\`, which must be running; it keeps the file under its home at
      \`files/<mesh>/<sender>/<name>\`, never over an existing one (\`name-1\`, \`name-2\` …).

      \`<peer>\` is a display name, a 64-hex key or a unique key prefix, as for \`send\` (unknown or
      ambiguous: exit 6). Progress goes to stderr: a bar on a terminal, else a line at every 10 %. With
      \`--json\`, stdout is one object \`{mesh, to, toName, name, savedAs, size, sha256, transport, chunks,
      ms}\`.

      It connects as this home's session \`${FILE_SESSION_ID}\` with a connection of its own, also when the
      home's daemon runs (a session presence does not displace the daemon's). \`--no-p2p\` keeps every
      chunk on the relay. \`--timeout\` bounds connecting and any stall of the transfer.
    `,
    examples: [
      ['Send a file to alice', '$0 file send alice ./report.pdf'],
      ['Save it under another name, relay only', '$0 file send alice ./build.tgz --name app.tgz --no-p2p'],
    ],
  })

  mesh = Option.String('--mesh', { description: "The mesh (default: the home's only one)" })

  name = Option.String('--name', { description: 'The name the receiver saves it as (default: its own)' })

  p2p = Option.Boolean('--p2p', true, {
    description: 'Send peer to peer over WebRTC when possible (on by default; --no-p2p: relay only)',
  })

  timeout = Option.String('--timeout', '60s', {
    description: 'How long to wait to connect, and at most without progress (default 60s)',
  })

  to = Option.String({ name: 'peer' })

  file = Option.String({ name: 'path' })

  override async run(): Promise<number> {
    const timeoutMs = parseDuration(this.timeout, '--timeout')
    const path = resolve(this.file)
    const info = await stat(path).catch(() => undefined)
    if (info === undefined || !info.isFile()) throw new UsageError(`${this.file}: no such file`)
    const name = this.name ?? basename(path)
    const problem = fileNameProblem(name)
    if (problem !== undefined) throw new UsageError(`--name ${JSON.stringify(name)}: ${problem}`)
    const mesh = await this.meshOrOnly(this.mesh)

    const pid = await runningDaemonPid(this.home)
    this.note(
      pid === undefined
        ? `connecting directly as session ${FILE_SESSION_ID}`
        : `a daemon runs on this home (pid ${pid}); connecting directly as session ${FILE_SESSION_ID} beside it`,
    )
    const opened = await this.connect(mesh, {
      role: { sessionId: FILE_SESSION_ID },
      p2p: this.p2p,
      timeoutMs,
    })
    try {
      const { peer } = opened
      const entries = (
        await peer.listPeers({
          includeDaemons: true,
          includeOffline: true,
          signal: AbortSignal.timeout(timeoutMs),
        })
      ).map(knownPeerEntry)
      const target = resolvePeer(entries, this.to)
      const who = target.displayName ?? `${target.pk.slice(0, 16)}…`
      if (!entries.some((p) => p.pk === target.pk && p.online)) {
        throw new MeshError(
          'MESH_ERR_PEER_UNREACHABLE',
          `${who} is not online: a file goes to a running receiver (its daemon or \`agentmesh listen\`)`,
          { details: { to: target.pk } },
        )
      }
      const progress = new Progress(this.context.stderr, name, info.size)
      this.note(`sending ${name} (${formatBytes(info.size)}) to ${who}`)
      // ^C aborts the stream (the receiver drops its temp file at once) instead of leaving it to time out.
      const interrupt = new AbortController()
      const onSignal = (): void =>
        interrupt.abort(new MeshError('MESH_ERR_SHUTTING_DOWN', 'interrupted: the transfer was aborted'))
      process.once('SIGINT', onSignal)
      process.once('SIGTERM', onSignal)
      let sent
      try {
        sent = await sendFile(peer, fromHex(target.pk)!, path, {
          name,
          signal: interrupt.signal,
          idleTimeoutMs: timeoutMs,
          offerTimeoutMs: Math.min(timeoutMs, 15_000),
          receiptTimeoutMs: timeoutMs,
          onProgress: (bytes) => progress.update(bytes),
        })
      } catch (err) {
        // The stream_abort is in the outbox: give it a moment to reach the receiver before closing.
        if (interrupt.signal.aborted) await peer.settled(AbortSignal.timeout(3_000)).catch(() => undefined)
        throw err
      } finally {
        process.off('SIGINT', onSignal)
        process.off('SIGTERM', onSignal)
        progress.done()
      }
      const chunks = sent.receipt.via
      const p2pChunks = chunks['p2p'] ?? 0
      const relayChunks = chunks['relay'] ?? 0
      const transport = p2pChunks > relayChunks ? 'p2p' : 'relay'
      const ms = Math.round(sent.ms)
      if (this.json) {
        this.printJson({
          mesh,
          to: target.pk,
          toName: target.displayName ?? null,
          name,
          savedAs: sent.receipt.savedAs,
          size: sent.size,
          sha256: sent.sha256,
          transport,
          chunks,
          ms,
        } satisfies FileSendJson)
      } else {
        const mixed =
          p2pChunks > 0 && relayChunks > 0
            ? `; ${transport === 'p2p' ? relayChunks : p2pChunks} of ${p2pChunks + relayChunks} chunks by ${transport === 'p2p' ? 'relay' : 'p2p'}`
            : ''
        const savedAs = sent.receipt.savedAs === name ? '' : `, saved as ${sent.receipt.savedAs}`
        this.context.stdout.write(
          `sent ${formatBytes(sent.size)} to ${who} in ${(ms / 1000).toFixed(1)} s (${transport}${mixed}), ` +
            `sha-256 ${sent.sha256}${savedAs}\n`,
        )
      }
      return 0
    } finally {
      await opened.close()
    }
  }
}
