/**
 * `GET /v1/events`: a session's server-sent events. Frames:
 *
 *     event: ready      data: {session, sessionPk, after, link}  once, when the stream is live
 *     event: message    id: <seq>   data: MessageJson      a DM to the session's key, or to its member's
 *     event: delivery   data: DeliveryJson                 a change of one of the session's outbox rows
 *     event: link       data: {state, …, mesh: {state, …}}  the session's or its mesh's connection changed
 *     event: stopped    data: {code, message}              the session or its mesh stopped for good; the end
 *     : keepalive                                          every 15 s
 *
 * With `?after=<seq>` (or `Last-Event-ID`) the stream first replays the inbox after that position, then
 * goes live without a gap or a repeat (live events that arrive during the replay wait, and those the
 * replay already gave are skipped). Without it the stream starts at the inbox's head, and `ready.after`
 * says where: a client that re-dials later passes its last message id, or that, and misses nothing. The
 * stream ends when the session's token is revoked, the session stops, or the daemon stops (a client
 * tells the last two apart by the `stopped` event).
 */
import type { ServerResponse } from 'node:http'
import { toHex } from '../../../protocol/encoding.js'
import type { InboundMessage } from '../../inbox.js'
import type { OutboxRow } from '../../store/types.js'
import type { MeshError } from '../../../protocol/errors.js'
import { inboxHead } from './inbox-head.js'
import { deliveryJson, isIpcChannel, messageJson, rowMessageJson, type MessageJson } from './ipc-json.js'
import { linkEventJson } from './status-json.js'
import type { DaemonSession, IpcHost } from './types.js'

/** An open event stream; `end()` closes it. */
export interface EventStream {
  end(): void
}

/** Serves the stream on `res` (already hijacked from Fastify). */
export async function serveEvents(
  daemon: IpcHost,
  session: DaemonSession,
  res: ServerResponse,
  after: number | undefined,
  onEnd: () => void,
): Promise<EventStream> {
  const sessionPk = session.presence.identity.publicKey
  const memberPk = session.mesh.config.memberPk
  const tokenHash = session.registration.tokenHash
  res.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache, no-transform',
    connection: 'keep-alive',
    'x-accel-buffering': 'no',
  })
  res.flushHeaders()
  let ended = false
  let replaying = true
  let lastSeq = after ?? 0
  const held: (() => void)[] = []
  const write = (text: string): void => {
    if (!ended) res.write(text)
  }
  const sendMessage = (m: MessageJson): void => {
    if (m.seq <= lastSeq) return
    lastSeq = m.seq
    // rpc and stream rows are the runtime's own: the daemon's presences answer rpc themselves (file
    // offers, receipts) and read streams (files); a chunk is 60 KiB, as hex JSON it would swamp every
    // follower. Their ids still move the cursor.
    if (!isIpcChannel(m.channel)) return
    write(`event: message\nid: ${m.seq}\ndata: ${JSON.stringify(m)}\n\n`)
  }
  const live = (fn: () => void): void => {
    if (replaying) held.push(fn)
    else fn()
  }
  const fromSession = (m: InboundMessage): void =>
    live(() => sendMessage(messageJson(m, sessionPk, memberPk)))
  const fromMember = (m: InboundMessage): void =>
    live(() => sendMessage(messageJson(m, session.mesh.control.identity.publicKey, memberPk)))
  const onOutbox = (row: OutboxRow): void =>
    live(() => write(`event: delivery\ndata: ${JSON.stringify(deliveryJson(row))}\n\n`))
  const onRevoked = (hash: string): void => {
    if (hash === tokenHash) end()
  }
  const onLink = (changed: DaemonSession): void => {
    if (changed === session)
      live(() => write(`event: link\ndata: ${JSON.stringify(linkEventJson(session))}\n\n`))
  }
  const onStopped = (stopped: DaemonSession, error: MeshError): void => {
    if (stopped !== session) return
    write(`event: stopped\ndata: ${JSON.stringify({ code: error.code, message: error.message })}\n\n`)
    end()
  }
  const keepalive = setInterval(() => write(': keepalive\n\n'), daemon.keepaliveMs)
  keepalive.unref()
  const session$ = session.presence.peer
  const member$ = session.mesh.control.peer
  session$.on('message', fromSession)
  member$.on('message', fromMember)
  session$.on('outbox', onOutbox)
  daemon.on('revoked', onRevoked)
  daemon.on('stopped', onStopped)
  daemon.on('link', onLink)
  function end(): void {
    if (ended) return
    ended = true
    clearInterval(keepalive)
    session$.off('message', fromSession)
    member$.off('message', fromMember)
    session$.off('outbox', onOutbox)
    daemon.off('revoked', onRevoked)
    daemon.off('stopped', onStopped)
    daemon.off('link', onLink)
    res.end()
    onEnd()
  }
  res.on('close', end)

  const inbox = daemon.inboxOf(session)
  const recipients = [sessionPk, session.mesh.control.identity.publicKey]
  if (after === undefined) lastSeq = await inboxHead(inbox, session.mesh.config.mesh, recipients)
  else {
    for (;;) {
      const rows = await inbox.readInbox({
        mesh: session.mesh.config.mesh,
        recipients,
        afterSeq: lastSeq,
        limit: 500,
      })
      for (const row of rows) sendMessage(rowMessageJson(row, memberPk))
      if (rows.length < 500 || ended) break
    }
  }
  write(
    `event: ready\ndata: ${JSON.stringify({ session: session.registration.sessionId, sessionPk: toHex(sessionPk), after: lastSeq, link: linkEventJson(session) })}\n\n`,
  )
  replaying = false
  for (const fn of held.splice(0)) fn()
  return { end }
}
