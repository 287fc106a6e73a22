/**
 * The coordinator's Prometheus metrics, on a registry of its own (several coordinators can share a
 * process in tests). Gauges that describe state are computed when scraped.
 */
import { Counter, Gauge, Registry } from 'prom-client'

/**
 * A counter by one label, counted in a plain map and handed to prom-client when scraped. Every relayed
 * DM bumps five of these; prom-client's `inc` hashes and validates its label object each time, which
 * was several microseconds of every message's CPU on the coordinator's one thread (bench `relay`).
 */
export interface Tally<L extends string> {
  inc(labels: Record<L, string>): void
}

/** A counter without labels. */
export interface PlainTally {
  inc(): void
}

export interface CoordinatorMetrics {
  readonly registry: Registry
  readonly framesIn: Tally<'type'>
  readonly framesOut: Tally<'type'>
  readonly rejects: Tally<'code'>
  readonly sends: Tally<'path'>
  readonly deliveries: Tally<'status'>
  readonly redeliveries: PlainTally
  /** New send ids checked for duplicates, by where: `store` (a lookup) or `memory` (flagged first). */
  readonly dedupeChecks: Tally<'where'>
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
  const framesIn = tally(registry, 'agentmesh_frames_in_total', 'Frames received, by type', 'type')
  const framesOut = tally(registry, 'agentmesh_frames_out_total', 'Frames sent, by type', 'type')
  const rejects = tally(registry, 'agentmesh_rejects_total', 'Requests refused, by error code', 'code')
  const sends = tally(
    registry,
    'agentmesh_sends_total',
    'Accepted sends by path: fast (acked by the receiver within ackWaitMs, never stored) or queued',
    'path',
  )
  const deliveries = tally(
    registry,
    'agentmesh_deliveries_total',
    'Deliveries acked by receivers, by ack status',
    'status',
  )
  const dedupeChecks = tally(
    registry,
    'agentmesh_dedupe_checks_total',
    'New send ids checked for duplicates: in the store, or in memory only (the sender flagged its first try)',
    'where',
  )
  let redelivered = 0
  new Counter({
    name: 'agentmesh_redeliveries_total',
    help: 'Pushes of a delivery that had been pushed before (claim expired or connection lost)',
    registers: [registry],
    collect() {
      this.reset()
      this.inc(redelivered)
    },
  })
  const redeliveries: PlainTally = {
    inc: () => void redelivered++,
  }
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
    dedupeChecks,
    observe(s) {
      sources = s
    },
  }
}

/** A `Tally` registered as a prom-client counter that reads the tally's map when scraped. */
function tally<L extends string>(registry: Registry, name: string, help: string, label: L): Tally<L> {
  const counts = new Map<string, number>()
  new Counter({
    name,
    help,
    labelNames: [label],
    registers: [registry],
    collect() {
      this.reset()
      for (const [value, n] of counts) this.inc({ [label]: value } as Record<L, string>, n)
    },
  })
  return {
    inc(labels) {
      const value = labels[label]
      counts.set(value, (counts.get(value) ?? 0) + 1)
    },
  }
}
