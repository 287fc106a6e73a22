import { Command, Option, UsageError } from 'clipanion'
import { MAX_RPC_TIMEOUT_MS } from '../../../peer-runtime/node/daemon/ipc-rpc.js'
import { parseDuration } from '../duration.js'
import { HomeCommand } from '../home-command.js'
import { CLI_SESSION_ID } from '../link/mesh-link.js'
import { resolvePeer } from '../peer/resolve.js'

/** What `rpc --json` prints on success. */
export interface RpcJson {
  mesh: string
  /** The callee's key (hex): the member key for a display name. */
  to: string
  toName: string | null
  method: string
  /** The request's id (its clientMessageId). */
  id: string
  /** The handler's return value (bytes as hex). */
  result: unknown
  /** How this command reached the mesh. */
  via: 'daemon' | 'direct'
}

/** `agentmesh rpc <peer> <method> [json]`: one request to a peer's rpc handler, its answer printed. */
export class RpcCommand extends HomeCommand {
  static override paths = [['rpc']]

  static override usage = Command.Usage({
    category: 'Messages',
    description: "Call a method on a peer's rpc handler and print the answer",
    details: `
      Sends \`method\` with the JSON \`params\` (default null) as an end-to-end encrypted rpc request
      (docs/PROTOCOL.md §6.1) and waits for the answer: the handler's return value is printed as JSON on
      stdout (with \`--json\`: \`{mesh, to, toName, method, id, result, via}\`). The callee's error is printed
      \`error: <code>: <message>\` (\`MESH_ERR_RPC_NO_HANDLER\` for a method it does not serve), and no
      answer within \`--timeout\` is \`MESH_ERR_RPC_TIMEOUT\`; both exit 1.

      \`<peer>\` is a display name (the member's key), a 64-hex key or a unique key prefix, as for
      \`agentmesh send\`; an unknown or ambiguous one exits 6. The request goes through the home's daemon
      when one runs (its session \`${CLI_SESSION_ID}\`, \`POST /v1/rpc\`), else through a connection of this
      command's own as the session \`${CLI_SESSION_ID}\`; it says which on stderr.
    `,
    examples: [
      ['Ask alice to echo a value', `$0 rpc alice echo '{"hello":"world"}'`],
      ['Call a slow method, waiting up to two minutes', '$0 rpc build-bot run --timeout 2m'],
    ],
  })

  mesh = Option.String('--mesh', { description: "The mesh (default: the home's only one)" })

  timeout = Option.String('--timeout', '30s', {
    description: 'How long to wait for the answer (default 30s, at most 10m)',
  })

  peer = Option.String({ name: 'peer' })

  method = Option.String({ name: 'method' })

  params = Option.String({ name: 'json', required: false })

  override async run(): Promise<number> {
    const params = this.#params()
    const timeoutMs = parseDuration(this.timeout, '--timeout')
    if (timeoutMs > MAX_RPC_TIMEOUT_MS) throw new UsageError('--timeout is at most 10m')
    const mesh = await this.meshOrOnly(this.mesh)
    // Connecting is bounded on its own: a short --timeout is the answer's, not the connection's.
    const link = await this.openLink(mesh, Math.max(timeoutMs, 15_000))
    try {
      // The answer's own deadline is the callee's `timeoutMs`; this one only bounds the lookups around it.
      const deadline = AbortSignal.timeout(timeoutMs + 15_000)
      const callee = resolvePeer(await link.peers({ offline: true, signal: deadline }), this.peer)
      const answer = await link.rpc({ to: callee.pk, method: this.method, params, timeoutMs }, deadline)
      if (this.json) {
        this.printJson({
          mesh,
          to: callee.pk,
          toName: callee.displayName ?? null,
          method: this.method,
          id: answer.id,
          result: answer.result,
          via: link.via,
        } satisfies RpcJson)
      } else {
        this.context.stdout.write(JSON.stringify(answer.result, bytesAsHex, 2) + '\n')
      }
      return 0
    } finally {
      await link.close()
    }
  }

  #params(): unknown {
    if (this.params === undefined) return null
    try {
      return JSON.parse(this.params) as unknown
    } catch (err) {
      throw new UsageError(`[json] is not JSON: ${(err as Error).message}`)
    }
  }
}

function bytesAsHex(_key: string, value: unknown): unknown {
  if (value instanceof Uint8Array) return Buffer.from(value).toString('hex')
  return value
}
