/**
 * Keeps a live presence's attestation fresh: at half its TTL the source is asked again (it re-mints) and
 * the new one goes to the coordinator as `attest_refresh`, so the record other peers verify never runs
 * out while the connection lasts. The source is also asked at every hello, which covers reconnects.
 */
import {
  attestedMember,
  remintAt,
  verifyServiceAttestation,
  verifySessionAttestation,
} from '../protocol/attestation.js'
import type { Clock, ClockTimer } from '../protocol/clock.js'
import { bytesEqual } from '../protocol/encoding.js'
import type { HelloRole } from '../protocol/hello.js'
import { SESSION_ATTESTATION_TTL_MS } from '../protocol/limits.js'
import type { Signed } from '../protocol/signing.js'

/** A source that does not re-mint yet is asked again no sooner than this. */
const MIN_RETRY_MS = 60_000

export interface AttestationRefresherInit {
  source: () => Signed
  role: Exclude<HelloRole, 'control-plane'>
  mesh: string
  clock: Clock
  /** The TTL the source mints with (default 12 h): the refresh comes at half of it. */
  ttlMs?: number
  /** Sends the fresh attestation; resolves false when there is no connection to send it on. */
  send: (attestation: Signed) => Promise<boolean>
  onError: (err: unknown) => void
}

export class AttestationRefresher {
  readonly #o: AttestationRefresherInit
  #timer: ClockTimer | undefined

  constructor(o: AttestationRefresherInit) {
    this.#o = o
  }

  /** (Re)arms the timer for the current attestation; called after every accepted hello. */
  schedule(): void {
    this.cancel()
    const current = this.#o.source()
    let expiresAt: number
    try {
      expiresAt = attestationExpiry(current, this.#o.mesh, this.#o.role, this.#o.clock.now())
    } catch {
      return
    }
    const ttl = this.#o.ttlMs ?? SESSION_ATTESTATION_TTL_MS
    const delay = Math.max(MIN_RETRY_MS, remintAt(expiresAt, ttl) - this.#o.clock.now())
    this.#timer = this.#o.clock.setTimeout(() => void this.#refresh(current), delay)
  }

  cancel(): void {
    this.#timer?.cancel()
    this.#timer = undefined
  }

  async #refresh(previous: Signed): Promise<void> {
    const next = this.#o.source()
    let connected = true
    if (!bytesEqual(next.sig, previous.sig)) {
      connected = await this.#o.send(next).catch((err: unknown) => (this.#o.onError(err), true))
    }
    if (connected) this.schedule()
  }
}

/** When a session or service attestation runs out (its signer is checked, not its membership). */
function attestationExpiry(att: Signed, mesh: string, role: HelloRole, now: number): number {
  const o = { mesh, memberPk: attestedMember(att), now }
  return role === 'service'
    ? verifyServiceAttestation(att, o).expiresAt
    : verifySessionAttestation(att, o).expiresAt
}
