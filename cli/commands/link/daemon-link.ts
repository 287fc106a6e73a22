import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { initCrypto } from '../../../protocol/crypto.js'
import { isMeshError, MeshError } from '../../../protocol/errors.js'
import type { DaemonClient, FollowOptions, IpcEvent } from '../../../peer-runtime/node/daemon/client.js'
import type { DeliveryJson, MessageJson } from '../../../peer-runtime/node/daemon/ipc-json.js'
import type { OutboxRowJson } from '../../../peer-runtime/node/daemon/ipc-outbox.js'
import type { RpcAnswerJson } from '../../../peer-runtime/node/daemon/ipc-rpc.js'
import type { SendAnswer } from '../../../peer-runtime/node/daemon/ipc-send.js'
import type { RegisteredSession } from '../../../peer-runtime/node/daemon/types.js'
import { meshDir, writePrivateFile } from '../../../peer-runtime/node/home.js'
import type { PeerEntry } from '../peer/resolve.js'
import { CLI_SESSION_ID, type MeshLink, type RpcRequest } from './mesh-link.js'

/**
 * The path through the home's daemon, as its session `cli`: registered once, its token kept in the
 * mesh's `cli.daemon-token` (0600) so later commands reuse the session instead of each registering it
 * again (which would end the token of a command still running). A token the daemon no longer knows
 * (401) is registered afresh, once per call.
 */
export class DaemonLink implements MeshLink {
  readonly via = 'daemon'
  readonly mesh: string
  readonly #admin: DaemonClient
  readonly #tokenPath: string
  #session: DaemonClient | undefined

  private constructor(admin: DaemonClient, mesh: string, tokenPath: string) {
    this.#admin = admin
    this.mesh = mesh
    this.#tokenPath = tokenPath
  }

  /** A link over `admin` (an admin client of the running daemon), with the session ready to use. */
  static async open(admin: DaemonClient, home: string, mesh: string): Promise<DaemonLink> {
    // The client mints each send's id (a ULID), from the crypto module's random bytes.
    await initCrypto()
    const link = new DaemonLink(admin, mesh, join(meshDir(home, mesh), 'cli.daemon-token'))
    const token = await readFile(link.#tokenPath, 'utf8').then(
      (t) => t.trim(),
      () => undefined,
    )
    if (token === undefined || token === '') await link.#register()
    else link.#session = admin.as(token)
    return link
  }

