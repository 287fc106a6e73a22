/**
 * Revocation cascades from a member to its sessions and services: their sockets close 4002, their
 * hellos are refused (auth checks the revoked set), and undelivered messages from and to them are
 * dropped, each sender hearing `dropped_revoked`. The signed `revoke` system event reaches every online
 * peer through the mesh-state announcement.
 */
import fp from 'fastify-plugin'
import { CLOSE, MeshError, toHex } from '../../protocol/index.js'
import type { MeshState } from '../mesh-state.js'

declare module '../context.js' {
  interface CoordinatorContext {
    /** Applies a committed revocation of `pk` (a member, session or service key) to live state. */
    revoke(state: MeshState, pk: Uint8Array): Promise<void>
  }
}

export const revocationPlugin = fp(
  async (app) => {
    const ctx = app.mesh
    ctx.revoke = async (state, pk) => {
      const hex = toHex(pk)
      for (const conn of [...ctx.connections.inMesh(state.id)]) {
        const p = conn.presence!
        if (p.pkHex === hex || p.memberHex === hex || state.revoked.has(p.pkHex)) {
          conn.fail(new MeshError('MESH_ERR_REVOKED', 'this key or its member was revoked'), CLOSE.REVOKED)
        }
      }
      const rows = await ctx.store.query<{ pk: Uint8Array }>(
        'select pk from presence where mesh = $1 and member_pk = $2',
        [state.id, pk],
      )
      const keys = [pk, ...rows.map((r) => r.pk)]
      for (const key of keys) {
        const dropped = await ctx.store.query<{
          sender: Uint8Array
          recipient: Uint8Array
          client_message_id: string
          size: number
        }>(
          `delete from delivery where mesh = $1 and (recipient = $2 or sender = $2)
           returning sender, recipient, client_message_id, size`,
          [state.id, key],
        )
        for (const d of dropped) ctx.delivery.quota.released(state.id, d.recipient, d.sender, d.size)
        await Promise.all(
          dropped.map((d) =>
            ctx.delivery.pusher.receipt(
              state.id,
              d.sender,
              d.client_message_id,
              d.recipient,
              'dropped_revoked',
            ),
          ),
        )
      }
      ctx.log.info({ mesh: state.id, pk: hex.slice(0, 16), keys: keys.length }, 'revoked')
    }
  },
  { name: 'agentmesh-revocation', dependencies: ['agentmesh-delivery'] },
)
