import { afterEach, describe, expect, it } from 'vitest'
import { WebSocket } from 'ws'
import { storeLegs } from '../store/testing.js'
import {
  decodeEnvelope,
  decodeFrame,
  encode,
  encodeEnvelope,
  encodeFrame,
  PROTOCOL_VERSION,
  randomBytes,
  signHello,
  toHex,
  ulidFactory,
  type Envelope,
  type Identity,
} from '../../protocol/index.js'
import {
  sameMesh,
  worldsPerTest,
  type World,
  type WorldOptions,
} from '../../test/support/coordinator-world.js'
import { FrameInbox, type MeshClient } from '../../test/support/mesh-client.js'
import { rejection, rejectionCode } from '../../test/support/rejection.js'

const nextId = ulidFactory()
const wait = (): { signal: AbortSignal } => ({ signal: AbortSignal.timeout(5000) })

describe.each(storeLegs())('accept-path limits (%s)', (driver) => {
  const start = worldsPerTest(driver)
  let world: World
  const sockets: WebSocket[] = []
  afterEach(() => {
    for (const ws of sockets.splice(0)) ws.terminate()
  })

  /** A world with members `a` (connected) and `b` (connected unless `bOffline`). */
  async function pair(o: WorldOptions = {}, bOffline = false) {
    world = await start(o)
    const a = await world.member('a')
    const b = await world.member('b')
    const ca = await world.connectMember(a)
    const cb = bOffline ? undefined : await world.connectMember(b)
    return { a, b, ca, cb }
  }

  it('rate limits the 11th rapid send; a retry of an accepted one is a duplicate; time refills', async () => {
    const { a, b, ca } = await pair({ limits: { rate: { messageBurst: 10, messagesPerSecond: 1 } } })
    const sent: Envelope[] = []
    for (let i = 0; i < 10; i++) {
      const env = world.dm(a, b.publicKey, i)
      sent.push(env)
      expect((await ca.sendEnvelope(env, wait())).state).toBe('delivered')
    }
    const eleventh = world.dm(a, b.publicKey, 10)
    const limited = await rejection(ca.sendEnvelope(eleventh, wait()))
    expect(limited.code).toBe('MESH_ERR_RATE_LIMITED')
    expect(limited.details['retryAfterMs']).toBeGreaterThan(0)

    const retry = await ca.sendEnvelope(sent[0]!, wait())
    expect(retry).toMatchObject({
      state: 'delivered',
      duplicate: true,
      clientMessageId: sent[0]!.clientMessageId,
    })

    await world.clock.advance(limited.details['retryAfterMs'] as number)
    const again = await ca.sendEnvelope(eleventh, wait())
    expect(again.state).toBe('delivered')
    expect(again.duplicate).toBeUndefined()
  })

  it('a message bigger than the byte burst passes on a full bucket, and the debt delays the next', async () => {
    const { a, b, ca } = await pair({ limits: { rate: { byteBurst: 1024, bytesPerSecond: 1024 } } })
    const big = await ca.sendEnvelope(world.dm(a, b.publicKey, 'x'.repeat(2048)), wait())
    expect(big.state).toBe('delivered')
    const limited = await rejection(ca.sendEnvelope(world.dm(a, b.publicKey, 'small'), wait()))
    expect(limited.code).toBe('MESH_ERR_RATE_LIMITED')
    expect(limited.details['retryAfterMs']).toBeGreaterThan(1000)
    await world.clock.advance(limited.details['retryAfterMs'] as number)
    expect((await ca.sendEnvelope(world.dm(a, b.publicKey, 'small'), wait())).state).toBe('delivered')
  })

  it('sends of one clientMessageId with other bytes in flight at once: one is accepted, the rest conflict', async () => {
    const { a, b, ca } = await pair({}, true)
    const id = nextId()
    const envelopes = [0, 1, 2, 3].map((i) => world.dm(a, b.publicKey, i, id))
    const results = await Promise.allSettled(envelopes.map((env) => ca.sendEnvelope(env, wait())))
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1)
    for (const r of results.filter((r) => r.status === 'rejected')) {
      expect(r.reason).toMatchObject({ code: 'MESH_ERR_IDEMPOTENCY_CONFLICT' })
    }
    const rows = await world.store.query<{ n: number }>('select count(*)::int as n from delivery')
    expect(rows[0]?.n).toBe(1)
  })

  it('a reused clientMessageId with other bytes conflicts; a foreign `from` is refused', async () => {
    const { a, b, ca } = await pair({}, true)
    const id = nextId()
    const first = await ca.sendEnvelope(world.dm(a, b.publicKey, 'one', id), wait())
    expect(first).toMatchObject({ state: 'queued', recipientOnline: false })
    const dup = await rejectionCode(ca.sendEnvelope(world.dm(a, b.publicKey, 'two', id), wait()))
    expect(dup).toBe('MESH_ERR_IDEMPOTENCY_CONFLICT')

    const forged = await rejection(ca.sendEnvelope(world.dm(b, a.publicKey, 'as b'), wait()))
    expect(forged.code).toBe('MESH_ERR_FROM_MISMATCH')
    const rows = await world.store.query<{ n: number }>('select count(*)::int as n from delivery')
    expect(rows[0]?.n).toBe(1)
  })

  it('a send flagged first is deduplicated in memory; after a restart an unflagged retry finds the stored copy', async () => {
    const w1 = await start()
    const a = await w1.member('a')
    const b = await w1.member('b')
    const flagged = (c: MeshClient, envelope: Uint8Array) =>
      c.request({ t: 'send', envelope, first: true }, wait())
    const c1 = await w1.connectMember(a)
    const env = w1.dm(a, b.publicKey, 'once')
    const bytes = encodeEnvelope(env)
    expect(await flagged(c1, bytes)).toMatchObject({ state: 'queued', recipientOnline: false })
    // The flag skips only the store: this node still knows the id.
    expect(await flagged(c1, bytes)).toMatchObject({ state: 'queued', duplicate: true })
    const other = encodeEnvelope(w1.dm(a, b.publicKey, 'other', env.clientMessageId))
    expect(await rejectionCode(flagged(c1, other))).toBe('MESH_ERR_IDEMPOTENCY_CONFLICT')
    await w1.coordinator.close()

    const w2 = await start(sameMesh(w1))
    const c2 = await w2.connectMember(a)
    // What the runtime sends after a restart: the same bytes, unflagged; the store answers.
    expect(await c2.request({ t: 'send', envelope: bytes }, wait())).toMatchObject({
      state: 'queued',
      duplicate: true,
    })
    // A sender that flags a retry falsely loses only its own deduplication: the copy is queued again,
    // the stored dedupe row stays as it was, and an honest send beside it commits in the same batch.
    const stale = encodeEnvelope(w2.dm(a, b.publicKey, 'stale'))
    expect(await c2.request({ t: 'send', envelope: stale }, wait())).toMatchObject({ state: 'queued' })
    await w2.coordinator.close()
    const w3 = await start(sameMesh(w2))
    const c3 = await w3.connectMember(a)
    const [lied, honest] = await Promise.all([
      flagged(c3, stale),
      flagged(c3, encodeEnvelope(w3.dm(a, b.publicKey, 'new'))),
    ])
    expect(lied).toMatchObject({ state: 'queued' })
    expect(lied.duplicate).toBeUndefined()
    expect(honest).toMatchObject({ state: 'queued' })
    const rows = await w3.store.query<{ n: number }>(
      'select count(*)::int as n from dedupe where client_message_id = $1',
      [decodeEnvelope(stale).clientMessageId],
    )
    expect(rows[0]?.n).toBe(1)
    expect((await w3.store.query('select id from delivery')).length).toBe(4)
  })

  it('answers oversize, malformed and unknown frames with errors and keeps the socket working', async () => {
    const { a, b, ca, cb } = await pair()
    ca.sendRaw(encode({ t: 'send', reqId: 90, envelope: new Uint8Array(73 * 1024) }))
    expect(await ca.waitFor('error', (f) => f.code === 'MESH_ERR_FRAME_TOO_LARGE', wait())).toBeDefined()

    ca.sendRaw(Uint8Array.of(0xc1, ...randomBytes(63)))
    expect(await ca.waitFor('error', (f) => f.code === 'MESH_ERR_MALFORMED_FRAME', wait())).toBeDefined()

    ca.sendRaw(encode({ t: 'no_such_frame', reqId: 91 }))
    const unknown = await ca.waitFor('error', (f) => f.reqId === 91, wait())
    expect(unknown.code).toBe('MESH_ERR_UNKNOWN_FRAME_TYPE')

    ca.sendRaw(encode({ t: 'send', reqId: 92, envelope: 'not bytes' }))
    const bad = await ca.waitFor('error', (f) => f.reqId === 92, wait())
    expect(bad.code).toBe('MESH_ERR_MALFORMED_FRAME')

    expect((await ca.sendEnvelope(world.dm(a, b.publicKey, 'still here'), wait())).state).toBe('delivered')
    expect(await cb!.waitFor('push', undefined, wait())).toBeDefined()
  })

  it('closes 1009 on a WebSocket message over 1 MiB', async () => {
    world = await start()
    const m = await world.member()
    const client = await world.connectMember(m)
    client.sendRaw(new Uint8Array(1024 * 1024 + 1))
    expect((await client.closed).code).toBe(1009)
  })

  it('closes 1013 a consumer that stops reading once its buffered output passes the limit', async () => {
    world = await start({
      limits: {
        slowConsumerBytes: 256 * 1024,
        pushWindow: 10_000,
        pushWindowBytes: 1024 * 1024 * 1024,
        rate: { messageBurst: 10_000, byteBurst: 1024 * 1024 * 1024 },
      },
    })
    const a = await world.member()
    const b = await world.member()
    const sender = await world.connectMember(a)
    const stalled = await world.connectMember(b, { autoAck: false })
    stalled.pauseReading()
    const big = 'x'.repeat(50 * 1024)
    // 300 × 50 KiB pushed at a reader that reads nothing: more than loopback's socket buffers hold.
    const acks = Array.from({ length: 300 }, () =>
      sender.sendEnvelope(world.dm(a, b.publicKey, big), { timeoutMs: 30_000 }),
    )
    const startedAt = world.clock.now()
    for (let i = 0; i < 200 && !(await world.leased(b.publicKey)); i++) await world.clock.advance(500)
    expect(await world.leased(b.publicKey)).toBe(true)
    // Cut off for its buffer, long before the 75 s stale rule could have done it.
    expect(world.clock.now() - startedAt).toBeLessThan(30_000)
    for (const ack of await Promise.all(acks)) expect(['delivered', 'queued']).toContain(ack.state)
    // Nothing was lost: every message is still owed to b.
    const rows = await world.store.query<{ n: number }>('select count(*)::int as n from delivery')
    expect(rows[0]!.n).toBe(300)
  })

  it('answers a text frame with MESH_ERR_MALFORMED_FRAME and the socket still says hello and sends', async () => {
    const { b, cb } = await pair()
    const c = await world.member('c')
    const ws = new WebSocket(world.wsUrl)
    sockets.push(ws)
    const inbox = new FrameInbox()
    ws.on('message', (data: Buffer) => inbox.deliver(decodeFrame(new Uint8Array(data))))
    const challenge = await inbox.take(['challenge'], undefined, wait())
    ws.send('{"t":"ping"}', { binary: false })
    expect((await inbox.take(['error'], undefined, wait())).code).toBe('MESH_ERR_MALFORMED_FRAME')

    const hello = signHello({
      identity: c,
      mesh: world.mesh,
      role: 'control-plane',
      challengeNonce: challenge.nonce,
      capabilities: { p2p: false, transports: ['ws'] },
      instanceId: 'raw-socket',
    })
    ws.send(encodeFrame({ t: 'hello', proto: { ...PROTOCOL_VERSION }, features: [], ...hello }))
    await inbox.take(['hello_ack'], undefined, wait())
    const env = world.dm(c, b.publicKey, 'after text')
    ws.send(encodeFrame({ t: 'send', reqId: 1, envelope: encodeEnvelope(env) }))
    const ack = await inbox.take(['send_ack'], (f) => f.reqId === 1, wait())
    expect(ack.state).toBe('delivered')
    const sameId = (f: { envelope: Uint8Array }): boolean =>
      decodeEnvelope(f.envelope).clientMessageId === env.clientMessageId
    expect(await cb!.waitFor('push', sameId, wait())).toBeDefined()
  })

  it('a DM to an unknown key, even one sharing a 16-hex prefix with a member, is MESH_ERR_UNKNOWN_KEY', async () => {
    const { a, b, ca } = await pair()
    const lookalike = Uint8Array.from(b.publicKey)
    for (let i = 8; i < 32; i++) lookalike[i] = lookalike[i]! ^ 0x5a
    expect(toHex(lookalike).slice(0, 16)).toBe(toHex(b.publicKey).slice(0, 16))
    const env = { ...world.dm(a, b.publicKey, 'typo'), target: lookalike }
    const err = await rejection(ca.request({ t: 'send', envelope: encodeEnvelope(env) }, wait()))
    expect(err.code).toBe('MESH_ERR_UNKNOWN_KEY')
    const rows = await world.store.query<{ n: number }>('select count(*)::int as n from delivery')
    expect(rows[0]?.n).toBe(0)
  })

  it('enforces the offline queue quota with a per-sender share, and frees it as the recipient acks', async () => {
    world = await start({ limits: { queueMaxMessages: 4 } })
    const r = await world.member('recipient')
    const senders: [Identity, MeshClient][] = []
    for (const name of ['s1', 's2', 's3']) {
      const m = await world.member(name)
      senders.push([m, await world.connectMember(m)])
    }
    const [[m1, c1], [m2, c2], [m3, c3]] = senders as [
      [Identity, MeshClient],
      [Identity, MeshClient],
      [Identity, MeshClient],
    ]
    for (let i = 0; i < 2; i++) {
      expect((await c1.sendEnvelope(world.dm(m1, r.publicKey, i), wait())).state).toBe('queued')
    }
    // One sender holds at most half of the recipient's quota.
    const share = await rejection(c1.sendEnvelope(world.dm(m1, r.publicKey, 2), wait()))
    expect(share.code).toBe('MESH_ERR_QUEUE_FULL')
    expect(share.details['retryAfterMs']).toBeGreaterThan(0)
    for (let i = 0; i < 2; i++) {
      expect((await c2.sendEnvelope(world.dm(m2, r.publicKey, i), wait())).state).toBe('queued')
    }
    const full = await rejection(c3.sendEnvelope(world.dm(m3, r.publicKey, 0), wait()))
    expect(full.code).toBe('MESH_ERR_QUEUE_FULL')
    expect(full.details['retryAfterMs']).toBeGreaterThan(0)

    await world.connectMember(r)
    for (const c of [c1, c1, c2, c2]) {
      expect(await c.waitFor('delivery_receipt', undefined, wait())).toMatchObject({ status: 'delivered' })
    }
    expect((await c3.sendEnvelope(world.dm(m3, r.publicKey, 'room now'), wait())).state).toBe('delivered')
  })
})
