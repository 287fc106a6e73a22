/**
 * The runtime's own, verified copy of its mesh's state. It replays the coordinator-signed `mesh_event`
 * log through the same `MeshState.apply` the coordinator uses, on a `Roster` rooted in the owner key
 * pinned from the invite: every member addition is an owner- or admin-signed roster record, or an
 * invite plus the newcomer's join signature, checked here. So a coordinator can delay or drop changes but
 * cannot add a key this runtime will seal to: `verifyPeer` accepts a presence only when its member is in
 * this roster (not revoked) and, for a session or service key, the member signed its attestation.
 *
 * Events apply strictly in order (`prevVersion` must equal the current version); one that does not fit
 * leaves the view as it is and tells the caller to catch up with `mesh_events{since}`.
 *
 * `snapshot()` and `restore()` save and load the view (`mesh-snapshot.ts`): a restored roster is
 * re-verified from the signed records it was built of, so a restart needs only the events since.
 */
import { bytesEqual, toHex } from '../protocol/encoding.js'
import { MeshError } from '../protocol/errors.js'
import type { PeerRecord } from '../protocol/frames.js'
import { verifyServiceAttestation, verifySessionAttestation } from '../protocol/attestation.js'
import { MeshState } from '../protocol/mesh-state.js'
import type { Signed } from '../protocol/signing.js'
import { verifySystemEvent, type SystemEventFields } from '../protocol/system-event.js'
import {
  AUTHORITY_KINDS,
  decodeMeshSnapshot,
  encodeMeshSnapshot,
  type AuthorityEvent,
} from './mesh-snapshot.js'

/** A presence whose chain this view verified. */
export interface VerifiedPeer {
  pk: Uint8Array
  memberPk: Uint8Array
  role: PeerRecord['role']
  sessionId?: string
  displayName?: string
  /** When the attestation that vouches for a session or service key runs out (absent for a member key). */
  expiresAt?: number
}

/** What applying a batch of events did. */
export interface ApplyResult {
  applied: number
  /** True when an event did not follow the current version: ask `mesh_events{since: version}`. */
  gap: boolean
}

export class MeshView {
  readonly mesh: string
  readonly ownerPk: Uint8Array
  readonly #coordinatorPk: Uint8Array
  #state: MeshState
  /** The genesis, roster and join events applied, in order: what a snapshot re-verifies on load. */
  #authority: AuthorityEvent[] = []
  /** The signature of the event at `version` (when the view knows it). */
  #lastSig: Uint8Array | undefined
  #restored = false

  constructor(o: { mesh: string; ownerPk: Uint8Array; coordinatorPk: Uint8Array }) {
    this.mesh = o.mesh
    this.ownerPk = Uint8Array.from(o.ownerPk)
    this.#coordinatorPk = Uint8Array.from(o.coordinatorPk)
    this.#state = new MeshState(o.mesh, this.ownerPk)
  }

  /** True while the state came from a snapshot rather than from a replay of the log since genesis. */
  get restored(): boolean {
    return this.#restored
  }

  /** The signature of the event at `version`, if the view applied or restored it. */
  get lastSig(): Uint8Array | undefined {
    return this.#lastSig
  }

  /** The view as bytes for `restore` (see `mesh-snapshot.ts` for what is kept and what is trusted). */
  snapshot(): Uint8Array {
    return encodeMeshSnapshot({
      state: this.#state,
      coordinatorPk: this.#coordinatorPk,
      authority: this.#authority,
      lastSig: this.#lastSig,
    })
  }

  /**
   * Replaces the state with a snapshot's. Throws (and changes nothing) when the bytes do not decode, are
   * of another mesh, owner or coordinator key, or hold a roster change the roster refuses.
   */
  restore(bytes: Uint8Array): void {
    const r = decodeMeshSnapshot(bytes, {
      mesh: this.mesh,
      ownerPk: this.ownerPk,
      coordinatorPk: this.#coordinatorPk,
    })
    this.#state = r.state
    this.#authority = r.authority
    this.#lastSig = r.lastSig
    this.#restored = true
  }

