/**
 * The WebSocket control plane's front door: `/ws` upgrades, the challenge, the hello for the three
 * roles with version negotiation, the roster check, one live presence per key (an older connection is
 * closed 4003 naming the newer `instanceId`), and the hooks other plugins run when a presence comes and
 * goes.
 */
import type { IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import fp from 'fastify-plugin'
import { WebSocketServer } from 'ws'
import {
  CLOSE,
  MAX_FRAME_BYTES,
  MAX_PAYLOAD_BYTES,
  MAX_ENVELOPE_BYTES,
  MAX_WS_PAYLOAD_BYTES,
  MeshError,
  negotiateVersion,
  newChallengeNonce,
  toHex,
  ulidFactory,
  verifyHello,
  type FrameOf,
  type RateBucket,
} from '../../protocol/index.js'
import { Connection } from '../connection.js'
import type { CoordinatorContext } from '../context.js'
import type { RateLimits } from '../options.js'

/** Features this coordinator offers in `hello_ack`. */
export const COORDINATOR_FEATURES = ['fast-path', 'group', 'topic', 'signaling'] as const

export const authPlugin = fp(
  async (app) => {
    const ctx = app.mesh
    const nextId = ulidFactory(() => ctx.clock.now())
    const wss = new WebSocketServer({ noServer: true, maxPayload: MAX_WS_PAYLOAD_BYTES })

    const onUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
      const path = (req.url ?? '').split('?')[0]
      if (path !== '/ws' || ctx.closing) {
        socket.end(
          ctx.closing ? 'HTTP/1.1 503 Service Unavailable\r\n\r\n' : 'HTTP/1.1 404 Not Found\r\n\r\n',
        )
        return
      }
      wss.handleUpgrade(req, socket, head, (ws) => {
        const conn = new Connection(ws, ctx, newChallengeNonce())
        ctx.pending.add(conn)
        conn.send({
          t: 'challenge',
          nonce: conn.nonce,
          coordinatorPk: ctx.identity.publicKey,
          nodeId: ctx.nodeId,
        })
        void conn.ended.then(() => onClosed(ctx, conn))
      })
    }
    app.server.on('upgrade', onUpgrade)
    app.addHook('onClose', async () => {
      app.server.off('upgrade', onUpgrade)
      wss.close()
    })

    ctx.on('hello', async (conn, frame) => {
      if (conn.state !== 'challenged') {
        throw new MeshError('MESH_ERR_MALFORMED_FRAME', 'a connection says hello once')
      }
      await hello(ctx, conn, frame, nextId)
    })
  },
  { name: 'agentmesh-auth' },
)

async function hello(
  ctx: CoordinatorContext,
  conn: Connection,
  frame: FrameOf<'hello'>,
  nextId: () => string,
): Promise<void> {
  const reqId = frame.reqId
  let proto: number
  try {
    proto = negotiateVersion(frame.proto)
  } catch (err) {
    conn.fail(err, CLOSE.UNSUPPORTED_VERSION, reqId)
    return
  }
  let verified
  try {
    verified = verifyHello(frame, { challengeNonce: conn.nonce, now: ctx.clock.now() })
    const state = await ctx.meshes.require(verified.mesh)
    const memberHex = toHex(verified.memberPk)
    const pkHex = toHex(verified.pk)
    if (state.revoked.has(memberHex) || state.revoked.has(pkHex)) {
      conn.fail(new MeshError('MESH_ERR_REVOKED', 'this key or its member was revoked'), CLOSE.REVOKED, reqId)
      return
    }
    if (!state.isMember(verified.memberPk)) {
      throw new MeshError('MESH_ERR_UNKNOWN_KEY', 'the member behind this hello is not in the mesh roster', {
        details: { key: memberHex },
      })
    }
  } catch (err) {
    conn.fail(err, CLOSE.POLICY, reqId)
    return
  }
  if (conn.state === 'closed') return
  ctx.pending.delete(conn)
  const presence = {
    mesh: verified.mesh,
    pk: verified.pk,
    pkHex: toHex(verified.pk),
    memberPk: verified.memberPk,
    memberHex: toHex(verified.memberPk),
    role: verified.role,
    instanceId: verified.instanceId,
    presenceId: nextId(),
    capabilities: verified.capabilities,
    capabilityBytes: frame.capabilities,
    ...(verified.sessionId !== undefined && { sessionId: verified.sessionId }),
    ...(frame.attestation !== undefined && { attestation: frame.attestation }),
  }
  conn.accept(presence)
  const previous = ctx.connections.set(conn)
  if (previous !== undefined && previous !== conn) {
    previous.fail(
      new MeshError('MESH_ERR_SESSION_REPLACED', `replaced by instance ${presence.instanceId}`, {
        details: { instanceId: presence.instanceId },
      }),
      CLOSE.REPLACED,
    )
    // The older connection's claims are released before this one drains (no push goes to both).
    await previous.settled
  }
  let reattached = previous !== undefined
  for (const attach of ctx.hooks.attach) reattached = (await attach(conn)) || reattached
  const state = await ctx.meshes.require(presence.mesh)
  conn.send({
    t: 'hello_ack',
    ...(reqId !== undefined && { reqId }),
    proto,
    features: [...COORDINATOR_FEATURES],
    stateVersion: state.version,
    presenceId: presence.presenceId,
    nodeId: ctx.nodeId,
    leaseMs: ctx.limits.leaseMs,
    limits: {
      maxFrameBytes: MAX_FRAME_BYTES,
      maxEnvelopeBytes: MAX_ENVELOPE_BYTES,
      maxPayloadBytes: MAX_PAYLOAD_BYTES,
      ackWaitMs: ctx.limits.ackWaitMs,
      pushWindow: ctx.limits.pushWindow,
      ...announcedRate(ctx.limits.rate),
    },
  })
  conn.helloAcked = true
  ctx.log.info(
    { mesh: presence.mesh, pk: presence.pkHex.slice(0, 16), role: presence.role, reattached },
    'presence attached',
  )
  for (const ready of ctx.hooks.ready) await ready(conn, { reattached })
}

/**
 * The member bucket as `hello_ack.limits.rate` carries it (PROTOCOL.md §6): whole numbers rounded down,
 * so a peer pacing by them never outruns the bucket; nothing when a steady rate rounds to zero (a peer
 * would never send) or a value is not finite.
 */
export function announcedRate(rate: RateLimits): { rate?: { member: RateBucket } } {
  const member = {
    messageBurst: Math.floor(rate.messageBurst),
    messagesPerSecond: Math.floor(rate.messagesPerSecond),
    byteBurst: Math.floor(rate.byteBurst),
    bytesPerSecond: Math.floor(rate.bytesPerSecond),
  }
  const values = Object.values(member)
  if (!values.every((v) => Number.isSafeInteger(v) && v >= 1)) return {}
  return { rate: { member } }
}

async function onClosed(ctx: CoordinatorContext, conn: Connection): Promise<void> {
  ctx.pending.delete(conn)
  try {
    if (conn.presence === undefined) return
    const current = ctx.connections.delete(conn)
    for (const closed of ctx.hooks.closed) {
      try {
        await closed(conn, { current })
      } catch (err) {
        ctx.log.warn({ err, conn: conn.id }, 'close hook failed')
      }
    }
  } finally {
    conn.markSettled()
  }
}
