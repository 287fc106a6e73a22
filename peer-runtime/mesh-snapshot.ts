/**
 * The saved form of a `MeshView`, so a restart asks the coordinator only for events after the version it
 * reached (`mesh_events{since: version}`) instead of replaying the whole log (docs/ARCHITECTURE.md, "Trust").
 *
 * What it holds, and how much of it is trusted on load:
 * - the authority log: every `genesis`, `roster` and `join` body the view applied, in log order. On load
 *   they are applied again through `MeshState.apply`, so the roster is re-verified from the owner's and
 *   admins' signatures: a snapshot edited by hand still cannot add a key nobody with authority signed.
 *   Its cost grows with roster changes, not with the log.
 * - everything else (groups, topics, revocations, names, services, settings) as plain values, taken as
 *   they are: in the log they carry only the coordinator's signature, and the file is the runtime's own
 *   (mode 0600, beside its secret key), so whoever can rewrite it can already act as this runtime.
 * - the version, the signature of the event at that version (to tell, when a coordinator reports a lower
 *   version, whether its log still holds ours), and the mesh, owner and coordinator keys it belongs to.
 */
import { decode, encode } from '../protocol/codec.js'
import { bytesEqual } from '../protocol/encoding.js'
import { MeshError } from '../protocol/errors.js'
import { keySchema, meshIdSchema } from '../protocol/ids.js'
import { MeshState } from '../protocol/mesh-state.js'
import { any, arr, bin, bool, literal, nullable, obj, parse, str, tuple, uint } from '../protocol/schema.js'

/** The snapshot's layout version; another one is not read (the view is replayed instead). */
export const MESH_SNAPSHOT_FORMAT = 1

/** The event kinds whose bodies the roster re-verifies on load. */
export const AUTHORITY_KINDS: ReadonlySet<string> = new Set(['genesis', 'roster', 'join'])

const MANY = 10_000_000
const hexKey = str({ min: 64, max: 64 })
const hexKeys = arr(hexKey, { max: MANY })
const snapshotSchema = obj({
  format: literal(MESH_SNAPSHOT_FORMAT),
  mesh: meshIdSchema,
  ownerPk: keySchema,
  coordinatorPk: keySchema,
  version: uint(),
  lastSig: nullable(bin({ max: 1024 })),
  authority: arr(tuple([str({ min: 1, max: 64 }), any()]), { max: MANY }),
  groups: arr(tuple([str({ max: 64 }), hexKeys]), { max: MANY }),
  topics: arr(tuple([str({ max: 256 }), nullable(hexKey), nullable(hexKeys), uint(), nullable(uint())]), {
    max: MANY,
  }),
  revoked: hexKeys,
  displayNames: arr(tuple([hexKey, str({ max: 1024 })]), { max: MANY }),
  services: arr(tuple([hexKey, str({ max: 1024 }), hexKey, arr(str({ max: 1024 }), { max: MANY })]), {
    max: MANY,
  }),
  allowPlaintext: bool(),
})

/** One applied authority event: its kind and body as the log carried them. */
export interface AuthorityEvent {
  kind: string
  body: Record<string, unknown>
}

/** What a snapshot is taken of. */
export interface SnapshotSource {
  state: MeshState
  coordinatorPk: Uint8Array
  authority: readonly AuthorityEvent[]
  lastSig: Uint8Array | undefined
}

/** Encodes the state a view reached. */
export function encodeMeshSnapshot(s: SnapshotSource): Uint8Array {
  const state = s.state
  return encode({
    format: MESH_SNAPSHOT_FORMAT,
    mesh: state.id,
    ownerPk: state.ownerPk,
    coordinatorPk: s.coordinatorPk,
    version: state.version,
    lastSig: s.lastSig ?? null,
    authority: s.authority.map((e) => [e.kind, e.body]),
    groups: [...state.groups].map(([name, members]) => [name, [...members]]),
    topics: [...state.topics].map(([name, t]) => [
      name,
      t.creator ?? null,
      t.acl === undefined ? null : [...t.acl],
      t.keyEpoch,
      t.retentionMs ?? null,
    ]),
    revoked: [...state.revoked],
    displayNames: [...state.displayNames],
    services: [...state.services].map(([pk, v]) => [pk, v.id, v.memberHex, v.scopes]),
    allowPlaintext: state.allowPlaintext,
  })
}

/** What `decodeMeshSnapshot` rebuilt. */
export interface RestoredView {
  state: MeshState
  authority: AuthorityEvent[]
  lastSig: Uint8Array | undefined
}

/**
 * Rebuilds a view's state from `bytes` for the mesh, owner and coordinator given, re-verifying the
 * authority log. Throws a `MeshError` when the bytes do not decode, are another format, belong to another
 * mesh, owner or coordinator key, or hold a roster record or join the roster refuses.
 */
export function decodeMeshSnapshot(
  bytes: Uint8Array,
  expect: { mesh: string; ownerPk: Uint8Array; coordinatorPk: Uint8Array },
): RestoredView {
  const s = parse(snapshotSchema, decode(bytes), 'MESH_ERR_MALFORMED_FRAME', 'mesh view snapshot')
  if (
    s.mesh !== expect.mesh ||
    !bytesEqual(s.ownerPk, expect.ownerPk) ||
    !bytesEqual(s.coordinatorPk, expect.coordinatorPk)
  ) {
    throw new MeshError(
      'MESH_ERR_WRONG_MESH',
      'the saved mesh view is of another mesh, owner or coordinator',
      {
        details: { mesh: s.mesh },
      },
    )
  }
  const state = new MeshState(expect.mesh, Uint8Array.from(expect.ownerPk))
  const authority: AuthorityEvent[] = []
  for (const [kind, body] of s.authority) {
    if (!AUTHORITY_KINDS.has(kind) || typeof body !== 'object' || body === null) {
      throw new MeshError('MESH_ERR_MALFORMED_FRAME', `the saved authority log holds a ${kind} event`)
    }
    const event = { kind, body: body as Record<string, unknown> }
    // As the view applied it the first time: time 0, the chain of authority only (departure 21).
    state.apply(event.kind, event.body, 0)
    authority.push(event)
  }
  // The roster replay also touched groups and names (a removal leaves its groups): the saved values win.
  state.groups.clear()
  for (const [name, members] of s.groups) state.groups.set(name, new Set(members))
  for (const [name, creator, acl, keyEpoch, retentionMs] of s.topics) {
    state.topics.set(name, {
      creator: creator ?? undefined,
      acl: acl === null ? undefined : new Set(acl),
      keyEpoch,
      retentionMs: retentionMs ?? undefined,
    })
  }
  for (const hex of s.revoked) state.revoked.add(hex)
  state.displayNames.clear()
  for (const [hex, name] of s.displayNames) state.displayNames.set(hex, name)
  for (const [pk, id, memberHex, scopes] of s.services) state.services.set(pk, { id, memberHex, scopes })
  state.allowPlaintext = s.allowPlaintext
  state.version = s.version
  return { state, authority, lastSig: s.lastSig === null ? undefined : Uint8Array.from(s.lastSig) }
}
