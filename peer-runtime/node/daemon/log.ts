/**
 * The daemon's log seam: pino JSON lines on stderr (fd 2) by default, one line per runtime error, refused
 * hello, reconnect and stop. Fields are metadata only (mesh, role, session id, error code and message):
 * never a message body, so a log can be shared without leaking what agents said to each other.
 */
import pino from 'pino'
import { isMeshError } from '../../../protocol/errors.js'

/** What the daemon logs through: a pino `Logger` fits, and tests pass one writing to memory. */
export interface DaemonLog {
  info(fields: object, msg: string): void
  warn(fields: object, msg: string): void
  error(fields: object, msg: string): void
}

/** pino to stderr, synchronously (the line about a crash must reach the file before the process dies). */
export function stderrLog(): DaemonLog {
  return pino(
    { base: { pid: process.pid, name: 'agentmesh-daemon' } },
    pino.destination({ fd: 2, sync: true }),
  )
}

/** `{code, err}` of an error, for a log line: its code and message, never its details (they may quote input). */
export function errorFields(err: unknown): { code?: string; err?: string } {
  if (err === undefined) return {}
  if (isMeshError(err)) return { code: err.code, err: err.message }
  return { err: errorText(err) }
}

/** The message of any thrown value. */
export function errorText(err: unknown): string {
  if (err instanceof Error) return err.message
  return typeof err === 'string' ? err : JSON.stringify(err)
}
