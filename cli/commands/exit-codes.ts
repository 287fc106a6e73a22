/**
 * The CLI's one exit-code table (README.md, "Exit codes", lists the same): what a script may branch on.
 * Any `MeshError` not named here exits 1 with its code on stderr. The codes in the 20s say the coordinator
 * refused this presence for good, which no retry fixes: long-running commands exit with them instead of
 * reconnecting.
 */
import { isMeshError, type MeshError } from '../../protocol/errors.js'
import { isPeerNameError } from './peer/resolve.js'

export const EXIT = {
  /** Done; or a long-running command stopped by SIGINT or SIGTERM after a clean close. */
  OK: 0,
  /** A failure with its `MESH_ERR_…` code on stderr (and `{error}` on stdout with `--json`). */
  ERROR: 1,
  /** A bad option or argument: clipanion's "Usage Error". */
  USAGE: 2,
  /** `daemon status`: no daemon runs on this home (as `systemctl status` says 3). */
  NOT_RUNNING: 3,
  /** A one-shot command could not reach the coordinator in time (`MESH_ERR_COORDINATOR_UNREACHABLE`). */
  UNREACHABLE: 4,
  /** Another process holds this presence's store (`MESH_ERR_STORE_LOCKED`, naming its pid). */
  STORE_LOCKED: 5,
  /** A peer name (or key prefix) that matches no verified peer, or several members (`MESH_ERR_UNKNOWN_KEY`). */
  NO_SUCH_PEER: 6,
  /** `doctor`: at least one check failed (each says what to do). */
  DOCTOR_FAILED: 7,
  /** This key or its member was revoked (close 4002, `MESH_ERR_REVOKED`). */
  REVOKED: 20,
  /** An admin kicked this presence (close 4001). */
  KICKED: 21,
  /** Another process connected with the same key and replaced this one (close 4003). */
  REPLACED: 22,
  /** The coordinator does not know this member (`MESH_ERR_UNKNOWN_KEY` refusing the hello). */
  NOT_A_MEMBER: 23,
  /** The coordinator holds no such mesh any more (`MESH_ERR_UNKNOWN_MESH`). */
  MESH_GONE: 24,
  /** No protocol version in common with the coordinator (close 4010). */
  UNSUPPORTED_VERSION: 25,
  /** The command ended without finishing: a bug (the process had nothing left to wait on). */
  INTERNAL: 70,
} as const

/** Errors that stopped a coordinator connection for good (as opposed to a refused request). */
const connectionStops = new WeakSet<MeshError>()

/** Marks `err` as what stopped the presence's connection, so its exit code is one of the 20s. */
export function connectionStopped(err: MeshError): MeshError {
  connectionStops.add(err)
  return err
}

/** The exit code of a command that failed with `err` (see `EXIT`). */
export function exitCodeOf(err: unknown): number {
  if (!isMeshError(err)) return EXIT.ERROR
  if (isPeerNameError(err)) return EXIT.NO_SUCH_PEER
  switch (err.code) {
    case 'MESH_ERR_COORDINATOR_UNREACHABLE':
      return EXIT.UNREACHABLE
    case 'MESH_ERR_STORE_LOCKED':
      return EXIT.STORE_LOCKED
    case 'MESH_ERR_REVOKED':
      return EXIT.REVOKED
    case 'MESH_ERR_SESSION_REPLACED':
      return EXIT.REPLACED
    case 'MESH_ERR_UNSUPPORTED_VERSION':
      return EXIT.UNSUPPORTED_VERSION
    default:
      break
  }
  // The same codes answer ordinary requests too ("no peer named carol" is MESH_ERR_UNKNOWN_KEY): only a
  // connection's stop means the presence itself is refused.
  if (!connectionStops.has(err)) return EXIT.ERROR
  if (err.code === 'MESH_ERR_NOT_AUTHORIZED' && err.details?.['code'] === 4001) return EXIT.KICKED
  if (err.code === 'MESH_ERR_UNKNOWN_KEY') return EXIT.NOT_A_MEMBER
  if (err.code === 'MESH_ERR_UNKNOWN_MESH') return EXIT.MESH_GONE
  return EXIT.ERROR
}
