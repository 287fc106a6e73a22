/**
 * A `ControlLink` (transports/ws-relay/link.ts) over a test `MeshClient`, so the ws-relay adapter runs
 * against a real coordinator. Connect the client with `autoAck: false`: the adapter acks what it takes.
 *
 * A runtime subscribes before its hello; a test client says hello first, and queued deliveries are pushed
 * right after it. So the first `onPush` listener is handed, on a microtask, every push received before it
 * subscribed (a transport registers `onSession` in the same turn it is made, and misses nothing).
 */
import { decodeEnvelope, type Envelope, type FrameOf } from '../../protocol/index.js'
import type { AckStatus, ControlLink, SendRequest } from '../../transports/ws-relay/link.js'
import type { MeshClient } from './mesh-client.js'

/** Options of `meshClientLink`. */
export interface MeshClientLinkOptions {
  /** How long one `send` may wait for its reply (default 60 s: bursts queue behind each other). */
  timeoutMs?: number
}

/** Wraps `client` (after its hello) as the link of its own key and mesh. */
export function meshClientLink(client: MeshClient, mesh: string, o: MeshClientLinkOptions = {}): ControlLink {
  let open = true
  let replayed = false
  let closeError: Error | undefined
  const closeListeners = new Set<(err?: Error) => void>()
  void client.closed.then((info) => {
    open = false
    closeError = new Error(`connection closed (${info.code} ${info.reason})`)
    for (const listener of [...closeListeners]) listener(closeError)
    closeListeners.clear()
  })
  return {
    self: { mesh, pk: client.identity.publicKey },
    get open() {
      return open
    },
    request(frame: SendRequest): Promise<FrameOf<'send_ack'>> {
      return client.request(frame, { timeoutMs: o.timeoutMs ?? 60_000 })
    },
    onPush(listener) {
      if (!replayed) {
        replayed = true
        const earlier = client.pushes()
        queueMicrotask(() => {
          for (const { frame, envelope } of earlier) if (envelope !== undefined) listener(frame, envelope)
        })
      }
      const onFrame = (frame: FrameOf<'push'> | { t: string }): void => {
        if (frame.t !== 'push') return
        const push = frame as FrameOf<'push'>
        let envelope: Envelope
        try {
          envelope = decodeEnvelope(push.envelope)
        } catch {
          return // not ours to judge: a runtime would ack it `rejected`
        }
        listener(push, envelope)
      }
      client.on('frame', onFrame)
      return () => client.off('frame', onFrame)
    },
    ack(deliveryId: string, status: AckStatus): void {
      if (!open) return
      try {
        client.send({ t: 'client_ack', deliveryId, status })
      } catch {
        // The socket is closing: the coordinator releases the claim and pushes the delivery again.
      }
    },
    onClose(listener) {
      if (!open) {
        listener(closeError)
        return () => {}
      }
      closeListeners.add(listener)
      return () => closeListeners.delete(listener)
    },
  }
}
