/**
 * The outbox `outbox list` and `outbox requeue` work on: the session `cli`'s, where `agentmesh send` and
 * `agentmesh rpc` leave their rows (an agent's own session reads its outbox with `GET /v1/outbox`). On
 * disk it is that session's store; while the daemon runs, the daemon holds it.
 */
import { access } from 'node:fs/promises'
import type { Identity } from '../../../protocol/keys.js'
import { loadOrCreateSessionKey, sessionKeyPath, storePath } from '../../../peer-runtime/node/home.js'
import type { SqliteRuntimeStore } from '../../../peer-runtime/node/sqlite-store.js'
import { openDiskStore } from '../link/disk-store.js'
import { CLI_SESSION_ID } from '../link/mesh-link.js'

/** The session `cli`'s key and store on disk, or undefined when it never ran on this home. */
export async function openCliOutbox(
  home: string,
  mesh: string,
  onWait: (pid: number) => void,
): Promise<{ identity: Identity; store: SqliteRuntimeStore } | undefined> {
  const hasKey = await access(sessionKeyPath(home, mesh, CLI_SESSION_ID)).then(
    () => true,
    () => false,
  )
  if (!hasKey) return undefined
  const identity = await loadOrCreateSessionKey(home, mesh, CLI_SESSION_ID)
  const store = await openDiskStore(storePath(home, mesh, identity.publicKey), { onWait })
  return store === undefined ? undefined : { identity, store }
}
