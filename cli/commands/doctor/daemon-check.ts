/**
 * Whether the home's daemon runs and answers: its pid (from `daemon.lock`) and `GET /v1/status` on its
 * socket with the admin token. No daemon is fine (commands then connect themselves): an `ok` that says
 * so. A daemon that holds the lock but does not answer is a failure; one whose mesh stopped for good
 * (revoked, not a member) is a warning naming it.
 */
import { DaemonClient } from '../../../peer-runtime/node/daemon/client.js'
import { daemonPaths, readAdminToken, runningDaemonPid } from '../../../peer-runtime/node/daemon/files.js'
import type { DaemonStatus } from '../../../peer-runtime/node/daemon/types.js'
import { fail, ok, reason, warn, within, type CheckResult } from './check.js'

const NAME = 'daemon'

/** The daemon check of `home`, its IPC call bounded by `timeoutMs`. */
export async function daemonCheck(home: string, timeoutMs: number): Promise<CheckResult> {
  const paths = daemonPaths(home)
  const pid = await runningDaemonPid(home)
  if (pid === undefined) {
    return ok(NAME, 'not running: commands connect on their own (`agentmesh daemon up` starts one)')
  }
  const restart = `\`agentmesh daemon down --home ${home}\` (or kill ${pid}), then \`agentmesh daemon up\``
  let token: string | undefined
  try {
    token = await readAdminToken(paths.token)
  } catch (err) {
    return fail(NAME, `pid ${pid} runs, but its admin token cannot be used: ${reason(err)}`, restart)
  }
  if (token === undefined) {
    return fail(NAME, `pid ${pid} holds ${paths.lock} but ${paths.token} is missing`, restart)
  }
  const client = new DaemonClient({ socketPath: paths.socket }, token)
  let status: DaemonStatus
  try {
    status = await within(timeoutMs, (signal) =>
      client.call<DaemonStatus>('GET', '/v1/status', undefined, signal),
    )
  } catch (err) {
    return fail(
      NAME,
      `pid ${pid} holds ${paths.lock} but ${paths.socket} does not answer GET /v1/status (${reason(err)})`,
      `if it is still starting, try again; else ${restart}`,
    )
  } finally {
    client.close()
  }
  const meshes = status.meshes.map((m) => `${m.mesh} ${m.state}`).join(', ')
  const detail = `pid ${status.pid} answers on ${status.socket}${meshes === '' ? '' : `; meshes: ${meshes}`}`
  const stuck = status.meshes.filter((m) => m.state === 'stopped' || m.state === 'unavailable')
  if (stuck.length > 0) {
    const why = stuck.map((m) => `${m.mesh}: ${m.lastError?.code ?? m.state}`).join(', ')
    return warn(NAME, `${detail} (${why})`, '`agentmesh daemon status` says more')
  }
  return ok(NAME, detail)
}
