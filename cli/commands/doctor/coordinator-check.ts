/**
 * The coordinator checks of `agentmesh doctor`: one probe per coordinator (`GET /health` and the first
 * frame of `/ws`, each bounded in time), read three ways: is it reachable, does it present the key this
 * home pinned for the mesh (the same comparison the runtime makes on every challenge before it says
 * hello, peer-runtime/connection.ts), and how far apart are the two clocks. The probe never says hello:
 * a hello with the member key would displace the member's own presence (a running daemon or `listen`).
 */
import { WebSocket } from 'ws'
import { decodeFrame } from '../../../protocol/frames.js'
import { toHex } from '../../../protocol/encoding.js'
import { MAX_WS_PAYLOAD_BYTES } from '../../../protocol/limits.js'
import { fail, ok, reason, seconds, warn, within, type CheckResult } from './check.js'
import { clockCheck, type ClockSample } from './clock-check.js'

/** What one probe of a coordinator found. */
export interface CoordinatorProbe {
  /** Its HTTP base URL and its WebSocket URL. */
  url: string
  wsUrl: string
  health: HealthAnswer | { error: string }
  challenge: { coordinatorPk: string; nodeId: string } | { error: string }
}

interface HealthAnswer {
  status: number
  body: Record<string, unknown> | undefined
  clock: ClockSample | undefined
  rttMs: number
}

/** Probes the coordinator at `urls` (both within `timeoutMs`, in parallel). */
export async function probeCoordinator(
  urls: { http: string; ws: string },
  timeoutMs: number,
): Promise<CoordinatorProbe> {
  const [health, challenge] = await Promise.all([
    within(timeoutMs, (signal) => fetchHealth(urls.http, signal)).catch((err: unknown) => ({
      error: reason(err),
    })),
    within(timeoutMs, (signal) => readChallenge(urls.ws, signal)).catch((err: unknown) => ({
      error: reason(err),
    })),
  ])
  return { url: urls.http, wsUrl: urls.ws, health, challenge }
}

/** What a check says about a probe; `where` names the mesh (`team`) or the URL the checks are about. */
export interface ProbeChecks {
  where: string
  /** The mesh whose `mesh.json` names this coordinator, when there is one (for the fix). */
  mesh?: string
  /** The key the mesh pinned (hex): then the key check runs too. */
  pinnedPk?: string
}

/** The reachability, key (when pinned) and clock checks of one probe. */
export function coordinatorChecks(probe: CoordinatorProbe, o: ProbeChecks): CheckResult[] {
  const out = [reachability(probe, o)]
  if (o.pinnedPk !== undefined) out.push(keyCheck(probe, o.pinnedPk, o))
  out.push(clockOf(probe, o.where))
  return out
}

function reachability(probe: CoordinatorProbe, o: ProbeChecks): CheckResult {
  const name = `coordinator reachable (${o.where})`
  const { health, challenge } = probe
  const retry =
    o.mesh === undefined
      ? 'check the URL, and that the coordinator runs there (`agentmesh coordinator up`)'
      : `start the coordinator (\`agentmesh coordinator up\` where it runs) or check its address: ` +
        `meshes/${o.mesh}/mesh.json names ${probe.url}; ` +
        `\`agentmesh doctor --mesh ${o.mesh} --coordinator <url>\` tries another`
  if ('error' in health) {
    return fail(name, `no answer from ${probe.url} (${health.error})`, retry)
  }
  if (health.body === undefined || typeof health.body['ok'] !== 'boolean') {
    return fail(
      name,
      `${probe.url} answers GET /health with ${health.status}, not as an agentmesh coordinator`,
      retry,
    )
  }
  if (health.status !== 200) {
    const store = String(health.body['store'])
    const why = health.body['closing'] === true ? 'it is shutting down' : `its store is ${store}`
    return fail(
      name,
      `${probe.url} answers but is not ready (${health.status}: ${why})`,
      "look at the coordinator's log and its database",
    )
  }
  if ('error' in challenge) {
    return fail(
      name,
      `${probe.url} answers over HTTP but its WebSocket ${probe.wsUrl} does not (${challenge.error})`,
      'a proxy in front of the coordinator must pass WebSocket upgrades on /ws',
    )
  }
  return ok(name, `${probe.url} answers (node ${challenge.nodeId}, ${seconds(health.rttMs)})`)
}

