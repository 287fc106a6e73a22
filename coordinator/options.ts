/**
 * Every number the coordinator runs by (DESIGN.md §6) is an option; tests inject their own, and a clock.
 */
import type { Clock, Identity } from '../protocol/index.js'
import type { Store } from './store/types.js'

/** Token-bucket limits for one member: a burst and a steady rate, for messages and for bytes. */
export interface RateLimits {
  messageBurst: number
  messagesPerSecond: number
  byteBurst: number
  bytesPerSecond: number
}

/** The intervals, windows and quotas of DESIGN.md §6. */
export interface CoordinatorLimits {
  /** A socket without a valid hello by then is closed 1008. */
  helloDeadlineMs: number
  /** App-level ping interval, and how long without any frame before the socket is terminated. */
  pingIntervalMs: number
  staleAfterMs: number
  /** How long a closed presence may reattach silently. */
  leaseMs: number
  /** Node heartbeat, and after how long a silent node's presences get a fresh lease. */
  heartbeatMs: number
  nodeStaleMs: number
  /** How long the fast path waits for the receiver's ack before committing to the queue. */
  ackWaitMs: number
  /** A push's claim lease, and how often expired claims and leases are swept. */
  claimLeaseMs: number
  sweepMs: number
  /** Unacked deliveries (count and bytes) one presence may hold. */
  pushWindow: number
  pushWindowBytes: number
  /** Buffered output above which a consumer is closed 1013. */
  slowConsumerBytes: number
  /** How long a queued message is kept; the per-recipient quota. */
  queueTtlMs: number
  queueMaxMessages: number
  queueMaxBytes: number
  /** How long the coordinator remembers accepted ids. */
  dedupeTtlMs: number
  /** The in-memory window of fast-path (never stored) ids. */
  fastPathDedupeEntries: number
  rate: RateLimits
  /** Signaling: offers per presence per minute, candidates per signaling id. */
  offersPerMinute: number
  candidatesPerSignal: number
  /** Group commit: the most rows one INSERT carries. */
  commitBatchRows: number
}

export const DEFAULT_LIMITS: CoordinatorLimits = {
  helloDeadlineMs: 10_000,
  pingIntervalMs: 30_000,
  staleAfterMs: 75_000,
  leaseMs: 90_000,
  heartbeatMs: 10_000,
  nodeStaleMs: 30_000,
  ackWaitMs: 500,
  claimLeaseMs: 30_000,
  sweepMs: 5_000,
  pushWindow: 256,
  pushWindowBytes: 4 * 1024 * 1024,
  slowConsumerBytes: 8 * 1024 * 1024,
  queueTtlMs: 7 * 24 * 60 * 60 * 1000,
  queueMaxMessages: 10_000,
  queueMaxBytes: 256 * 1024 * 1024,
  dedupeTtlMs: 7 * 24 * 60 * 60 * 1000,
  fastPathDedupeEntries: 200_000,
  rate: {
    messageBurst: 200,
    messagesPerSecond: 100,
    byteBurst: 8 * 1024 * 1024,
    bytesPerSecond: 8 * 1024 * 1024,
  },
  offersPerMinute: 10,
  candidatesPerSignal: 200,
  commitBatchRows: 1000,
}

/** Options of `buildCoordinator`. */
export interface CoordinatorOptions {
  /** An open store (see `openStore`); the coordinator does not close a store it was handed unless `ownsStore`. */
  store: Store
  /** Close the store when the coordinator closes. */
  ownsStore?: boolean
  /** The coordinator's signing key (system events, challenges). */
  identity: Identity
  /** Bearer token for admin HTTP routes (mesh creation); absent: only open registration creates meshes. */
  adminToken?: string
  /** Anyone may create a mesh (a self-hosted dev setup). */
  openRegistration?: boolean
  /** This node's id (default: random per start). */
  nodeId?: string
  clock?: Clock
  limits?: Partial<Omit<CoordinatorLimits, 'rate'>> & { rate?: Partial<RateLimits> }
  /** pino logger options, or false for none (tests). */
  logger?: boolean | { level?: string }
  /** The public URL invites should name (informational: the coordinator does not check invites' URL). */
  publicUrl?: string
}

/** Merges caller limits over the defaults. */
export function resolveLimits(partial: CoordinatorOptions['limits'] = {}): CoordinatorLimits {
  const { rate, ...rest } = partial
  const defined = Object.fromEntries(Object.entries(rest).filter(([, v]) => v !== undefined))
  const definedRate = Object.fromEntries(Object.entries(rate ?? {}).filter(([, v]) => v !== undefined))
  return { ...DEFAULT_LIMITS, ...defined, rate: { ...DEFAULT_LIMITS.rate, ...definedRate } }
}
