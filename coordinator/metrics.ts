/**
 * The coordinator's Prometheus metrics, on a registry of its own (several coordinators can share a
 * process in tests). Gauges that describe state are computed when scraped.
 */
import { Counter, Gauge, Registry } from 'prom-client'

export interface CoordinatorMetrics {
  readonly registry: Registry
  readonly framesIn: Counter<'type'>
  readonly framesOut: Counter<'type'>
  readonly rejects: Counter<'code'>
  readonly sends: Counter<'path'>
  readonly deliveries: Counter<'status'>
  readonly redeliveries: Counter
  /** Sets the functions the scrape-time gauges read. */
  observe(sources: MetricSources): void
}

export interface MetricSources {
  connections(): number
  presencesByRole(): Record<string, number>
  queueDepth(): Promise<number>
}

export function createMetrics(): CoordinatorMetrics {
  const registry = new Registry()
  let sources: MetricSources | undefined
  const framesIn = new Counter({
    name: 'agentmesh_frames_in_total',
    help: 'Frames received, by type',
    labelNames: ['type'] as const,
    registers: [registry],
  })
  const framesOut = new Counter({
    name: 'agentmesh_frames_out_total',
    help: 'Frames sent, by type',
    labelNames: ['type'] as const,
    registers: [registry],
  })
  const rejects = new Counter({
    name: 'agentmesh_rejects_total',
    help: 'Requests refused, by error code',
    labelNames: ['code'] as const,
    registers: [registry],
  })
  const sends = new Counter({
    name: 'agentmesh_sends_total',
    help: 'Accepted sends by path: fast (acked by the receiver within ackWaitMs, never stored) or queued',
    labelNames: ['path'] as const,
    registers: [registry],
  })
  const deliveries = new Counter({
    name: 'agentmesh_deliveries_total',
    help: 'Deliveries acked by receivers, by ack status',
    labelNames: ['status'] as const,
    registers: [registry],
  })
  const redeliveries = new Counter({
    name: 'agentmesh_redeliveries_total',
    help: 'Pushes of a delivery that had been pushed before (claim expired or connection lost)',
    registers: [registry],
  })
  new Gauge({
    name: 'agentmesh_connections',
    help: 'Open, hello-accepted WebSocket connections on this node',
    registers: [registry],
    collect() {
      this.set(sources?.connections() ?? 0)
    },
  })
  new Gauge({
    name: 'agentmesh_presences',
    help: 'Live presences on this node, by role',
    labelNames: ['role'] as const,
    registers: [registry],
    collect() {
      this.reset()
      for (const [role, n] of Object.entries(sources?.presencesByRole() ?? {})) this.set({ role }, n)
    },
  })
  new Gauge({
    name: 'agentmesh_queue_depth',
    help: 'Deliveries stored and not yet acked (all nodes)',
    registers: [registry],
    async collect() {
      this.set((await sources?.queueDepth()) ?? 0)
    },
  })
  return {
    registry,
    framesIn,
    framesOut,
    rejects,
    sends,
    deliveries,
    redeliveries,
    observe(s) {
      sources = s
    },
  }
}
