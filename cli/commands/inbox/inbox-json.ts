/** What `inbox` prints of one message, from either path (both give the daemon's `MessageJson`). */
import type { MessageJson } from '../../../peer-runtime/node/daemon/ipc-json.js'

/** The channels `inbox` lists: messages for people and agents (rpc and stream frames have their own readers). */
export const INBOX_CHANNELS: ReadonlySet<string> = new Set(['dm', 'group'])

/** One message of `inbox --json` (in `messages`, or one per line with `--follow`): a stable contract. */
export interface InboxJson {
  /** The position in the mesh's inbox (the read cursor counts in these). */
  seq: number
  /** Unix ms when this home stored it. */
  receivedAt: number
  /** The sender's key (hex): a member key, or a session key of a member. */
  from: string
  fromName: string | null
  clientMessageId: string
  /** `dm` or `group`. */
  channel: string
  /** The opened payload (`{text}` from `agentmesh send`); null when it did not open (`status` says why). */
  payload: unknown
  /** `ok`, or `undecryptable` / `rejected`. */
  status: string
  /** False for a plaintext post the coordinator could read. */
  e2e: boolean
  /** How it came: `relay`, `p2p` or `webhook`. */
  via: string
  /** True once the read cursor is at or past it (printed by `listen` or `inbox --unread`). */
  read: boolean
}

export function inboxJson(m: MessageJson, fromName: string | undefined, cursor: number): InboxJson {
  return {
    seq: m.seq,
    receivedAt: m.receivedAt,
    from: m.from,
    fromName: fromName ?? null,
    clientMessageId: m.clientMessageId,
    channel: m.channel,
    payload: m.payload,
    status: m.status,
    e2e: m.e2e,
    via: m.via,
    read: m.seq <= cursor,
  }
}

/** What a message says, for people: its `text`, else its payload as JSON, else why it did not open. */
export function messageBody(m: { status: string; payload: unknown }): string {
  const p = m.payload as { text?: unknown } | null
  if (m.status !== 'ok' && m.status !== 'duplicate') return `[${m.status}: the message did not open]`
  return typeof p?.text === 'string' ? p.text : JSON.stringify(m.payload)
}

/** `2026-12-07 23:59:01  carol: hello  (relay, 01JD…)`: one line for people. */
export function inboxLine(m: InboxJson): string {
  const time = new Date(m.receivedAt).toISOString().replace('T', ' ').slice(0, 19)
  const name = m.fromName ?? m.from.slice(0, 16) + '…'
  const body = messageBody(m)
  const how = [
    m.channel === 'dm' ? undefined : m.channel,
    m.via,
    m.e2e ? undefined : 'not end-to-end encrypted',
  ]
    .filter((x) => x !== undefined)
    .join(', ')
  return `${time}  ${name}: ${body}  (${how}, ${m.clientMessageId})`
}
