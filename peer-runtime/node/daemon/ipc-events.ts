/**
 * `GET /v1/events`: a session's server-sent events. Frames:
 *
 *     event: ready      data: {session, after}             once, when the stream is live
 *     event: message    id: <seq>   data: MessageJson      a DM to the session's key, or to its member's
 *     event: delivery   data: DeliveryJson                 a change of one of the session's outbox rows
 *     : keepalive                                          every 15 s
 *
 * With `?after=<seq>` (or `Last-Event-ID`) the stream first replays the inbox after that position, then
 * goes live without a gap or a repeat (live events that arrive during the replay wait, and those the
 * replay already gave are skipped). The stream ends when the session's token is revoked or the daemon
 * stops.
 */
import type { ServerResponse } from 'node:http'
import { toHex } from '../../../protocol/encoding.js'
import type { InboundMessage } from '../../inbox.js'
import type { OutboxRow } from '../../store/types.js'
import type { Daemon, DaemonSession } from './daemon.js'
import { deliveryJson, messageJson, rowMessageJson, type MessageJson } from './ipc-json.js'

/** An open event stream; `end()` closes it. */
export interface EventStream {
  end(): void
}

/** Serves the stream on `res` (already hijacked from Fastify). */
export async function serveEvents(
  daemon: Daemon,
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
  const keepalive = setInterval(() => write(': keepalive\n\n'), daemon.keepaliveMs)
  keepalive.unref()
  const session$ = session.presence.peer
  const member$ = session.mesh.control.peer
  session$.on('message', fromSession)
  member$.on('message', fromMember)
  session$.on('outbox', onOutbox)
  daemon.on('revoked', onRevoked)
  function end(): void {
    if (ended) return
    ended = true
    clearInterval(keepalive)
    session$.off('message', fromSession)
    member$.off('message', fromMember)
    session$.off('outbox', onOutbox)
    daemon.off('revoked', onRevoked)
    res.end()
    onEnd()
  }
  res.on('close', end)

  if (after !== undefined) {
    const inbox = daemon.inboxOf(session)
    const recipients = [sessionPk, session.mesh.control.identity.publicKey]
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
    `event: ready\ndata: ${JSON.stringify({ session: session.registration.sessionId, sessionPk: toHex(sessionPk), after: lastSeq })}\n\n`,
  )
  replaying = false
  for (const fn of held.splice(0)) fn()
  return { end }
}
