/**
 * `POST /v1/send` for services holding a bearer service token: a sealed envelope (`{envelope: bin}` in
 * msgpack), or `{to, text}` for a `curl` from cron, which travels as a plaintext dm flagged
 * `meta.e2e: false` (a mesh policy can forbid it). Both go through the same accept path as a socket's
 * `send`, so dedupe, rate limits and delivery states are the same.
 */
import fp from 'fastify-plugin'
import {
  bin,
  either,
  encodeEnvelope,
  fromHex,
  isPlainObject,
  keySchema,
  MeshError,
  obj,
  opt,
  parse,
  sealPlaintext,
  str,
  toHex,
  ulidFactory,
  ulidSchema,
  MAX_ENVELOPE_BYTES,
  MAX_PAYLOAD_BYTES,
} from '../../protocol/index.js'
import { bearer, send, tokenHash } from '../http.js'
import { acceptSend, type Sender } from './accept.js'

/** The scope a service needs to send through this route. */
export const SEND_SCOPE = 'send'

const sealedBody = obj({ envelope: bin({ min: 1, max: MAX_ENVELOPE_BYTES }) })
const textBody = obj({
  to: either(keySchema, str({ min: 64, max: 64 })),
  text: str({ max: MAX_PAYLOAD_BYTES }),
  clientMessageId: opt(ulidSchema),
})

export const httpSendPlugin = fp(
  async (app) => {
    const ctx = app.mesh
    const nextId = ulidFactory(() => ctx.clock.now())

    app.post('/v1/send', async (req, reply) => {
      const token = bearer(req)
      if (token === undefined) throw new MeshError('MESH_ERR_UNAUTHENTICATED', 'a service token is required')
      const rows = await ctx.store.query<{
        mesh: string
        pk: Uint8Array
        member_pk: Uint8Array
        scopes: string[]
        revoked_at: number | null
      }>('select mesh, pk, member_pk, scopes, revoked_at from service where token_hash = $1', [
        tokenHash(token),
      ])
      const svc = rows[0]
      if (svc === undefined) throw new MeshError('MESH_ERR_UNAUTHENTICATED', 'unknown service token')
      if (svc.revoked_at !== null) throw new MeshError('MESH_ERR_REVOKED', 'this service was revoked')
      if (!svc.scopes.includes(SEND_SCOPE)) {
        throw new MeshError('MESH_ERR_NOT_AUTHORIZED', `the service lacks the "${SEND_SCOPE}" scope`)
      }
      const sender: Sender = {
        mesh: svc.mesh,
        pk: svc.pk,
        pkHex: toHex(svc.pk),
        memberHex: toHex(svc.member_pk),
      }
      const body: unknown = req.body
      let bytes: Uint8Array
      if (isPlainObject(body) && 'envelope' in body) {
        bytes = parse(sealedBody, body, 'MESH_ERR_MALFORMED_FRAME', 'send body').envelope
      } else {
        const b = parse(textBody, body, 'MESH_ERR_MALFORMED_FRAME', 'send body')
        const to = typeof b.to === 'string' ? fromHex(b.to) : b.to
        if (to === null) throw new MeshError('MESH_ERR_MALFORMED_KEY', '`to` is not a hex key')
        bytes = encodeEnvelope(
          sealPlaintext({
            mesh: svc.mesh,
            from: svc.pk,
            to,
            clientMessageId: b.clientMessageId ?? nextId(),
            text: b.text,
          }),
        )
      }
      const result = await acceptSend(ctx, sender, bytes)
      return send(req, reply, 200, result)
    })
  },
  { name: 'agentmesh-http-send', dependencies: ['agentmesh-accept'] },
)
