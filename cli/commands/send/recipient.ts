import { UsageError } from 'clipanion'
import { fromHex, toHex } from '../../../protocol/encoding.js'
import { MeshError } from '../../../protocol/errors.js'
import type { KnownPeer } from '../../../peer-runtime/directory.js'
import type { Peer } from '../../../peer-runtime/peer.js'

/** Who a `send` goes to: the key, and the display name it was found by (or carries). */
export interface Recipient {
  pk: string
  displayName?: string
}

/**
 * `to` as a key: 64 hex characters as they are, else a display name looked up among the verified peers
 * (online or not, daemons included). Every presence of one member shares that member's name; then the
 * member key (its control plane, where DMs to the member arrive) is the one, else its only session. Two
 * members of one name are ambiguous: pass the key.
 */
export async function resolveRecipient(peer: Peer, to: string, signal: AbortSignal): Promise<Recipient> {
  if (/^[0-9a-fA-F]{64}$/.test(to)) return { pk: toHex(fromHex(to)!) }
  const peers = await peer.listPeers({ includeDaemons: true, includeOffline: true, signal })
  let named = peers.filter((p) => p.displayName === to)
  if (named.length === 0) named = peers.filter((p) => p.displayName?.toLowerCase() === to.toLowerCase())
  if (named.length === 0) {
    const names = [...new Set(peers.map((p) => p.displayName).filter((n) => n !== undefined))].sort()
    throw new MeshError(
      'MESH_ERR_UNKNOWN_KEY',
      `no verified peer is named ${JSON.stringify(to)}` +
        (names.length > 0 ? ` (known: ${names.join(', ')})` : ''),
      { details: { to } },
    )
  }
  const members = new Set(named.map((p) => toHex(p.memberPk)))
  if (members.size > 1) {
    throw new UsageError(
      `${JSON.stringify(to)} names ${members.size} members; pass a key instead:\n` +
        named.map((p) => `  ${toHex(p.pk)}  ${describe(p)}`).join('\n'),
    )
  }
  const chosen = pick(named)
  return {
    pk: toHex(chosen.pk),
    ...(chosen.displayName !== undefined && { displayName: chosen.displayName }),
  }
}

function pick(named: KnownPeer[]): KnownPeer {
  const member = named.find((p) => p.role === 'control-plane')
  if (member !== undefined) return member
  const online = named.filter((p) => p.online)
  if (named.length === 1) return named[0]!
  if (online.length === 1) return online[0]!
  throw new UsageError(
    `${named[0]!.displayName ?? 'that name'} has ${named.length} sessions and no member presence; pass a key:\n` +
      named.map((p) => `  ${toHex(p.pk)}  ${describe(p)}`).join('\n'),
  )
}

function describe(p: KnownPeer): string {
  return `${p.role}${p.sessionId === undefined ? '' : ` ${p.sessionId}`}${p.online ? ' online' : ' offline'}`
}
