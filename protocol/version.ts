/** Protocol versions and their negotiation in the hello (DESIGN.md §3). */
import { MeshError } from './errors.js'

/** The protocol versions this build speaks. */
export const PROTOCOL_VERSION = { min: 1, max: 1 } as const

/** A range of protocol versions, inclusive. */
export interface VersionRange {
  min: number
  max: number
}

/**
 * The highest version both ranges share, or `MESH_ERR_UNSUPPORTED_VERSION` whose details carry our
 * supported range (the coordinator then closes the socket 4010).
 */
export function negotiateVersion(theirs: VersionRange, ours: VersionRange = PROTOCOL_VERSION): number {
  const chosen = Math.min(theirs.max, ours.max)
  if (theirs.min > theirs.max || chosen < Math.max(theirs.min, ours.min)) {
    throw new MeshError(
      'MESH_ERR_UNSUPPORTED_VERSION',
      `no protocol version in common: peer speaks ${theirs.min}–${theirs.max}, we speak ${ours.min}–${ours.max}`,
      { details: { supported: { min: ours.min, max: ours.max } } },
    )
  }
  return chosen
}
