/**
 * How every command that takes a peer finds it: a display name, a full key, or a unique key prefix,
 * matched against the mesh's verified peers (from the runtime directly or from the daemon's
 * `GET /v1/peers`). A name or prefix that matches nobody, or several members, is an error that lists the
 * candidates (name and key) and exits 6, never a message sealed to a guess.
 */
import { toHex } from '../../../protocol/encoding.js'
import { MeshError } from '../../../protocol/errors.js'
import type { KnownPeer } from '../../../peer-runtime/directory.js'

/** One verified presence as `peer list --json` prints it (and the daemon's `GET /v1/peers` gives it). */
export interface PeerEntry {
  pk: string
  memberPk: string
  role: KnownPeer['role']
  sessionId: string | null
  displayName: string | null
  online: boolean
  /** The presence's own status (idle, working, dnd), when it set one. */
  status: string | null
}

/** Who a command addresses: the presence key, and the display name it has in the mesh (if any). */
export interface ResolvedPeer {
  pk: string
  displayName?: string
}

/** The least length of a key prefix (shorter hex strings are read as names only). */
export const MIN_PREFIX = 4

/** A runtime `KnownPeer` as an entry. */
export function knownPeerEntry(p: KnownPeer): PeerEntry {
  return {
    pk: toHex(p.pk),
    memberPk: toHex(p.memberPk),
    role: p.role,
    sessionId: p.sessionId ?? null,
    displayName: p.displayName ?? null,
    online: p.online,
    status: p.status ?? null,
  }
}

/** Errors that mean "that peer name is not one": their exit code is `EXIT.NO_SUCH_PEER` (exit-codes.ts). */
const nameErrors = new WeakSet<MeshError>()

/** Whether `err` came from `resolvePeer` (an unknown or ambiguous name). */
export function isPeerNameError(err: MeshError): boolean {
  return nameErrors.has(err)
}

/**
 * `to` among `peers`: a display name (exact, else case-insensitive) stands for its member, addressed at
 * the member key (where DMs to the member arrive: its `listen` or daemon, or queued for them), whichever
 * of its presences are listed; a 64-hex key is taken as it is; a prefix (at least `MIN_PREFIX` hex
 * characters) of one listed presence key or member key stands for that key. Throws
 * `MESH_ERR_UNKNOWN_KEY`, marked as a name error and listing the candidates, when `to` matches nobody or
 * more than one key.
 */
export function resolvePeer(peers: readonly PeerEntry[], to: string): ResolvedPeer {
  if (/^[0-9a-fA-F]{64}$/.test(to)) {
    const pk = to.toLowerCase()
    const name = peers.find((p) => p.pk === pk || p.memberPk === pk)?.displayName
    return { pk, ...(name !== undefined && name !== null && { displayName: name }) }
  }
  let named = peers.filter((p) => p.displayName === to)
  if (named.length === 0) named = peers.filter((p) => p.displayName?.toLowerCase() === to.toLowerCase())
  // Each candidate key, with a presence that carries it (for its name).
  const targets = new Map<string, PeerEntry>()
  for (const p of named) targets.set(p.memberPk, p)
  if (named.length === 0 && /^[0-9a-fA-F]+$/.test(to) && to.length >= MIN_PREFIX) {
    const hex = to.toLowerCase()
    for (const p of peers) {
      if (p.pk.startsWith(hex)) targets.set(p.pk, p)
      if (p.memberPk.startsWith(hex) && !targets.has(p.memberPk)) targets.set(p.memberPk, p)
    }
  }
  if (targets.size === 0) {
    throw nameError(
      to,
      'unknown',
      `no verified peer is named ${JSON.stringify(to)}`,
      candidates(peers).map((p): [string, PeerEntry] => [p.memberPk, p]),
    )
  }
  if (targets.size > 1) {
    const what = named.length > 0 ? 'members' : 'keys'
    throw nameError(
      to,
      'ambiguous',
      `${JSON.stringify(to)} matches ${targets.size} ${what}; pass a key or a longer prefix`,
      [...targets],
    )
  }
  const [pk, p] = [...targets][0]!
  return { pk, ...(p.displayName !== null && { displayName: p.displayName }) }
}

/** One presence per member: what an unknown name could have meant. */
function candidates(peers: readonly PeerEntry[]): PeerEntry[] {
  const byMember = new Map<string, PeerEntry>()
  for (const p of peers) {
    const seen = byMember.get(p.memberPk)
    if (seen === undefined || (seen.role !== 'control-plane' && p.role === 'control-plane'))
      byMember.set(p.memberPk, p)
  }
  return [...byMember.values()]
}

/** The error for `to`, listing each candidate key with the presence it was seen as. */
function nameError(
  to: string,
  reason: 'unknown' | 'ambiguous',
  what: string,
  list: [key: string, seen: PeerEntry][],
): MeshError {
  const sorted = [...list].sort(([, a], [, b]) => (a.displayName ?? '').localeCompare(b.displayName ?? ''))
  const lines = sorted.map(([key, p]) => `  ${(p.displayName ?? '-').padEnd(12)} ${key}  ${describe(key, p)}`)
  const message =
    lines.length === 0
      ? `${what} (this mesh has no other verified peers yet)`
      : `${what}; the candidates:\n${lines.join('\n')}`
  const err = new MeshError('MESH_ERR_UNKNOWN_KEY', message, {
    details: {
      to,
      reason,
      candidates: sorted.map(([key, p]) => ({
        displayName: p.displayName,
        pk: key,
        memberPk: p.memberPk,
        online: p.online,
      })),
    },
  })
  nameErrors.add(err)
  return err
}

/** `member, online`; `member (seen as session cli), offline`; `session cli of member <key>, online`. */
function describe(key: string, p: PeerEntry): string {
  const state = p.online ? 'online' : 'offline'
  if (key === p.memberPk) {
    return p.role === 'control-plane'
      ? `member, ${state}`
      : `member (seen as ${p.role} ${p.sessionId ?? ''}), ${state}`
  }
  return `${p.role} ${p.sessionId ?? ''} of member ${p.memberPk}, ${state}`
}
