/**
 * Polls `check` until it returns true, for state that settles asynchronously behind a socket (a row
 * deleted after an ack). Bounded: rejects after `timeoutMs`. Use `waitFor` when an event exists.
 */
export async function eventually(
  check: () => Promise<boolean> | boolean,
  { timeoutMs = 5_000, what = 'condition' }: { timeoutMs?: number; what?: string } = {},
): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await check()) return
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}
