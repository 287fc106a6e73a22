/**
 * The history checker, in the spirit of Jepsen: from what the sender was told (which sends bob's
 * daemon answered 202), what alice printed (each `listen --json` line), and what the daemon reports
 * at the end (`GET /v1/messages/:id`), it finds every way the run broke the delivery contract:
 *
 * - lost: answered 202, never printed;
 * - duplicated: printed more than once (by one `listen` or across its restarts);
 * - phantom: printed, but never sent by this run;
 * - unacknowledged but delivered: a send never answered 202 that the daemon reports done or alice
 *   printed (the client was told nothing, so it may retry: that is a second message);
 * - receipts that disagree with arrivals: `done` with alice `delivered` for a message she never
 *   printed, or a printed message whose row is not `done` with alice `delivered` by the end.
 */

/** The daemon's final word on one message (`GET /v1/messages/:id`), or missing (404). */
export interface FinalState {
  state: string
  recipients: Record<string, string>
}

export interface History {
  /** Every id the sender tried, acknowledged or not. */
  attempted: readonly string[]
  /** Ids answered 202, with when. */
  acked: ReadonlyMap<string, number>
  /** Ids alice printed, in order, with repeats. */
  printed: readonly string[]
  /** The final state of every attempted id (undefined: the daemon has no such row). */
  finals: ReadonlyMap<string, FinalState | undefined>
  /** alice's key (hex): the recipient whose receipt must match. */
  recipient: string
  /**
   * The recipient stopped for good (a failed run): an ack lost with a coordinator is then never
   * redelivered, so a printed message without a receipt is not counted against the receipts.
   */
  recipientGone?: boolean
}

export interface Verdict {
  ok: boolean
  acked: number
  printedOnce: number
  lost: string[]
  duplicated: string[]
  phantom: string[]
  unackedDelivered: string[]
  receiptWithoutArrival: string[]
  arrivalWithoutReceipt: string[]
}

/** Checks `h`; `ok` only when every list of the verdict is empty. */
export function checkHistory(h: History): Verdict {
  const attempted = new Set(h.attempted)
  const counts = new Map<string, number>()
  for (const id of h.printed) counts.set(id, (counts.get(id) ?? 0) + 1)
  const lost: string[] = []
  const unackedDelivered: string[] = []
  const receiptWithoutArrival: string[] = []
  const arrivalWithoutReceipt: string[] = []
  for (const id of h.attempted) {
    const n = counts.get(id) ?? 0
    const final = h.finals.get(id)
    const delivered = final?.state === 'done' && final.recipients[h.recipient] === 'delivered'
    if (h.acked.has(id)) {
      if (n === 0) lost.push(id)
    } else if (n > 0 || delivered) {
      unackedDelivered.push(id)
    }
    if (delivered && n === 0) receiptWithoutArrival.push(id)
    if (n > 0 && !delivered && h.recipientGone !== true) arrivalWithoutReceipt.push(id)
  }
  const duplicated = [...counts].filter(([, n]) => n > 1).map(([id]) => id)
  const phantom = [...counts.keys()].filter((id) => !attempted.has(id))
  const printedOnce = [...counts].filter(([id, n]) => n === 1 && h.acked.has(id)).length
  const ok =
    lost.length +
      duplicated.length +
      phantom.length +
      unackedDelivered.length +
      receiptWithoutArrival.length +
      arrivalWithoutReceipt.length ===
    0
  return {
    ok,
    acked: h.acked.size,
    printedOnce,
    lost,
    duplicated,
    phantom,
    unackedDelivered,
    receiptWithoutArrival,
    arrivalWithoutReceipt,
  }
}

/** The verdict in one line per broken rule (with up to three example ids each). */
export function describeVerdict(v: Verdict): string[] {
  const out: string[] = []
  const add = (what: string, ids: string[]): void => {
    if (ids.length > 0) out.push(`${ids.length} ${what} (e.g. ${ids.slice(0, 3).join(', ')})`)
  }
  add('answered 202 but never printed', v.lost)
  add('printed more than once', v.duplicated)
  add('printed but never sent', v.phantom)
  add('never answered 202 but delivered', v.unackedDelivered)
  add('reported delivered to alice but never printed', v.receiptWithoutArrival)
  add('printed but not reported delivered by the end', v.arrivalWithoutReceipt)
  return out
}
