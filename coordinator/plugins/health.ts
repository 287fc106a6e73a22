/**
 * `GET /health` (is the store reachable: 200 or 503) and `GET /metrics` (Prometheus text).
 */
import fp from 'fastify-plugin'

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
        const rows = await ctx.store.query<{ n: number }>('select count(*)::bigint as n from delivery')
        return rows[0]?.n ?? 0
      },
    })

    app.get('/health', async (_req, reply) => {
      const store = await ctx.store.ping().catch(() => false)
      const ok = store && !ctx.closing
      return reply.code(ok ? 200 : 503).send({
        ok,
        store: store ? 'reachable' : 'unreachable',
        driver: ctx.store.driver,
        nodeId: ctx.nodeId,
        connections: ctx.connections.size,
        closing: ctx.closing,
      })
    })

    app.get('/metrics', async (_req, reply) => {
      const text = await ctx.metrics.registry.metrics()
      return reply.type(ctx.metrics.registry.contentType).send(text)
    })
  },
  { name: 'agentmesh-health' },
)
