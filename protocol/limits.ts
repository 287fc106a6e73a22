/** Size limits and protocol constants in force (DESIGN.md §6). Each is also an option where it matters. */

/** Largest payload plaintext (encoded) one envelope may carry; larger data goes as `stream` chunks. */
export const MAX_PAYLOAD_BYTES = 60 * 1024
/** Largest encoded envelope. */
export const MAX_ENVELOPE_BYTES = 64 * 1024
/** Largest frame the application accepts; a larger one gets `MESH_ERR_FRAME_TOO_LARGE` and the socket stays open. */
export const MAX_FRAME_BYTES = 72 * 1024
/** `ws` maxPayload: above it the socket is closed 1009. */
export const MAX_WS_PAYLOAD_BYTES = 1024 * 1024

/** Session attestations: default lifetime and the cap above which they are refused. */
export const SESSION_ATTESTATION_TTL_MS = 12 * 60 * 60 * 1000
export const SESSION_ATTESTATION_MAX_TTL_MS = 24 * 60 * 60 * 1000

/** WebSocket close codes (DESIGN.md §3). */
export const CLOSE = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  POLICY: 1008,
  TOO_BIG: 1009,
  TOO_SLOW: 1013,
  KICKED: 4001,
  REVOKED: 4002,
  REPLACED: 4003,
  UNSUPPORTED_VERSION: 4010,
} as const

/** Close codes after which a client must not reconnect. */
export const TERMINAL_CLOSE_CODES: ReadonlySet<number> = new Set([
  CLOSE.KICKED,
  CLOSE.REVOKED,
  CLOSE.UNSUPPORTED_VERSION,
])
