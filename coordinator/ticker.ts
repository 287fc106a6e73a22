import type { Clock, ClockTimer } from '../protocol/index.js'

/**
 * Runs `task` every `ms` on the clock, never two at once. The next tick is scheduled when a tick fires,
 * not when its task ends, so a clock that jumps ahead (a test's `ManualClock.advance`) still fires every
 * tick in between; ticks that fire while the task runs are folded into one more run after it. Errors go
 * to `onError` and do not stop the ticker.
 */
export function every(
  clock: Clock,
  ms: number,
  task: () => Promise<void>,
  onError: (err: unknown) => void,
): { stop(): Promise<void>; runNow(): Promise<void> } {
  let timer: ClockTimer | undefined
  let stopped = false
  let running: Promise<void> | undefined
  let queued: Promise<void> | undefined

  const runOnce = async (): Promise<void> => {
    if (stopped) return
    try {
      await task()
    } catch (err) {
      onError(err)
    }
  }
  const run = (): Promise<void> => {
    if (running === undefined) {
      running = runOnce().finally(() => (running = undefined))
      return running
    }
    // One run waits behind the current one; later requests share it.
    queued ??= running.then(() => {
      queued = undefined
      return run()
    })
    return queued
  }
  const fire = (): void => {
    if (stopped) return
    timer = clock.setTimeout(fire, ms)
    void run()
  }
  timer = clock.setTimeout(fire, ms)
  return {
    async stop() {
      stopped = true
      timer?.cancel()
      await queued
      await running
    },
    runNow: run,
  }
}
