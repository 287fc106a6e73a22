/**
 * System events: the mesh-state log, signed by the coordinator key over
 *
 *     [mesh, version, prevVersion, kind, body]
 *
 * Each event names the version it follows, so a peer applies an event only on top of exactly that version
 * and notices a gap (then asks `mesh_events{since}`) instead of silently skipping state. Events carry
 * roster records, joins, revocations and group changes in `body`; authority over those is re-checked by
 * the roster, the coordinator's signature only proves the order it published.
 */
import { MeshError } from './errors.js'
import { meshIdSchema } from './ids.js'
import { assertPublicKey, type Identity } from './keys.js'
import { any, parse, str, tuple, uint } from './schema.js'
import { openSigned, signFields, type Signed } from './signing.js'

const kindSchema = str({ min: 1, max: 64 })
const eventArray = tuple([meshIdSchema, uint(), uint(), kindSchema, any()])

/** The fields of a system event whose signature verified. */
export interface SystemEventFields {
  mesh: string
  version: number
  prevVersion: number
  kind: string
  body: unknown
}

/** Options of `signSystemEvent`. */
export interface SignSystemEvent {
  coordinator: Pick<Identity, 'secretKey'>
  mesh: string
  version: number
  prevVersion: number
  kind: string
  /** Any msgpack value. */
  body: unknown
}

/** Throws `MESH_ERR_MALFORMED_FRAME` unless `version` is above `prevVersion`. */
export function assertAdvances(version: number, prevVersion: number): void {
  if (version <= prevVersion) {
    throw new MeshError(
      'MESH_ERR_MALFORMED_FRAME',
      `system event version ${version} does not follow ${prevVersion}`,
      {
        details: { version, prevVersion },
      },
    )
  }
}

/** Signs a system event with the coordinator key. */
export function signSystemEvent(o: SignSystemEvent): Signed {
  const fields = [o.mesh, o.version, o.prevVersion, o.kind, o.body ?? null]
  parse(eventArray, fields, 'MESH_ERR_MALFORMED_FRAME', 'system-event fields')
  assertAdvances(o.version, o.prevVersion)
  return signFields('system-event', fields, o.coordinator.secretKey)
}

/**
 * Verifies a system event against the pinned coordinator key and the mesh it must belong to. Errors:
 * `MESH_ERR_MALFORMED_KEY`, `MESH_ERR_BAD_SIGNATURE`, `MESH_ERR_WRONG_MESH`, `MESH_ERR_MALFORMED_FRAME`
 * (a version that does not advance).
 */
export function verifySystemEvent(
  record: Signed,
  o: { coordinatorPk: Uint8Array; mesh: string },
): SystemEventFields {
  assertPublicKey(o.coordinatorPk, 'coordinator key')
  const [mesh, version, prevVersion, kind, body] = openSigned(
    'system-event',
    record,
    o.coordinatorPk,
    eventArray,
  )
  if (mesh !== o.mesh) {
    throw new MeshError('MESH_ERR_WRONG_MESH', `system event is for mesh ${mesh}, not ${o.mesh}`, {
      details: { expected: o.mesh, got: mesh },
    })
  }
  assertAdvances(version, prevVersion)
  return { mesh, version, prevVersion, kind, body }
}

/** True when the event applies on top of `currentVersion`: its `prevVersion` is exactly that. */
export function applies(event: Pick<SystemEventFields, 'prevVersion'>, currentVersion: number): boolean {
  return event.prevVersion === currentVersion
}
