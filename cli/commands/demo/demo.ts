import { Command, Option } from 'clipanion'
import { isMeshError } from '../../../protocol/errors.js'
import { EXIT, exitCodeOf } from '../exit-codes.js'
import { stepLine, type StepJson } from './report.js'
import { DemoStepError, FILE_BYTES, runDemo } from './scenario.js'

/**
 * `agentmesh demo`: a coordinator on its embedded store and two peers, alice and bob, in this process;
 * prints each step with the transport every message took, then closes everything and removes its
 * temp directory.
 */
export class DemoCommand extends Command {
  static override paths = [['demo']]

  static override usage = Command.Usage({
    category: 'Getting started',
    description: 'Watch two peers find each other, go P2P, message, stream a file and queue while offline',
    details: `
      Runs everything in this process, in a fresh directory under $TMPDIR: a coordinator on the embedded
      PGlite store listening on 127.0.0.1 (a free port), a mesh made by alice's home, bob's home joined
      with her invite, and a session peer of each with P2P over node-datachannel (no STUN or TURN
      server: the data channel uses this machine's own addresses). The steps, each printed as it ends
      with how long it took:

      coordinator up, peers connected, found each other (\`list_peers\`), upgraded to P2P (the first
      message goes through the coordinator while the data channel comes up; if it cannot, the demo says
      why and stays on the relay), DM, file (${FILE_BYTES / 1024} KiB of random bytes over a stream,
      sha-256 checked on arrival), offline message (bob closes; alice's message is queued by the
      coordinator), drained (bob comes back and gets it), done.

      Every message line names the transport it took: \`via p2p\` or \`via relay\`. At the end the
      coordinator and both peers are closed and the directory removed, also after a failure or Ctrl-C
      (a second Ctrl-C exits at once and may leave the directory). Each step has a timeout; a step that
      fails ends the demo with \`error: <code>: step <name> failed: …\` on stderr and exit 1 (or the
      code's own exit code). The code is a \`MESH_ERR_*\` one (\`MESH_ERR_WAIT_TIMEOUT\` for a step over
      its time, \`MESH_ERR_SHUTTING_DOWN\` after Ctrl-C), or an errno code (\`EACCES\`) when the temp
      directory cannot be made.

      With \`--json\`, one JSON object a line per step: \`{step, ok: true, ms, …}\`, in order
      \`coordinator\` \`{url, driver, dataDir}\`, \`connected\` \`{mesh, peers: [{name, pk}]}\`, \`found\`
      \`{seen: [{by, peer, online, p2p}]}\`, \`p2p\` \`{up, upMs?, reason?: {code, message}, message}\`,
      \`dm\` \`{message}\`, \`file\` \`{bytes, chunks, via, chunksVia: {p2p?, relay?}, sha256, sentSha256, match}\`,
      \`offline\` \`{message: {…, state: "queued"}}\`, \`drained\` \`{message, receipt}\`, and last
      \`summary\` \`{steps, p2p, messagesVia: {p2p, relay}, chunksVia, cleanedUp, root}\`. A \`message\` is
      \`{from, to, text, clientMessageId, via: "p2p" | "relay"}\`. A failed step prints
      \`{step, ok: false, ms, error: {code, message}}\` and is the last line (\`step: "cleanup"\` when
      closing or removing something failed after every step passed).
    `,
    examples: [
      ['Run the demo', '$0 demo'],
      ['Run it without P2P: every message through the coordinator', '$0 demo --relay-only'],
      ['One JSON object per step', '$0 demo --json'],
    ],
  })

  json = Option.Boolean('--json', false, {
    description: 'Print one JSON object per step instead of text',
  })

  relayOnly = Option.Boolean('--relay-only', false, {
    description: 'Open both peers without P2P: every message goes through the coordinator',
  })

  override async execute(): Promise<number> {
    const stop = new AbortController()
    const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM']
    const unlisten = (): void => signals.forEach((s) => process.removeListener(s, onSignal))
    // Once: a second signal while the demo cleans up falls to Node's default and ends the process.
    const onSignal = (): void => {
      unlisten()
      stop.abort()
    }
    for (const s of signals) process.once(s, onSignal)
    try {
      if (!this.json) {
        this.context.stdout.write(
          'agentmesh demo: a coordinator and two peers, alice and bob, in this process (Ctrl-C stops it)\n',
        )
      }
      await runDemo({ report: (r) => this.#print(r), stop: stop.signal, relayOnly: this.relayOnly })
      return 0
    } catch (err) {
      if (!(err instanceof DemoStepError)) throw err
      this.context.stderr.write(`error: ${err.code}: ${err.message}\n`)
      return isMeshError(err.cause) ? exitCodeOf(err.cause) : EXIT.ERROR
    } finally {
      unlisten()
    }
  }

  #print(record: StepJson): void {
    this.context.stdout.write(`${this.json ? JSON.stringify(record) : stepLine(record)}\n`)
  }
}
