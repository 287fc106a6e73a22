/**
 * The peers this runtime knows: every presence record the coordinator reported (`list_peers`, `presence`
 * events), kept only once `MeshView.verifyPeer` accepted it. Sealing, P2P and `vouch` read from here, so
 * a key the roster does not vouch for is never in it. Presence facts (online, status, capabilities) are
 * the coordinator's word and only steer transport choice; trust comes from the view.
 */
import { decode } from '../protocol/codec.js'
import { toHex } from '../protocol/encoding.js'
import type { PeerRecord } from '../protocol/frames.js'
import { capabilitiesSchema, type Capabilities } from '../protocol/hello.js'
import { parse } from '../protocol/schema.js'
import type { MeshView, VerifiedPeer } from './mesh-view.js'

/** A verified peer with what the coordinator last said about its presence. */
export interface KnownPeer extends VerifiedPeer {
  online: boolean
  status: PeerRecord['status']
  summary?: string
  capabilities?: Capabilities
}

/** Why a record was not taken. */
export interface RefusedRecord {
  record: PeerRecord
  error: Error
}

export class PeerDirectory {
  readonly #view: MeshView
  readonly #peers = new Map<string, KnownPeer>()

  constructor(view: MeshView) {
    this.#view = view
  }

  /** Verifies and records `record`; returns the peer, or the refusal. */
  take(record: PeerRecord, now: number): KnownPeer | RefusedRecord {
    let verified: VerifiedPeer
    try {
      verified = this.#view.verifyPeer(record, now)
    } catch (error) {
      this.#peers.delete(toHex(record.pk))
      return { record, error: error as Error }
    }
    const capabilities = readCapabilities(record.capabilities)
    const peer: KnownPeer = {
      ...verified,
      online: record.online,
      status: record.status,
      ...(record.summary !== undefined && { summary: record.summary }),
      ...(capabilities !== undefined && { capabilities }),
    }
    this.#peers.set(toHex(record.pk), peer)
    return peer
  }

  /** Marks a known peer offline (a `presence{left}`), keeping what vouches for it. */
  markOffline(pk: Uint8Array): KnownPeer | undefined {
    const peer = this.#peers.get(toHex(pk))
    if (peer !== undefined) peer.online = false
    return peer
  }

  /**
   * The peer, if it is known and the view still vouches for it (and its attestation has not run out). A
   * member key of the verified roster is always known, even one that never connected: a DM to it is
   * queued for the member's daemon.
   */
  get(pk: Uint8Array, now: number): KnownPeer | undefined {
    const hex = toHex(pk)
    const peer = this.#peers.get(hex)
    if (peer === undefined) return this.#member(pk)
    if (!this.#view.stillVouches(peer) || (peer.expiresAt !== undefined && peer.expiresAt <= now)) {
      this.#peers.delete(hex)
      return undefined
    }
    return peer
  }

  #member(pk: Uint8Array): KnownPeer | undefined {
    const state = this.#view.state
    if (state.roleOf(pk) === undefined) return undefined
    const displayName = state.displayNames.get(toHex(pk))
    return {
      pk: Uint8Array.from(pk),
      memberPk: Uint8Array.from(pk),
      role: 'control-plane',
      online: false,
      status: 'idle',
      ...(displayName !== undefined && { displayName }),
    }
  }

  /** Online, advertises p2p, and vouched for. */
  reachableP2P(pk: Uint8Array, now: number): boolean {
    const peer = this.get(pk, now)
    return peer !== undefined && peer.online && peer.capabilities?.p2p === true
  }
}

function readCapabilities(bytes: Uint8Array | undefined): Capabilities | undefined {
  if (bytes === undefined) return undefined
  try {
    return parse(capabilitiesSchema, decode(bytes), 'MESH_ERR_MALFORMED_FRAME', 'capabilities')
  } catch {
    return undefined
  }
}