  async peers(o: { offline: boolean; signal: AbortSignal }): Promise<PeerEntry[]> {
    // A session the daemon just opened answers once its presence is connected: retry until the deadline.
    for (;;) {
      try {
        const { peers } = await this.#call<{ peers: Record<string, unknown>[] }>(
          'GET',
          `/v1/peers?offline=${o.offline}`,
          undefined,
          o.signal,
        )
        return peers.map(entry)
      } catch (err) {
        if (o.signal.aborted || !isMeshError(err) || err.permanent) throw err
        await new Promise((resolve) => setTimeout(resolve, 100))
      }
    }
  }

  async send(to: string, text: string, signal: AbortSignal): Promise<string> {
    return (await this.#call<SendAnswer>('POST', '/v1/send', { to, text }, signal)).id
  }

  sendGroup(target: string): Promise<string> {
    // POST /v1/send takes one recipient key; a group send through the daemon needs a route of its own.
    return Promise.reject(
      new MeshError(
        'MESH_ERR_DAEMON_RUNNING',
        `a daemon runs on this home and its IPC sends to one key only, not to ${target}: ` +
          'stop the daemon (agentmesh daemon down) to send to a group from this home',
        { details: { target } },
      ),
    )
  }

  async status(id: string, signal: AbortSignal): Promise<DeliveryJson | undefined> {
    try {
      return await this.#call<DeliveryJson>(
        'GET',
        `/v1/messages/${encodeURIComponent(id)}`,
        undefined,
        signal,
      )
    } catch (err) {
      if (isMeshError(err) && err.code === 'MESH_ERR_UNKNOWN_MESSAGE') return undefined
      throw err
    }
  }

  async watch(
    id: string,
    until: (row: DeliveryJson) => boolean,
    signal: AbortSignal,
  ): Promise<DeliveryJson | undefined> {
    let row: DeliveryJson | undefined
    const stop = new AbortController()
    const both = AbortSignal.any([signal, stop.signal])
    try {
      // Each connection starts with `ready`: read the row then (it covers what changed before the
      // stream was live), and after that each `delivery` event of the row.
      for await (const ev of this.#sessionClient().follow({ signal: both })) {
        if (ev.event === 'ready') row = (await this.status(id, both)) ?? row
        else if (ev.event === 'delivery' && (ev.data as DeliveryJson).id === id) row = ev.data as DeliveryJson
        if (row !== undefined && until(row)) return row
      }
    } catch (err) {
      if (!signal.aborted) throw err
    } finally {
      stop.abort()
    }
    return row
  }

  async rpc(r: RpcRequest, signal: AbortSignal): Promise<RpcAnswerJson> {
    return await this.#call<RpcAnswerJson>(
      'POST',
      '/v1/rpc',
      {
        to: r.to,
        params: r.params,
        timeoutMs: r.timeoutMs,
        ...(r.method !== undefined && { method: r.method }),
      },
      signal,
    )
  }

  /** The messages of the session `cli` and of its member after inbox position `after` (`GET /v1/inbox`). */
  async inbox(after: number, limit: number, signal: AbortSignal): Promise<MessageJson[]> {
    const { messages } = await this.#call<{ messages: MessageJson[] }>(
      'GET',
      `/v1/inbox?after=${after}&limit=${limit}`,
      undefined,
      signal,
    )
    return messages
  }

  /** The rows of the session `cli`'s outbox in `states` (`GET /v1/outbox`), the newest `limit`. */
  async outbox(states: readonly string[], limit: number, signal: AbortSignal): Promise<OutboxRowJson[]> {
    const { rows } = await this.#call<{ rows: OutboxRowJson[] }>(
      'GET',
      `/v1/outbox?state=${states.join(',')}&limit=${limit}`,
      undefined,
      signal,
    )
    return rows
  }

  /**
   * The session's events across daemon restarts (`DaemonClient.follow`). It throws on a token the daemon
   * no longer knows (401), which `open()` again registers afresh.
   */
  events(o: FollowOptions): AsyncGenerator<IpcEvent> {
    return this.#sessionClient().follow(o)
  }

  /** Registers the session `cli` afresh (its token stopped working: 401), as `#call` does by itself. */
  renew(): Promise<void> {
    return this.#register()
  }

  async close(): Promise<void> {
    this.#session?.close()
    this.#admin.close()
  }

  #sessionClient(): DaemonClient {
    if (this.#session === undefined) throw new MeshError('MESH_ERR_INTERNAL', 'no daemon session')
    return this.#session
  }

  async #register(): Promise<void> {
    const registered = await this.#admin.call<RegisteredSession>('POST', '/v1/sessions', {
      mesh: this.mesh,
      sessionId: CLI_SESSION_ID,
    })
    await writePrivateFile(this.#tokenPath, registered.token + '\n')
    this.#session?.close()
    this.#session = this.#admin.as(registered.token)
  }

  /** A session request; a token the daemon does not know (401) is registered again and the call repeated. */
  async #call<T>(method: string, path: string, body: unknown, signal: AbortSignal): Promise<T> {
    try {
      return await this.#sessionClient().call<T>(method, path, body, signal)
    } catch (err) {
      if (!isMeshError(err) || err.details?.['status'] !== 401) throw err
      await this.#register()
      return await this.#sessionClient().call<T>(method, path, body, signal)
    }
  }
}

function entry(p: Record<string, unknown>): PeerEntry {
  return {
    pk: String(p['pk']),
    memberPk: String(p['memberPk']),
    role: p['role'] as PeerEntry['role'],
    sessionId: typeof p['sessionId'] === 'string' ? p['sessionId'] : null,
    displayName: typeof p['displayName'] === 'string' ? p['displayName'] : null,
    online: p['online'] === true,
    status: typeof p['status'] === 'string' ? p['status'] : null,
  }
}
