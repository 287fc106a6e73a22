/**
 * The floor of the `runtime` scenario: the least work a durable, end-to-end encrypted DM costs a peer, in
 * one process, one side at a time, so that the parent can read each side's CPU from /proc. The far end of
 * its socket is `runtime-floor-echo.ts` (another process, not metered), which answers as a coordinator
 * would on its fast path.
 *
 * - `sender`: per DM, `sealDirect` with the precomputed shared key (`BoxKeyCache`), `encodeEnvelope`, the
 *   `send` frame, the row stored with the runtime's own sqlite store in batches (`insertOutboxMany`, one
 *   transaction per turn), the frame on the socket; per `send_ack`, the frame decoded and the row marked
 *   `done` in batches (`updateOutboxMany`). 256 in flight, the outbox's default concurrency.
 * - `receiver`: per `push`, the frame and the envelope decoded, `openEnvelope` with the shared key, the
 *   payload encoded as the inbox stores it, the row stored in batches (`insertInboxMany`), the
 *   `client_ack` sent after the commit, then the application's read: the payload decoded and the rows
 *   marked consumed in batches (`consumeInbox`).
 *
 * What the runtime adds on top (its scheduler, the claim write, timers, events, the mesh view, the
 * connection's bookkeeping) is what the scenario's ratio to this floor shows.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  BoxKeyCache,
  createIdentity,
  decode,
  decodeEnvelope,
  decodeFrame,
  encode,
  encodeEnvelope,
  encodeFrame,
  initCrypto,
  openEnvelope,
  sealDirect,
  toHex,
  ulidFactory,
  type Identity,
} from '../../protocol/index.js'
import { sqliteStore, type SqliteRuntimeStore } from '../../peer-runtime/node/sqlite-store.js'
import type { NewInboxRow, NewOutboxRow } from '../../peer-runtime/store/types.js'
import { serveJobs } from './jobs.js'
import { openRawSocket } from './peer-socket.js'
import { oneKibPayload } from './runtime-payload.js'

const WINDOW = 256

await initCrypto()
const nextId = ulidFactory()
let mesh = ''
let dir = ''
let sender: { identity: Identity; cache: BoxKeyCache; store: SqliteRuntimeStore }
let receiver: { identity: Identity; cache: BoxKeyCache; store: SqliteRuntimeStore }
let payload: unknown

/** Runs `flush` once at the end of this turn, however many times it is asked for in it. */
function batcher(flush: () => Promise<void>): () => void {
  let scheduled = false
  return () => {
    if (scheduled) return
    scheduled = true
    setImmediate(() => {
      scheduled = false
      void flush()
    })
  }
}

serveJobs(
  {},
  {
    /** Identities and stores; returns `count` push frames (sealed to the receiver) for the echo. */
    prepare: async (a: { mesh: string; count: number }) => {
      mesh = a.mesh
      dir = await mkdtemp(join(tmpdir(), 'agentmesh-bench-floor-'))
      const party = (name: string): typeof sender => {
        const identity = createIdentity('member')
        return {
          identity,
          cache: new BoxKeyCache(identity),
          store: sqliteStore({ path: join(dir, `${name}.db`) }),
        }
      }
      sender = party('sender')
      receiver = party('receiver')
      payload = oneKibPayload(mesh, sender.identity)
      const other = createIdentity('member')
      const cache = new BoxKeyCache(other)
      const frames: Uint8Array[] = []
      for (let i = 0; i < a.count; i++) {
        const env = sealDirect(
          {
            mesh,
            channel: 'dm',
            from: other,
            to: receiver.identity.publicKey,
            clientMessageId: nextId(),
            payload,
          },
          { cache },
        )
        frames.push(encodeFrame({ t: 'push', deliveryId: `d-${i}`, envelope: encodeEnvelope(env) }))
      }
      return frames
    },
    sender: (a: { url: string; count: number }) => sendSide(a.url, a.count),
    receiver: (a: { url: string; count: number }) => receiveSide(a.url, a.count),
  },
  async () => {
    await sender?.store.close()
    await receiver?.store.close()
    if (dir !== '') await rm(dir, { recursive: true, force: true })
  },
)

