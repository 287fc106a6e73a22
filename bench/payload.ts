import { encode, randomBytes } from '../protocol/index.js'

/**
 * A typical agent message: some text, a structured tool result and a binary attachment, filled to about
 * `bytes` encoded (±2 for the bin header's width). Shared by every scenario so figures compare.
 */
export function agentPayload(bytes: number): unknown {
  const text = 'Reviewed the diff; two call sites still pass the old option. Patch attached. '
  const textBytes = Math.floor(bytes * 0.4)
  const payload = {
    kind: 'message',
    text: text.repeat(Math.ceil(textBytes / text.length)).slice(0, textBytes),
    tool: { name: 'run_tests', exitCode: 0, durationMs: 8123, files: ['src/a.ts', 'src/b.ts'] },
    attachments: [{ name: 'fix.patch', mime: 'text/x-diff', data: randomBytes(0) }],
  }
  const rest = Math.max(0, bytes - encode(payload).length)
  payload.attachments[0]!.data = randomBytes(rest)
  return payload
}
