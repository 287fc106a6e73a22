import { EventEmitter, once } from 'node:events'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { WebSocketServer, type RawData, type WebSocket } from 'ws'
import {
  bytesEqual,
  CLOSE,
  createIdentity,
  decode,
  decodeFrame,
  encode,
  encodeEnvelope,
  encodeFrame,
  errorFrame,
  initCrypto,
  MAX_ENVELOPE_BYTES,
  MAX_FRAME_BYTES,
  MAX_PAYLOAD_BYTES,
  MeshError,
  newChallengeNonce,
  Roster,
  sealDirect,
  signHello,
  ulidFactory,
  verifyAdminRequest,
  verifyHello,
  type Frame,
  type FrameOf,
  type Identity,
  type RosterRole,
} from '../../protocol/index.js'
import { FrameInbox, MeshClient } from './mesh-client.js'
import { httpMsgpack, invite, joinRecord, newOwner, rosterRecord, service, session } from './mesh-fixture.js'
import { rejectionCode } from './rejection.js'

const MESH = 'acme'
const nextUlid = ulidFactory()
const accepted = new EventEmitter()
let wss: WebSocketServer
let url: string
let coordinator: Identity
let owner: Identity

/** The server's side of one connection, as the tests see it. */
interface ServerPeer {
  inbox: FrameInbox
  closed: Promise<number>
  send(frame: Frame): void
}

/**
 * A minimal coordinator: a challenge, then `verifyHello` (no roster); `list_peers` is held until a
 * `mesh_events` arrives and answered after it, `subscribe` gets an error, `unsubscribe` an ok.
 */
function serve(ws: WebSocket, path: string): void {
  if (path === '/silent') return
  if (path === '/refuse') return ws.close(CLOSE.POLICY, 'go away')
  const nonce = newChallengeNonce()
  const inbox = new FrameInbox()
  const send = (frame: Frame): void => ws.send(encodeFrame(frame))
  const closed = new Promise<number>((resolve) => ws.once('close', resolve))
  let held: number | undefined
  ws.on('message', (data: RawData) => {
    const frame = decodeFrame(new Uint8Array(data as Buffer))
    inbox.deliver(frame)
    if (frame.t === 'hello') {
      try {
        verifyHello(frame, { challengeNonce: nonce, mesh: MESH, now: Date.now() })
        send(helloAck)
      } catch (err) {
        if (!(err instanceof MeshError)) throw err
        send(errorFrame(err))
        ws.close(CLOSE.POLICY, err.code)
      }
    } else if (frame.t === 'list_peers') held = frame.reqId
    else if (frame.t === 'mesh_events') {
      send({ t: 'mesh_events_result', reqId: frame.reqId, events: [] })
      if (held !== undefined) send({ t: 'peers', reqId: held, peers: [] })
    } else if (frame.t === 'subscribe') {
      send(errorFrame(new MeshError('MESH_ERR_UNKNOWN_TOPIC', `no topic ${frame.topic}`), frame.reqId))
    } else if (frame.t === 'unsubscribe') send({ t: 'ok', reqId: frame.reqId })
    else if (frame.t === 'admin') {
      const req = verifyAdminRequest(frame, { challengeNonce: nonce, mesh: MESH, roleOf, allowed: ['owner'] })
      send({ t: 'admin_result', reqId: frame.reqId, result: req.args })
    }
  })
  send({ t: 'challenge', nonce, coordinatorPk: coordinator.publicKey, nodeId: 'node-t' })
  accepted.emit('peer', { inbox, closed, send } satisfies ServerPeer)
}

const helloAck: FrameOf<'hello_ack'> = {
  t: 'hello_ack',
  proto: 1,
  features: [],
  stateVersion: 0,
  presenceId: 'p-1',
  nodeId: 'node-t',
  leaseMs: 30_000,
  limits: {
    maxFrameBytes: MAX_FRAME_BYTES,
    maxEnvelopeBytes: MAX_ENVELOPE_BYTES,
    maxPayloadBytes: MAX_PAYLOAD_BYTES,
  },
}

const roleOf = (pk: Uint8Array): RosterRole | undefined =>
  bytesEqual(pk, owner.publicKey) ? 'owner' : undefined

/** The server side of the next connection; call it before connecting. */
async function nextPeer(): Promise<ServerPeer> {
  const [peer] = await once(accepted, 'peer', { signal: AbortSignal.timeout(5000) })
  return peer as ServerPeer
}

/** Connects a session of `owner` and returns both ends. */
async function connectPair(o: Partial<Parameters<typeof MeshClient.connect>[1]> = {}) {
  const peer = nextPeer()
  const client = await MeshClient.connect(url, { mesh: MESH, ...session(owner, MESH), ...o })
  return { client, peer: await peer }
}

