/**
 * The per-recipient offline quota (10,000 messages or 256 MiB by default, DESIGN.md §6), with a
 * per-sender share so one noisy sender cannot fill a recipient's queue alone. Counts are loaded from the
 * store on first use and kept in step with this node's inserts and deletes; another node's changes are
 * seen when the entry is reloaded (after `reloadAfterMs`).
 */
import { MeshError, toHex, type Clock } from '../../protocol/index.js'
import type { Sql } from '../store/types.js'

interface Usage {
  count: number
  bytes: number
  bySender: Map<string, number>
  loadedAt: number
}

export interface QuotaLimits {
  queueMaxMessages: number
  queueMaxBytes: number
}

/** A single sender may hold at most this share of a recipient's message quota. */
export const SENDER_SHARE = 0.5

export class QueueQuota {
  readonly #usage = new Map<string, Promise<Usage>>()
  readonly #limits: QuotaLimits
  readonly #clock: Clock
  readonly #reloadAfterMs: number

  constructor(limits: QuotaLimits, clock: Clock, reloadAfterMs = 60_000) {
    this.#limits = limits
    this.#clock = clock
    this.#reloadAfterMs = reloadAfterMs
  }

  /**
   * Counts one queued message of `size` bytes from `sender` to `recipient`, or throws
   * `MESH_ERR_QUEUE_FULL {retryAfterMs}` and counts nothing.
   */
  async reserve(
    sql: Sql,
    mesh: string,
    recipient: Uint8Array,
    sender: Uint8Array,
    size: number,
    force = false,
  ): Promise<void> {
    const u = await this.#get(sql, mesh, recipient)
    const senderHex = toHex(sender)
    const mine = u.bySender.get(senderHex) ?? 0
    const l = this.#limits
    if (
      !force &&
      (u.count + 1 > l.queueMaxMessages ||
        u.bytes + size > l.queueMaxBytes ||
        mine + 1 > Math.max(1, Math.floor(l.queueMaxMessages * SENDER_SHARE)))
    ) {
      throw new MeshError('MESH_ERR_QUEUE_FULL', "the recipient's offline queue is full", {
        details: { retryAfterMs: 30_000, queued: u.count, maxMessages: l.queueMaxMessages },
      })
    }
    u.count++
    u.bytes += size
    u.bySender.set(senderHex, mine + 1)
  }

  /** Un-counts messages that left the queue (acked, expired, or a failed commit). */
  released(mesh: string, recipient: Uint8Array, sender: Uint8Array, size: number): void {
    const entry = this.#usage.get(key(mesh, recipient))
    void entry?.then((u) => {
      u.count = Math.max(0, u.count - 1)
      u.bytes = Math.max(0, u.bytes - size)
      const senderHex = toHex(sender)
      const mine = (u.bySender.get(senderHex) ?? 1) - 1
      if (mine <= 0) u.bySender.delete(senderHex)
      else u.bySender.set(senderHex, mine)
    })
  }

  #get(sql: Sql, mesh: string, recipient: Uint8Array): Promise<Usage> {
    const k = key(mesh, recipient)
    const now = this.#clock.now()
    let entry = this.#usage.get(k)
    if (entry === undefined) {
      entry = load(sql, mesh, recipient, now)
      this.#usage.set(k, entry)
      entry.catch(() => this.#usage.delete(k))
      return entry
    }
    return entry.then((u) => {
      if (now - u.loadedAt < this.#reloadAfterMs) return u
      this.#usage.delete(k)
      return this.#get(sql, mesh, recipient)
    })
  }
}

function key(mesh: string, recipient: Uint8Array): string {
  return `${mesh}/${toHex(recipient)}`
}

async function load(sql: Sql, mesh: string, recipient: Uint8Array, now: number): Promise<Usage> {
  const rows = await sql.query<{ sender: Uint8Array; n: number; bytes: number }>(
    `select sender, count(*)::bigint as n, coalesce(sum(size), 0)::bigint as bytes
     from delivery where mesh = $1 and recipient = $2 group by sender`,
    [mesh, recipient],
  )
  const u: Usage = { count: 0, bytes: 0, bySender: new Map(), loadedAt: now }
  for (const r of rows) {
    u.count += r.n
    u.bytes += r.bytes
    u.bySender.set(toHex(r.sender), r.n)
  }
  return u
}
