import { MeshError } from '../../../protocol/errors.js'
import { DaemonClient } from '../../../peer-runtime/node/daemon/client.js'
import { daemonPaths, readAdminToken, runningDaemonPid } from '../../../peer-runtime/node/daemon/files.js'

/** The home's running daemon with an admin client on its socket, or undefined when none runs. */
export async function connectDaemon(
  home: string,
): Promise<{ pid: number; client: DaemonClient } | undefined> {
  const pid = await runningDaemonPid(home)
  if (pid === undefined) return undefined
  const paths = daemonPaths(home)
  const token = await readAdminToken(paths.token)
  if (token === undefined) {
    throw new MeshError(
      'MESH_ERR_DAEMON_NOT_RUNNING',
      `pid ${pid} holds ${paths.lock} but ${paths.token} is missing`,
    )
  }
  const client = new DaemonClient({ socketPath: paths.socket }, token)
  try {
    await client.request('GET', '/v1/status', { signal: AbortSignal.timeout(5_000) })
  } catch (cause) {
    client.close()
    throw new MeshError(
      'MESH_ERR_DAEMON_NOT_RUNNING',
      `pid ${pid} holds ${paths.lock} but nothing answers on ${paths.socket} (still starting?)`,
      { details: { pid }, cause },
    )
  }
  return { pid, client }
}
