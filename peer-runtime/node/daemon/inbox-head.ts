/**
 * The highest inbox `seq` a reader can see, found with O(log n) one-row reads (the store has no "last
 * row" query): a live-only event stream starts its cursor there, so a follower that re-dials after a
 * daemon restart resumes from it and misses nothing that arrived while it was away.
 */
import type { RuntimeStore } from '../../store/types.js'

/** The largest `seq` among `recipients`' rows in `mesh`, or 0 when there is none. */
export async function inboxHead(
  store: Pick<RuntimeStore, 'readInbox'>,
  mesh: string,
  recipients: readonly Uint8Array[],
): Promise<number> {
  // The smallest visible seq above `after`, if any.
  const above = async (after: number): Promise<number | undefined> =>
    (await store.readInbox({ mesh, recipients, afterSeq: after, limit: 1 }))[0]?.seq
  // Invariant: a row at `lo` exists (or lo = 0), and none lies above `hi` once `hi` is known.
  let lo = 0
  let step = 1
  let hi: number | undefined
  while (hi === undefined) {
    const seq = await above(lo + step)
    if (seq === undefined) hi = lo + step
    else {
      lo = seq
      step *= 2
    }
  }
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2)
    const seq = await above(mid - 1)
    if (seq === undefined) hi = mid - 1
    else lo = seq
  }
  return lo
}
