/**
 * What a command that receives files (`listen`) shows of them on stderr: the progress of each (a bar on
 * a terminal, else a line at every 10 %), then one line per file saved or refused.
 */
import type { FileEvent } from '../../../peer-runtime/node/file-receiver.js'
import { formatBytes, Progress, type ProgressOut } from './progress.js'

/** The `onEvent` of `receiveFiles` that writes to `out` (lines start with `agentmesh: `, as notes do). */
export function fileReceiveNotes(out: ProgressOut): (event: FileEvent) => void {
  const shown = new Map<string, Progress>()
  return (event) => {
    const t = event.transfer
    const who = t === undefined ? '' : (t.fromName ?? `${t.from.slice(0, 16)}…`)
    switch (event.kind) {
      case 'start': {
        out.write(`agentmesh: receiving ${t!.name} (${formatBytes(t!.size)}) from ${who}\n`)
        const progress = new Progress(out, t!.name, t!.size)
        shown.set(t!.streamId, progress)
        progress.update(0)
        return
      }
      case 'progress':
        shown.get(t!.streamId)?.update(event.bytes)
        return
      case 'saved': {
        shown.get(t!.streamId)?.done()
        shown.delete(t!.streamId)
        const via = Object.entries(event.receipt.via)
          .map(([k, n]) => `${k} ${n}`)
          .join(', ')
        out.write(
          `agentmesh: received ${t!.name} (${formatBytes(t!.size)}) from ${who} in ` +
            `${(event.ms / 1000).toFixed(1)} s (chunks: ${via}), sha-256 ${event.receipt.sha256} ok: ${event.path}\n`,
        )
        return
      }
      case 'failed': {
        if (t !== undefined) {
          shown.get(t.streamId)?.done()
          shown.delete(t.streamId)
        }
        const what = t === undefined ? `a file from ${event.from.slice(0, 16)}…` : `${t.name} from ${who}`
        out.write(`agentmesh: not saved: ${what}: ${event.error.code}: ${event.error.message}\n`)
        return
      }
    }
  }
}
