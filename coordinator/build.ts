/**
 * `buildCoordinator(opts)`: the Fastify app of named plugins over a store, not yet listening. The
 * caller listens (`app.listen`) and closes (`coordinator.close()`): sockets get 1001, queued commits are
 * flushed, the node's presences are leased, and the store is closed when the coordinator owns it.
 */
import Fastify, { type FastifyInstance } from 'fastify'
import pino from 'pino'
import {
  CLOSE,
  MAX_WS_PAYLOAD_BYTES,
  randomBytes,
  systemClock,
  toHex,
  type Frame,
} from '../protocol/index.js'
import type { FrameHandler } from './connection.js'
import { ConnectionRegistry, type CoordinatorContext } from './context.js'
import { installHttp } from './http.js'
import { MeshStates } from './mesh-state.js'
import { createMetrics } from './metrics.js'
import { resolveLimits, type CoordinatorOptions } from './options.js'
import { acceptPlugin } from './plugins/accept.js'
import { authPlugin } from './plugins/auth.js'
import { deliveryPlugin } from './plugins/delivery.js'
import { fanoutPlugin } from './plugins/fanout.js'
import { healthPlugin } from './plugins/health.js'
import { httpSendPlugin } from './plugins/http-send.js'
import { meshesPlugin } from './plugins/meshes.js'
import { presencePlugin } from './plugins/presence.js'
import { revocationPlugin } from './plugins/revocation.js'
import { signalingPlugin } from './plugins/signaling.js'
import { topicsPlugin } from './plugins/topics.js'

export interface Coordinator {
  readonly app: FastifyInstance
  readonly context: CoordinatorContext
  /** Listens on `host:port` (port 0 picks one) and resolves to the base URL, e.g. `http://127.0.0.1:4567`. */
  listen(o?: { port?: number; host?: string }): Promise<string>
  /** Runs every periodic sweep now (tests that drive a ManualClock call it after advancing). */
  sweep(): Promise<void>
  /** Graceful shutdown; idempotent. */
  close(): Promise<void>
}

export async function buildCoordinator(opts: CoordinatorOptions): Promise<Coordinator> {
  const clock = opts.clock ?? systemClock
  const log =
    opts.logger === false || opts.logger === undefined
      ? pino({ level: 'silent' })
      : pino({ level: opts.logger === true ? 'info' : (opts.logger.level ?? 'info') })
  const app = Fastify({
    loggerInstance: log,
    bodyLimit: MAX_WS_PAYLOAD_BYTES,
  }) as unknown as FastifyInstance
  const handlers: CoordinatorContext['handlers'] = new Map()
  const ctx = {
    store: opts.store,
    clock,
    limits: resolveLimits(opts.limits),
    identity: opts.identity,
    nodeId: opts.nodeId ?? `node-${toHex(randomBytes(6))}`,
    log,
    metrics: createMetrics(),
    connections: new ConnectionRegistry(),
    pending: new Set(),
    meshes: new MeshStates(opts.store, opts.identity),
    handlers,
    hooks: { attach: [], ready: [], closed: [] },
    sweeps: [],
    adminToken: opts.adminToken,
    openRegistration: opts.openRegistration ?? false,
    closing: false,
    on(t: Frame['t'], handler: FrameHandler) {
      handlers.set(t, handler)
    },
  } as unknown as CoordinatorContext
  app.decorate('mesh', ctx)
  installHttp(app)
  await app.register(authPlugin)
  await app.register(presencePlugin)
  await app.register(deliveryPlugin)
  await app.register(acceptPlugin)
  await app.register(fanoutPlugin)
  await app.register(httpSendPlugin)
  await app.register(meshesPlugin)
  await app.register(revocationPlugin)
  await app.register(topicsPlugin)
  await app.register(signalingPlugin)
  await app.register(healthPlugin)
  await app.ready()

  let closing: Promise<void> | undefined
  return {
    app,
    context: ctx,
    async listen(o = {}) {
      const host = o.host ?? '127.0.0.1'
      await app.listen({ port: o.port ?? 0, host })
      const address = app.server.address()
      const port = typeof address === 'object' && address !== null ? address.port : o.port
      return `http://${host.includes(':') ? `[${host}]` : host}:${port}`
    },
    async sweep() {
      for (const s of ctx.sweeps) await s()
    },
    close() {
      closing ??= (async () => {
        ctx.closing = true
        for (const conn of [...ctx.pending]) conn.close(CLOSE.GOING_AWAY, 'coordinator shutting down')
        const live = [...ctx.connections.all()]
        for (const conn of live) conn.close(CLOSE.GOING_AWAY, 'coordinator shutting down')
        // Close hooks lease each presence and release its claims before the store goes away.
        await Promise.all(live.map((c) => c.settled))
        await app.close()
        if (opts.ownsStore === true) await opts.store.close()
      })()
      return closing
    },
  }
}
