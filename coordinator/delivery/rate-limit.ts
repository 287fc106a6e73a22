/**
 * Token buckets per member: one for messages, one for bytes (DESIGN.md §4). Buckets live in this
 * node's memory; with several nodes each enforces its own (documented in ARCHITECTURE.md).
 */
import { MeshError, type Clock } from '../../protocol/index.js'
import type { RateLimits } from '../options.js'

interface Bucket {
  messages: number
  bytes: number
  at: number
}

export class RateLimiter {
  readonly #buckets = new Map<string, Bucket>()
  readonly #clock: Clock
  readonly #limits: RateLimits

  constructor(clock: Clock, limits: RateLimits) {
    this.#clock = clock
    this.#limits = limits
  }

  /**
   * Takes one message and `size` bytes from `key`'s buckets, or throws `MESH_ERR_RATE_LIMITED` with
   * `retryAfterMs` (and takes nothing).
   */
  take(key: string, size: number): void {
    const l = this.#limits
    const now = this.#clock.now()
    const b = this.#buckets.get(key) ?? { messages: l.messageBurst, bytes: l.byteBurst, at: now }
    const elapsed = Math.max(0, now - b.at) / 1000
    b.messages = Math.min(l.messageBurst, b.messages + elapsed * l.messagesPerSecond)
    b.bytes = Math.min(l.byteBurst, b.bytes + elapsed * l.bytesPerSecond)
    b.at = now
    this.#buckets.set(key, b)
    const needMessages = 1 - b.messages
    // A message bigger than the byte burst passes on a full bucket and leaves it in debt; asking for
    // more than the bucket can ever hold would refuse it forever with a retryAfterMs that lies.
    const needBytes = Math.min(size, l.byteBurst) - b.bytes
    if (needMessages > 0 || needBytes > 0) {
      const waitMs = Math.max(
        needMessages > 0 ? (needMessages / l.messagesPerSecond) * 1000 : 0,
        needBytes > 0 ? (needBytes / l.bytesPerSecond) * 1000 : 0,
      )
      const retryAfterMs = Math.max(1, Math.ceil(waitMs))
      throw new MeshError('MESH_ERR_RATE_LIMITED', `rate limit reached; retry in ${retryAfterMs} ms`, {
        details: { retryAfterMs },
      })
    }
    b.messages -= 1
    b.bytes -= size
  }

  /** Forgets buckets that are full again (bounded memory). */
  prune(): void {
    const l = this.#limits
    const now = this.#clock.now()
    for (const [key, b] of this.#buckets) {
      const elapsed = (now - b.at) / 1000
      if (
        b.messages + elapsed * l.messagesPerSecond >= l.messageBurst &&
        b.bytes + elapsed * l.bytesPerSecond >= l.byteBurst
      ) {
        this.#buckets.delete(key)
      }
    }
  }
}
