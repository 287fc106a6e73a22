import type { Clock, ClockTimer } from '../protocol/index.js'

/**
 * Runs `task` every `ms` on the clock, never overlapping itself: the next run is scheduled when the
 * previous one settled. Errors go to `onError` and do not stop the ticker.
 */
export function every(
  clock: Clock,
  ms: number,
  task: () => Promise<void>,
  onError: (err: unknown) => void,
): { stop(): Promise<void>; runNow(): Promise<void> } {
  let timer: ClockTimer | undefined
  let stopped = false
  let running: Promise<void> = Promise.resolve()
  const run = (): Promise<void> => {
    running = running.then(async () => {
      if (stopped) return
      try {
        await task()
      } catch (err) {
        onError(err)
      }
    })
    return running
  }
  const schedule = (): void => {
    if (stopped) return
    timer = clock.setTimeout(() => void run().then(schedule), ms)
  }
  schedule()
  return {
    async stop() {
      stopped = true
      timer?.cancel()
      await running
    },
    runNow: run,
  }
}
