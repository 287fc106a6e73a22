/**
 * The child side of a bench process: it announces itself ready over the IPC channel, then runs the jobs
 * the parent sends (one reply per job) until the parent goes away. A child never outlives its parent:
 * when the channel closes (the parent exited or was killed) it runs its cleanup and exits, and a hard
 * deadline ends it in any case.
 */

/** A message from the parent: run `kind` with `args`. */
export interface JobRequest {
  id: number
  kind: string
  args: unknown
}

/** A child's reply: the job's result, or its error message. */
export type JobReply = { id: number; ok: true; result: unknown } | { id: number; ok: false; error: string }

/** What a child posts once it can take jobs. */
export interface ReadyMessage {
  ready: unknown
}

export type JobHandlers = Record<string, (args: never) => Promise<unknown>>

/** No bench process lives longer than this, whatever its parent does. */
const HARD_DEADLINE_MS = 20 * 60 * 1000

/**
 * Serves `handlers` for the parent; posts `ready` first. `cleanup` runs once on disconnect or SIGTERM,
 * before the process exits.
 */
export function serveJobs(ready: unknown, handlers: JobHandlers, cleanup: () => Promise<void> = noop): void {
  const send = process.send?.bind(process)
  if (send === undefined) throw new Error('a bench process runs under fork(), with an IPC channel')
  let stopping = false
  const stop = (code: number): void => {
    if (stopping) return
    stopping = true
    void cleanup()
      .catch((err: unknown) => process.stderr.write(`cleanup failed: ${String(err)}\n`))
      .finally(() => process.exit(code))
  }
  process.on('disconnect', () => stop(0))
  process.on('SIGTERM', () => stop(0))
  process.on('SIGINT', () => stop(0))
  setTimeout(() => {
    process.stderr.write('bench process: hard deadline reached, exiting\n')
    stop(3)
  }, HARD_DEADLINE_MS).unref()

  process.on('message', (msg: JobRequest) => {
    const handler = handlers[msg.kind] as ((args: unknown) => Promise<unknown>) | undefined
    const run =
      handler === undefined ? Promise.reject(new Error(`unknown job ${msg.kind}`)) : handler(msg.args)
    run.then(
      (result) => reply({ id: msg.id, ok: true, result }),
      (err: unknown) =>
        reply({
          id: msg.id,
          ok: false,
          error: err instanceof Error ? (err.stack ?? err.message) : String(err),
        }),
    )
  })
  const reply = (r: JobReply): void => {
    if (process.connected) send(r)
  }
  send({ ready } satisfies ReadyMessage)
}

async function noop(): Promise<void> {}