beforeAll(async () => {
  await initCrypto()
  coordinator = createIdentity('coordinator')
  owner = newOwner()
  wss = new WebSocketServer({ host: '127.0.0.1', port: 0 })
  wss.on('connection', (ws, req) => serve(ws, req.url ?? '/'))
  await once(wss, 'listening')
  url = `ws://127.0.0.1:${(wss.address() as AddressInfo).port}`
})

afterAll(async () => {
  for (const ws of wss.clients) ws.terminate()
  await new Promise((resolve) => wss.close(resolve))
})

describe('MeshClient', () => {
  it('says hello as a session, a service and a control-plane key (which signs admin requests)', async () => {
    const { client, peer } = await connectPair({ signal: AbortSignal.timeout(5000) })
    expect(client.helloAck.nodeId).toBe('node-t')
    expect(client.challenge.coordinatorPk).toEqual(coordinator.publicKey)
    const hello = await peer.inbox.take(['hello'])
    expect(hello).toMatchObject({ role: 'session', mesh: MESH, proto: { min: 1, max: 1 } })
    await client.close()

    const svc = await MeshClient.connect(url, { mesh: MESH, ...service(owner, MESH, { scopes: ['hooks'] }) })
    expect(svc.identity.kind).toBe('service')
    const cp = await MeshClient.connect(url, { mesh: MESH, identity: owner, role: 'control-plane' })
    expect(cp.helloAck.presenceId).toBe('p-1')
    expect(await cp.admin('kick', { who: 'mallory' })).toMatchObject({ result: { who: 'mallory' } })
    await Promise.all([svc.close(), cp.close()])
  })

  it('matches replies by reqId, not by arrival order', async () => {
    const { client } = await connectPair()
    const [peers, events] = await Promise.all([
      client.request({ t: 'list_peers' }),
      client.request({ t: 'mesh_events', since: 0 }),
    ])
    expect(peers).toMatchObject({ t: 'peers', peers: [] })
    expect(events).toMatchObject({ t: 'mesh_events_result', events: [] })
    expect(peers.reqId).toBeLessThan(events.reqId)
    // The server did answer the second request first.
    const order = client.frames().map((f) => f.t)
    expect(order.indexOf('mesh_events_result')).toBeLessThan(order.indexOf('peers'))
    // A reply claimed by its request never reaches the queues.
    await expect(client.waitFor('peers', undefined, { signal: AbortSignal.timeout(50) })).rejects.toThrow(
      /aborted waiting for peers/,
    )
    await client.close()
  })

  it('rejects a request with the MeshError of an error frame carrying its reqId', async () => {
    const { client } = await connectPair()
    expect(await rejectionCode(client.request({ t: 'subscribe', topic: 'nope' }))).toBe(
      'MESH_ERR_UNKNOWN_TOPIC',
    )
    expect(await client.request({ t: 'unsubscribe', topic: 'news' })).toMatchObject({ t: 'ok' })
    await client.close()
  })

  it('waitFor finds frames that arrived before the call, in order, each once', async () => {
    const { client, peer } = await connectPair()
    const recipient = createIdentity('session').publicKey
    for (const status of ['delivered', 'queued'] as const) {
      peer.send({ t: 'delivery_receipt', clientMessageId: nextUlid(), recipient, status })
    }
    // The ok is sent after both receipts, so once it is here they are too.
    await client.request({ t: 'unsubscribe', topic: 'news' })
    expect(client.frames('delivery_receipt')).toHaveLength(2)
    const queued = await client.waitFor('delivery_receipt', (f) => f.status === 'queued')
    expect(queued.status).toBe('queued')
    expect((await client.waitFor('delivery_receipt')).status).toBe('delivered')
    expect(client.frames('delivery_receipt')).toHaveLength(2)
    await client.close()
  })

  it('acks pushes (ok by default, or as autoAck says) and answers pings', async () => {
    const { client, peer } = await connectPair()
    const sender = createIdentity('session')
    const env = sealDirect({
      mesh: MESH,
      channel: 'dm',
      from: sender,
      to: client.identity.publicKey,
      clientMessageId: nextUlid(),
      payload: 'hi',
    })
    peer.send({ t: 'push', deliveryId: 'd-1', envelope: encodeEnvelope(env) })
    expect(await peer.inbox.take(['client_ack'])).toMatchObject({ deliveryId: 'd-1', status: 'ok' })
    expect(client.pushes()[0]?.envelope?.clientMessageId).toBe(env.clientMessageId)
    peer.send({ t: 'ping' })
    await peer.inbox.take(['pong'])
    await client.close()

    const picky = await connectPair({ autoAck: (push) => (push.envelope ? 'rejected' : undefined) })
    picky.peer.send({ t: 'push', deliveryId: 'd-2', envelope: encodeEnvelope(env) })
    expect(await picky.peer.inbox.take(['client_ack'])).toMatchObject({
      deliveryId: 'd-2',
      status: 'rejected',
    })
    await picky.client.close()
  })

  it('lets a test forge a hello, which the server refuses with WRONG_CHALLENGE', async () => {
    const key = session(owner, MESH)
    const tamper = (hello: FrameOf<'hello'>): FrameOf<'hello'> => ({
      ...hello,
      ...signHello({
        ...key,
        mesh: MESH,
        instanceId: hello.instanceId,
        capabilities: { p2p: false, transports: ['ws'] },
        challengeNonce: newChallengeNonce(),
      }),
    })
    expect(await rejectionCode(MeshClient.connect(url, { mesh: MESH, ...key, tamper }))).toBe(
      'MESH_ERR_WRONG_CHALLENGE',
    )

    // With open + hello the client stays around to see the server close it 1008.
    const client = await MeshClient.open(url)
    expect(await rejectionCode(client.hello({ mesh: MESH, ...key, tamper }))).toBe('MESH_ERR_WRONG_CHALLENGE')
    expect(await client.closed).toEqual({ code: CLOSE.POLICY, reason: 'MESH_ERR_WRONG_CHALLENGE' })
  })

  it('terminate() drops the connection without a close frame: the server sees 1006', async () => {
    const { client, peer } = await connectPair()
    expect((await client.terminate()).code).toBe(1006)
    expect(await peer.closed).toBe(1006)
  })

  it('open rejects on a timeout, an abort, or a close before the challenge', async () => {
    await expect(MeshClient.open(`${url}/silent`, { timeoutMs: 100 })).rejects.toThrow(
      /timed out after 100 ms/,
    )
    const signal = AbortSignal.timeout(100)
    await expect(MeshClient.open(`${url}/silent`, { signal })).rejects.toThrow(
      /aborted waiting for challenge/,
    )
    await expect(MeshClient.open(`${url}/refuse`)).rejects.toThrow(/connection closed \(1008 go away\)/)
  })

  it('keeps messages that are not frames aside, and the connection working', async () => {
    const { client, peer } = await connectPair()
    peer.send({ t: 'ping' })
    await client.waitFor('ping')
    expect(client.undecodable()).toEqual([])
    client.sendRaw(encode({ t: 'unsubscribe', reqId: 9, topic: 'news' }))
    expect(await client.waitFor('ok', (f) => f.reqId === 9)).toEqual({ t: 'ok', reqId: 9 })
    await client.close()
  })
})