function keyCheck(probe: CoordinatorProbe, pinned: string, o: ProbeChecks): CheckResult {
  const name = `coordinator key (${o.where})`
  const { challenge } = probe
  if ('error' in challenge) {
    return warn(name, `not checked: ${probe.wsUrl} sent no challenge (${challenge.error})`)
  }
  if (challenge.coordinatorPk === pinned) {
    return ok(name, `the coordinator presents the pinned key ${pinned.slice(0, 16)}…`)
  }
  const mesh = o.mesh ?? o.where
  return fail(
    name,
    `the coordinator at ${probe.wsUrl} presents key ${challenge.coordinatorPk}, but this home pinned ` +
      `${pinned} for mesh ${mesh}: connections refuse it (MESH_ERR_COORDINATOR_MISMATCH)`,
    `if this is another server, point the home back at the right one (meshes/${mesh}/mesh.json); if the ` +
      `coordinator's key was replaced on purpose, join again with a new invite: ` +
      `\`agentmesh join <token> --force\``,
  )
}

function clockOf(probe: CoordinatorProbe, where: string): CheckResult {
  const name = `clock skew (${where})`
  if ('error' in probe.health) return warn(name, 'not checked: the coordinator did not answer')
  if (typeof probe.health.body?.['ok'] !== 'boolean') {
    return warn(name, 'not checked: what answers is not an agentmesh coordinator')
  }
  if (probe.health.clock === undefined) {
    return warn(name, 'not checked: the coordinator tells neither its time nor a Date header')
  }
  return clockCheck(name, probe.health.clock)
}

async function fetchHealth(http: string, signal: AbortSignal): Promise<HealthAnswer> {
  const sentAt = Date.now()
  const res = await fetch(`${http}/health`, { signal, headers: { accept: 'application/json' } })
  const receivedAt = Date.now()
  let body: Record<string, unknown> | undefined
  try {
    const parsed: unknown = await res.json()
    if (typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed)) {
      body = parsed as Record<string, unknown>
    }
  } catch {
    body = undefined
  }
  return {
    status: res.status,
    body,
    clock: clockSample(body, res, sentAt, receivedAt),
    rttMs: receivedAt - sentAt,
  }
}

/** The coordinator's `time` (ms), else its `Date` header (whole seconds: 1 s less precise). */
function clockSample(
  body: Record<string, unknown> | undefined,
  res: Response,
  sentAt: number,
  receivedAt: number,
): ClockSample | undefined {
  const time = body?.['time']
  if (typeof time === 'number' && Number.isFinite(time)) {
    return { coordinatorTime: time, sentAt, receivedAt, resolutionMs: 0 }
  }
  const date = Date.parse(res.headers.get('date') ?? '')
  if (Number.isNaN(date)) return undefined
  return { coordinatorTime: date + 500, sentAt, receivedAt, resolutionMs: 500 }
}

/** Opens `/ws`, reads the coordinator's challenge, and closes without a hello. */
function readChallenge(
  wsUrl: string,
  signal: AbortSignal,
): Promise<{ coordinatorPk: string; nodeId: string }> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(wsUrl, { maxPayload: MAX_WS_PAYLOAD_BYTES, perMessageDeflate: false })
    let settled = false
    const settle = (err: Error | undefined, value?: { coordinatorPk: string; nodeId: string }): void => {
      if (settled) return
      settled = true
      signal.removeEventListener('abort', onAbort)
      if (socket.readyState === WebSocket.OPEN) {
        socket.close(1000, 'doctor')
        // The coordinator answers a close at once; one that does not must not hold the process.
        setTimeout(() => socket.terminate(), 1_000).unref()
      } else socket.terminate()
      if (err === undefined) resolve(value!)
      else reject(err)
    }
    const onAbort = (): void => settle(new Error('aborted'))
    signal.addEventListener('abort', onAbort, { once: true })
    socket.on('message', (data: Buffer) => {
      try {
        const frame = decodeFrame(new Uint8Array(data))
        if (frame.t !== 'challenge') {
          settle(new Error(`its first frame is ${frame.t}, not a challenge`))
          return
        }
        settle(undefined, { coordinatorPk: toHex(frame.coordinatorPk), nodeId: frame.nodeId })
      } catch (err) {
        settle(new Error(`its first frame does not decode (${reason(err)})`))
      }
    })
    socket.on('unexpected-response', (_req, res) =>
      settle(new Error(`the upgrade got HTTP ${res.statusCode}`)),
    )
    socket.on('error', (err) => settle(err))
    socket.on('close', (code) => settle(new Error(`closed ${code} before its challenge`)))
  })
}
