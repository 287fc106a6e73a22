import type { PeerEntry } from '../peer/resolve.js'

/**
 * Display names of senders for printing, looked up (the mesh's verified peers, offline ones too) when a
 * key is new. A name is a nicety: after a lookup none is made for 2 s (10 s after one that failed), and
 * the key is shown meanwhile.
 */
export class SenderNames {
  readonly #lookup: () => Promise<PeerEntry[]>
  readonly #known = new Map<string, string>()
  #quietUntil = 0

  constructor(lookup: () => Promise<PeerEntry[]>) {
    this.#lookup = lookup
  }

  /** The name of `hex` (a presence key or a member key), or undefined. */
  async of(hex: string): Promise<string | undefined> {
    if (!this.#known.has(hex) && Date.now() >= this.#quietUntil) {
      try {
        for (const p of await this.#lookup()) {
          if (p.displayName === null) continue
          this.#known.set(p.pk, p.displayName)
          if (p.role === 'control-plane' || !this.#known.has(p.memberPk)) {
            this.#known.set(p.memberPk, p.displayName)
          }
        }
        // Each lookup may cost a connection: a key still unknown now waits a little for the next one.
        this.#quietUntil = Date.now() + 2_000
      } catch {
        this.#quietUntil = Date.now() + 10_000
      }
    }
    return this.#known.get(hex)
  }
}
