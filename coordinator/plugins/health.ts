/**
 * `GET /health` (is the store reachable: 200 or 503; `time` is the coordinator's clock in Unix ms, the one
 * that judges attestations, so `agentmesh doctor` can measure a peer's skew) and `GET /metrics`
 * (Prometheus text).
 */
import fp from 'fastify-plugin'
import type { CoordinatorContext } from '../context.js'

/** A store that has not answered `select 1` by then is reported unreachable (a probe must not hang). */
export const HEALTH_PING_TIMEOUT_MS = 2_000

export const healthPlugin = fp(
  async (app) => {
    const ctx = app.mesh
    ctx.metrics.observe({
      connections: () => ctx.connections.size,
      presencesByRole() {
        const out: Record<string, number> = { 'control-plane': 0, session: 0, service: 0 }
        for (const conn of ctx.connections.all()) {
          const role = conn.presence?.role
          if (role !== undefined) out[role] = (out[role] ?? 0) + 1
        }
        return out
      },
      async queueDepth() {
        // A store outage must not take /metrics down with it (that is when it is read most): NaN says unknown.
        try {
          const rows = await ctx.store.query<{ n: number }>('select count(*)::bigint as n from delivery')
          return rows[0]?.n ?? 0
        } catch (err) {
          ctx.log.warn({ err }, 'queue depth unavailable')
          return Number.NaN
        }
      },
    })

    app.get('/health', async (_req, reply) => {
      const store = await pingWithin(ctx, HEALTH_PING_TIMEOUT_MS)
      const ok = store && !ctx.closing
      return reply.code(ok ? 200 : 503).send({
        ok,
        store: store ? 'reachable' : 'unreachable',
        driver: ctx.store.driver,
        nodeId: ctx.nodeId,
        connections: ctx.connections.size,
        closing: ctx.closing,
        time: ctx.clock.now(),
      })
    })

    app.get('/metrics', async (_req, reply) => {
      const text = await ctx.metrics.registry.metrics()
      return reply.type(ctx.metrics.registry.contentType).send(text)
    })
  },
  { name: 'agentmesh-health' },
)

/** The store's ping, false when it fails or does not answer within `ms`. */
function pingWithin(ctx: CoordinatorContext, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const timer = ctx.clock.setTimeout(() => resolve(false), ms)
    const settle = (ok: boolean): void => {
      timer.cancel()
      resolve(ok)
    }
    ctx.store.ping().then(settle, () => settle(false))
  })
}