/** Sends `count` DMs through the echo's `/ack`, 256 in flight; resolves when every row is `done`. */
async function sendSide(url: string, count: number): Promise<{ ms: number }> {
  const to = receiver.identity.publicKey
  const target = toHex(to)
  let sent = 0
  let done = 0
  let reqId = 0
  const acked: string[] = []
  let finish: () => void = () => undefined
  const finished = new Promise<void>((resolve) => (finish = resolve))
  const top = async (): Promise<void> => {
    const n = Math.min(WINDOW - (sent - done), count - sent)
    if (n <= 0) return
    sent += n
    const rows: NewOutboxRow[] = []
    const frames: Uint8Array[] = []
    for (let i = 0; i < n; i++) {
      const clientMessageId = nextId()
      const envelope = encodeEnvelope(
        sealDirect(
          { mesh, channel: 'dm', from: sender.identity, to, clientMessageId, payload },
          { cache: sender.cache },
        ),
      )
      rows.push({
        id: clientMessageId,
        mesh,
        from: sender.identity.publicKey,
        target,
        channel: 'dm',
        envelope,
        createdAt: Date.now(),
      })
      frames.push(encodeFrame({ t: 'send', reqId: ++reqId, envelope, first: true }))
    }
    await sender.store.insertOutboxMany(rows)
    for (const f of frames) ws.send(f, { binary: true })
  }
  const settle = batcher(async () => {
    const ids = acked.splice(0)
    const now = Date.now()
    await sender.store.updateOutboxMany(
      ids.map((id) => ({ id, patch: { state: 'done', updatedAt: now }, expect: ['pending'] })),
    )
    done += ids.length
    if (done === count) finish()
    else await top()
  })
  const ws = await openRawSocket(`${url}/ack`, (bytes) => {
    const frame = decodeFrame(bytes)
    if (frame.t !== 'send_ack') return
    acked.push(frame.clientMessageId)
    settle()
  })
  const start = performance.now()
  await top()
  await finished
  const ms = performance.now() - start
  ws.close()
  return { ms }
}

/** Takes the echo's `count` pushes on `/push` as the inbox would; resolves when all are consumed. */
async function receiveSide(url: string, count: number): Promise<{ ms: number }> {
  const me = receiver.identity
  let consumed = 0
  const rows: NewInboxRow[] = []
  let finish: () => void = () => undefined
  const finished = new Promise<void>((resolve) => (finish = resolve))
  const store = batcher(async () => {
    const batch = rows.splice(0)
    const inserted = await receiver.store.insertInboxMany(batch)
    for (const r of batch) ws.send(encodeFrame({ t: 'client_ack', deliveryId: r.deliveryId!, status: 'ok' }))
    // The application's read: each payload decoded, the rows marked consumed.
    for (const r of inserted) decode(r.row.payload!)
    await receiver.store.consumeInbox(
      mesh,
      inserted.map((r) => r.row.seq),
      Date.now(),
    )
    consumed += batch.length
    if (consumed === count) finish()
  })
  const start = performance.now()
  const ws = await openRawSocket(`${url}/push`, (bytes) => {
    const frame = decodeFrame(bytes)
    if (frame.t !== 'push') return
    const env = decodeEnvelope(frame.envelope)
    const opened = openEnvelope(env, me, { cache: receiver.cache })
    if (!opened.ok) throw new Error(`the floor's push did not open: ${opened.status}`)
    rows.push({
      mesh,
      recipient: me.publicKey,
      from: env.from,
      clientMessageId: env.clientMessageId,
      channel: env.channel,
      deliveryId: frame.deliveryId,
      via: 'relay',
      envelope: frame.envelope,
      status: 'ok',
      receivedAt: Date.now(),
      payload: encode({ p: opened.payload, e2e: opened.e2e, meta: env.meta }),
    })
    store()
  })
  await finished
  const ms = performance.now() - start
  ws.close()
  return { ms }
}
