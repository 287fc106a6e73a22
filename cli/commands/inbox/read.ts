import type { MessageJson } from '../../../peer-runtime/node/daemon/ipc-json.js'
import { INBOX_CHANNELS } from './inbox-json.js'

/** Reads a mesh's inbox in arrival order: after an inbox position, at most `limit` rows of any channel. */
export type InboxReader = (after: number, limit: number) => Promise<MessageJson[]>

/** The rows one read asks for. */
const PAGE = 1_000

/**
 * Every `dm` and `group` message after inbox position `after`, oldest first, read page by page, and the
 * position of the last row of any channel (where to go on from).
 */
export async function readInbox(
  read: InboxReader,
  after: number,
): Promise<{ messages: MessageJson[]; head: number }> {
  const messages: MessageJson[] = []
  let head = after
  for (;;) {
    const page = await read(head, PAGE)
    for (const m of page) if (INBOX_CHANNELS.has(m.channel)) messages.push(m)
    head = page.at(-1)?.seq ?? head
    if (page.length < PAGE) return { messages, head }
  }
}
