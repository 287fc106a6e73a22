/**
 * How a one-shot command reaches a mesh: through the home's running daemon (its IPC, as the daemon
 * session `cli`), or, when none runs, with a connection of its own (as this home's session `cli`). Both
 * give the same answers (peers, sends, outbox rows), so a command is written once; it says on stderr
 * which path it took.
 */
import type { DeliveryJson } from '../../../peer-runtime/node/daemon/ipc-json.js'
import type { RpcAnswerJson } from '../../../peer-runtime/node/daemon/ipc-rpc.js'
import type { PeerEntry } from '../peer/resolve.js'

/** The session id one-shot commands use, on either path: a session presence never displaces a `listen`. */
export const CLI_SESSION_ID = 'cli'

/** An rpc request as `rpc` makes it (the same fields as the daemon's `POST /v1/rpc`). */
export interface RpcRequest {
  /** The callee's key (hex). */
  to: string
  method?: string
  params: unknown
  timeoutMs: number
}

/** One path to the mesh; `close()` it in a `finally`. */
export interface MeshLink {
  /** `daemon` or `direct`. */
  readonly via: 'daemon' | 'direct'
  readonly mesh: string
  /** The mesh's verified peers; offline ones too when `offline`. */
  peers(o: { offline: boolean; signal: AbortSignal }): Promise<PeerEntry[]>
  /** Seals `{text}` to `to` (a key) and stores it in the outbox; resolves with its id. */
  send(to: string, text: string, signal: AbortSignal): Promise<string>
  /** Seals `{text}` to group `@name` or the whole mesh `*` (the direct path only; see `DaemonLink`). */
  sendGroup(target: string, text: string, signal: AbortSignal): Promise<string>
  /** The outbox row of message `id` this session sent, or undefined. */
  status(id: string, signal: AbortSignal): Promise<DeliveryJson | undefined>
  /**
   * Resolves with the row of `id` once `until(row)` holds; with the last row seen (or undefined) when
   * `signal` aborts first.
   */
  watch(
    id: string,
    until: (row: DeliveryJson) => boolean,
    signal: AbortSignal,
  ): Promise<DeliveryJson | undefined>
  /**
   * Calls `r.method` on `r.to` (peer-runtime/rpc.ts) and resolves with its answer; rejects with the
   * callee's error (its code, `details.remote: true`) or `MESH_ERR_RPC_TIMEOUT`.
   */
  rpc(r: RpcRequest, signal: AbortSignal): Promise<RpcAnswerJson>
  close(): Promise<void>
}

/** Whether `target` names a group (`@name`) or the whole mesh (`*`). */
export function isGroupTarget(target: string): boolean {
  return target === '*' || target.startsWith('@')
}