  /**
   * True when `records`, the coordinator's log from `version - 1` on (`mesh_events{since: version - 1}`),
   * still holds the very event this view is at: a coordinator that reports a lower version than ours
   * from a stale cache, rather than one whose log lost our events (restored from a backup).
   */
  logHolds(records: readonly Signed[]): boolean {
    const record = records[0]
    if (record === undefined || this.#lastSig === undefined) return false
    try {
      const f = verifySystemEvent(record, { coordinatorPk: this.#coordinatorPk, mesh: this.mesh })
      return f.version === this.#state.version && bytesEqual(record.sig, this.#lastSig)
    } catch {
      return false
    }
  }

  /** Back to genesis (version 0): the next catch-up replays the whole log. */
  reset(): void {
    this.#state = new MeshState(this.mesh, this.ownerPk)
    this.#authority = []
    this.#lastSig = undefined
    this.#restored = false
  }

  /** The version of the last applied event (0 before genesis). */
  get version(): number {
    return this.#state.version
  }

  /** The verified state (read only: change it through `apply`). */
  get state(): MeshState {
    return this.#state
  }

  /**
   * Applies signed events in order. Each is verified against the pinned coordinator key; an event at or
   * below the current version is skipped (already applied), a later one that does not follow stops the
   * batch (`gap`). An event whose content fails verification (a roster record nobody authorised) throws
   * its `MeshError` and leaves the view at the version before it.
   */
  applyEvents(events: readonly Signed[]): ApplyResult {
    let applied = 0
    for (const record of events) {
      const f = verifySystemEvent(record, { coordinatorPk: this.#coordinatorPk, mesh: this.mesh })
      if (f.version <= this.#state.version) continue
      if (f.prevVersion !== this.#state.version) return { applied, gap: true }
      this.#apply(f, record.sig)
      applied++
    }
    return { applied, gap: false }
  }

  /**
   * Applies one verified event (from a `system` envelope, whose `sig` is the event's); same rules as
   * `applyEvents`.
   */
  applyEvent(f: SystemEventFields, sig?: Uint8Array): ApplyResult {
    if (f.mesh !== this.mesh) {
      throw new MeshError('MESH_ERR_WRONG_MESH', `system event is for mesh ${f.mesh}, not ${this.mesh}`)
    }
    if (f.version <= this.#state.version) return { applied: 0, gap: false }
    if (f.prevVersion !== this.#state.version) return { applied: 0, gap: true }
    this.#apply(f, sig)
    return { applied: 1, gap: false }
  }

  /**
   * Checks a presence record against this view. Throws `MESH_ERR_UNKNOWN_KEY` when its member is not in
   * the verified roster, `MESH_ERR_REVOKED` when the key or its member was revoked, and the attestation's
   * own codes (`MESH_ERR_BAD_SIGNATURE`, `MESH_ERR_WRONG_SIGNER`, `MESH_ERR_EXPIRED`, …) when it does not
   * vouch for the key.
   */
  verifyPeer(record: PeerRecord, now: number): VerifiedPeer {
    const state = this.#state
    const pkHex = toHex(record.pk)
    const memberHex = toHex(record.memberPk)
    if (state.revoked.has(pkHex) || state.revoked.has(memberHex)) {
      throw new MeshError('MESH_ERR_REVOKED', `key ${pkHex.slice(0, 12)}… was revoked`, {
        details: { pk: pkHex },
      })
    }
    if (!state.roster.isMember(record.memberPk)) {
      throw new MeshError(
        'MESH_ERR_UNKNOWN_KEY',
        `member ${memberHex.slice(0, 12)}… is not in the verified roster`,
        {
          details: { pk: pkHex, memberPk: memberHex, stateVersion: state.version },
        },
      )
    }
    const base = {
      pk: Uint8Array.from(record.pk),
      memberPk: Uint8Array.from(record.memberPk),
      role: record.role,
      ...(record.displayName !== undefined && { displayName: record.displayName }),
    }
    if (record.role === 'control-plane') {
      if (!bytesEqual(record.pk, record.memberPk)) {
        throw new MeshError('MESH_ERR_FIELD_MISMATCH', 'a control-plane presence must use its member key', {
          details: { field: 'pk' },
        })
      }
      return base
    }
    if (record.attestation === undefined) {
      throw new MeshError('MESH_ERR_UNKNOWN_KEY', `key ${pkHex.slice(0, 12)}… carries no attestation`, {
        details: { pk: pkHex },
      })
    }
    const o = { mesh: this.mesh, memberPk: record.memberPk, now }
    if (record.role === 'session') {
      const f = verifySessionAttestation(record.attestation, { ...o, sessionPk: record.pk })
      return { ...base, sessionId: f.sessionId, expiresAt: f.expiresAt }
    }
    const f = verifyServiceAttestation(record.attestation, { ...o, servicePk: record.pk })
    return { ...base, sessionId: f.serviceId, expiresAt: f.expiresAt }
  }

  /** True while `pk` (a key this view verified) and its member are neither removed nor revoked. */
  stillVouches(peer: VerifiedPeer): boolean {
    const state = this.#state
    if (state.revoked.has(toHex(peer.pk)) || state.revoked.has(toHex(peer.memberPk))) return false
    return state.roster.isMember(peer.memberPk)
  }

  #apply(f: SystemEventFields, sig: Uint8Array | undefined): void {
    // The invite's expiry was checked by the coordinator when it accepted the join; the log does not
    // carry that moment, so replay checks the chain of authority only (time 0 is before every expiry).
    const next = this.#state
    if (f.kind === 'genesis') {
      const genesis = f.body as Record<string, unknown> | null
      const owner = genesis?.['ownerPk']
      if (!(owner instanceof Uint8Array) || !bytesEqual(owner, this.ownerPk)) {
        throw new MeshError(
          'MESH_ERR_WRONG_SIGNER',
          'the mesh genesis names another owner than the pinned one',
        )
      }
    }
    const body = (f.body ?? {}) as Record<string, unknown>
    next.apply(f.kind, body, 0)
    next.version = f.version
    if (AUTHORITY_KINDS.has(f.kind)) this.#authority.push({ kind: f.kind, body })
    this.#lastSig = sig === undefined ? undefined : Uint8Array.from(sig)
  }
}
