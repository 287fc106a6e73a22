import { UsageError } from 'clipanion'
import { isMeshError, MeshError } from '../../protocol/errors.js'
import { listMeshes } from '../../peer-runtime/node/home.js'
import { openMeshPeer, type MeshPeer, type OpenMeshPeer } from '../../peer-runtime/node/home-peer.js'
import { BaseCommand } from './base.js'
import { connectDaemon } from './daemon/connect.js'
import { connectionStopped, exitCodeOf } from './exit-codes.js'
import { DaemonLink } from './link/daemon-link.js'
import { DirectLink } from './link/direct-link.js'
import { CLI_SESSION_ID, type MeshLink } from './link/mesh-link.js'

/** What a failed command prints with `--json`: a stable contract beside each command's own shape. */
export interface ErrorJson {
  error: { code: string; message: string; details?: Record<string, unknown> }
}

/**
 * The base of the commands that work on the local home (`--home`): a `MeshError` becomes one line
 * `error: <code>: <message>` on stderr (and `{error}` on stdout with `--json`) and the exit code the
 * CLI's table gives it (`exit-codes.ts`: 1 unless the code has its own); a `UsageError` stays
 * clipanion's (exit 2, cli/main.ts); anything else is a bug and keeps its stack.
 */
export abstract class HomeCommand extends BaseCommand {
  /** The command's work; resolves to the exit code. */
  abstract run(): Promise<number>

  override async execute(): Promise<number> {
    try {
      return await this.run()
    } catch (err) {
      if (!isMeshError(err)) throw err
      return this.fail(err)
    }
  }

  /** Reports `err` as the class comment says and returns its exit code. */
  protected fail(err: MeshError): number {
    this.context.stderr.write(`error: ${err.code}: ${err.message}\n`)
    if (this.json) {
      const error: ErrorJson['error'] = { code: err.code, message: err.message }
      if (err.details !== undefined) error.details = err.details
      this.printJson({ error })
    }
    return exitCodeOf(err)
  }

  /** One JSON document (one line) on stdout. */
  protected printJson(value: unknown): void {
    this.context.stdout.write(JSON.stringify(value, jsonBytes) + '\n')
  }

  /** A line for people on stderr (stdout stays for results). */
  protected note(text: string): void {
    this.context.stderr.write(`agentmesh: ${text}\n`)
  }

  /** `--mesh`, or the home's only mesh when it holds exactly one. */
  protected async meshOrOnly(mesh: string | undefined): Promise<string> {
    if (mesh !== undefined) return mesh
    const meshes = await listMeshes(this.home)
    if (meshes.length === 1) return meshes[0]!.mesh
    throw new UsageError(
      meshes.length === 0
        ? `this home (${this.home}) has joined no mesh: run \`agentmesh join <token>\` first`
        : `this home holds several meshes (${meshes.map((m) => m.mesh).join(', ')}): pass --mesh`,
    )
  }

  /**
   * Opens and starts the `Peer` of `presence`, and waits until the coordinator accepted its hello.
   * `MESH_ERR_COORDINATOR_UNREACHABLE` when that takes longer than `timeoutMs`; the peer's own error when
   * it stopped for good (revoked, replaced, not a member), marked so its exit code is one of the 20s.
   */
  protected async connect(mesh: string, o: OpenMeshPeer & { timeoutMs: number }): Promise<MeshPeer> {
    const { timeoutMs, ...open } = o
    const opened = await this.#openWaiting(
      () =>
        openMeshPeer(this.home, mesh, {
          ...open,
          ...(this.coordinator !== undefined && { coordinatorUrl: this.coordinator }),
        }),
      Math.min(timeoutMs, STORE_WAIT_MS),
    )
    try {
      await opened.peer.start()
      const deadline = AbortSignal.timeout(timeoutMs)
      const stopped = new Promise<never>((_resolve, reject) => {
        opened.peer.on('stopped', (err) =>
          reject(
            err === undefined
              ? new MeshError('MESH_ERR_TRANSPORT_CLOSED', 'the connection stopped')
              : connectionStopped(err),
          ),
        )
      })
      stopped.catch(() => undefined)
      try {
        await Promise.race([opened.peer.whenConnected(deadline), stopped])
      } catch (err) {
        if (!deadline.aborted) throw err
        throw new MeshError(
          'MESH_ERR_COORDINATOR_UNREACHABLE',
          `could not connect to the coordinator at ${opened.config.wsUrl} within ${timeoutMs} ms ` +
            '(is it running, and is this home still a member of the mesh? `agentmesh doctor` checks)',
          { details: { url: opened.config.wsUrl } },
        )
      }
      return opened
    } catch (err) {
      await opened.close()
      throw err
    }
  }

  /**
   * The path to `mesh` for a one-shot command: through the home's daemon when one runs (it holds the
   * member's presence and its own connection; `--coordinator` is then the daemon's business), else a
   * connection of this process as the session `cli`. Says which on stderr.
   */
  protected async openLink(mesh: string, timeoutMs: number): Promise<MeshLink> {
    const daemon = await connectDaemon(this.home)
    if (daemon !== undefined) {
      const ignored =
        this.coordinator === undefined ? '' : ' (--coordinator is not used: the daemon has its own)'
      this.note(`through the daemon (pid ${daemon.pid})${ignored}`)
      try {
        return await DaemonLink.open(daemon.client, this.home, mesh)
      } catch (err) {
        daemon.client.close()
        throw err
      }
    }
    this.note('no daemon runs on this home: connecting directly')
    const opened = await this.connect(mesh, { role: { sessionId: CLI_SESSION_ID }, p2p: false, timeoutMs })
    return new DirectLink(opened)
  }

  /**
   * `open()`, again after a short jittered backoff while another live process holds the presence's store
   * (`MESH_ERR_STORE_LOCKED` naming its pid: a second one-shot command on this home), for at most
   * `waitMs`; said once on stderr. One-shot commands take turns on a store instead of failing; the lock's
   * own error (exit 5) comes once the wait is over. Long-running commands do not come through here.
   */
  async #openWaiting(open: () => Promise<MeshPeer>, waitMs: number): Promise<MeshPeer> {
    const deadline = Date.now() + waitMs
    let said = false
    for (let n = 0; ; n++) {
      try {
        return await open()
      } catch (err) {
        const pid =
          isMeshError(err) && err.code === 'MESH_ERR_STORE_LOCKED' ? err.details?.['pid'] : undefined
        if (typeof pid !== 'number' || pid === process.pid || Date.now() >= deadline) throw err
        if (!said) this.note(`waiting for ${pid}, which holds this presence's store`)
        said = true
        const ceiling = Math.min(STORE_WAIT_CAP_MS, STORE_WAIT_BASE_MS * 2 ** Math.min(n, 10))
        const delay = Math.min(Math.floor(Math.random() * ceiling) + 1, Math.max(0, deadline - Date.now()))
        await new Promise((resolve) => setTimeout(resolve, delay))
      }
    }
  }
}

/** How long a one-shot command waits at most for a store another process holds (or its own timeout). */
const STORE_WAIT_MS = 15_000
/** The backoff of those retries: full jitter from 50 ms doubling to 500 ms. */
const STORE_WAIT_BASE_MS = 50
const STORE_WAIT_CAP_MS = 500

/** Bytes in `--json` output are hex strings (JSON has no binary). */
function jsonBytes(_key: string, value: unknown): unknown {
  if (value instanceof Uint8Array) return Buffer.from(value).toString('hex')
  return value
}