describe('mesh fixture', () => {
  it('builds invites, joins and roster records a Roster accepts', () => {
    const roster = new Roster(MESH, owner.publicKey)
    const admin = newOwner()
    roster.applyRecord(
      rosterRecord({
        signer: owner,
        mesh: MESH,
        seq: 1,
        action: 'add',
        subjectPk: admin.publicKey,
        role: 'admin',
      }),
    )
    const inv = invite({
      signer: admin,
      mesh: MESH,
      coordinatorUrl: url,
      coordinatorPk: coordinator.publicKey,
      ownerPk: owner.publicKey,
    })
    const joiner = newOwner()
    expect(roster.applyJoin(inv, joinRecord(joiner, inv), Date.now())).toMatchObject({
      role: 'member',
      uses: 1,
    })
    expect(roster.isMember(joiner.publicKey)).toBe(true)
  })

  it('httpMsgpack sends msgpack with a bearer token and decodes msgpack or JSON replies', async () => {
    const server = createServer((req, res) => {
      const chunks: Buffer[] = []
      req.on('data', (c: Buffer) => chunks.push(c))
      req.on('end', () => {
        if (req.url === '/json') {
          res.writeHead(404, { 'content-type': 'application/json' })
          res.end(JSON.stringify({ error: { code: 'MESH_ERR_UNKNOWN_MESH', message: 'no such mesh' } }))
          return
        }
        const body = decode(new Uint8Array(Buffer.concat(chunks)))
        res.writeHead(201, { 'content-type': 'application/msgpack' })
        res.end(encode({ got: body, auth: req.headers.authorization, type: req.headers['content-type'] }))
      })
    })
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
    try {
      const created = await httpMsgpack(`${base}/v1/meshes`, {
        method: 'POST',
        token: 'secret',
        body: { mesh: MESH, ownerPk: owner.publicKey },
      })
      expect(created).toMatchObject({
        status: 201,
        body: { auth: 'Bearer secret', type: 'application/msgpack' },
      })
      expect(created.body).toMatchObject({ got: { mesh: MESH, ownerPk: owner.publicKey } })
      const missing = await httpMsgpack(`${base}/json`, { method: 'GET' })
      expect(missing).toMatchObject({ status: 404, body: { error: { code: 'MESH_ERR_UNKNOWN_MESH' } } })
    } finally {
      server.close()
    }
  })
})
