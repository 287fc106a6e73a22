/**
 * The fingerprint the coordinator's dedupe keeps of each accepted envelope: SHA-256 of the bytes as the
 * sender encoded them. Only the coordinator computes and compares it (a retry with the same id must
 * carry the same bytes, or it is `MESH_ERR_IDEMPOTENCY_CONFLICT`); it never travels on the wire.
 *
 * Not BLAKE2b from the crypto module: every send pays this over the whole envelope, and node:crypto's
 * SHA-256 (OpenSSL, with the CPU's SHA instructions) takes about 60 µs for a 60 KiB envelope where
 * libsodium's WebAssembly BLAKE2b took about 150 µs, a sixth of the coordinator's CPU per 60 KiB DM
 * (bench `relay`). Only the sender can write under its own key, so what is at stake is the sender's
 * own retries, not other peers' messages.
 */
import { hash } from 'node:crypto'

/** The dedupe fingerprint of `envelope` (32 bytes, owned by the caller). */
export function dedupeFingerprint(envelope: Uint8Array): Uint8Array {
  // A copy of the 32 bytes: a small Buffer may be a view into a shared pool that the window would pin.
  // The one-shot hash() makes no Hash object (about 0.5 µs of a 1 KiB DM's 2 µs).
  return new Uint8Array(hash('sha256', envelope, 'buffer'))
}
