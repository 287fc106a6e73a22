/**
 * `npm run bench -- <scenario> [...]`: runs benchmark scenarios and prints one JSON line per figure on
 * stdout (a readable summary goes to stderr). With no name it lists the scenarios.
 */
import { codecScenario } from './scenarios/codec.js'
import { daemonScenario } from './scenarios/daemon.js'
import { p2pScenario } from './scenarios/p2p.js'
import { relayScenario } from './scenarios/relay.js'
import { restartScenario } from './scenarios/restart.js'
import { runtimeScenario } from './scenarios/runtime.js'
import { storeScenario } from './scenarios/store.js'

type Scenario = (opts: { quick: boolean }) => Promise<void>

const SCENARIOS: Record<string, { describe: string; run: Scenario }> = {
  codec: {
    describe: 'msgpack beside JSON, crypto_box one-shot beside precomputed keys, Ed25519 sign and verify',
    run: codecScenario,
  },
  relay: {
    describe:
      'the coordinator as a relay: online DMs beside a raw ws relay, queued DMs on Postgres, a 100-peer load',
    run: relayScenario,
  },
  p2p: {
    describe: 'TransportSession.send over webrtc beside a raw node-datachannel channel and ws-relay; latency',
    run: p2pScenario,
  },
  daemon: {
    describe: "sends/s through the daemon's IPC into the durable outbox beside direct Peer.send",
    run: daemonScenario,
  },
  restart: {
    describe: 'a runtime start from its saved mesh view beside a full replay, at 100 and 100,000 events',
    run: restartScenario,
  },
  store: {
    describe: 'runtime store writes on sqlite: one row per call beside batches and the coalescing store',
    run: storeScenario,
  },
  runtime: {
    describe:
      'real Peers under load (100 peers, default limits, relay only) beside lightweight clients and a floor',
    run: runtimeScenario,
  },
}

async function main(argv: string[]): Promise<number> {
  const quick = argv.includes('--quick')
  const names = argv.filter((a) => !a.startsWith('--'))
  if (names.length === 0) {
    process.stderr.write('usage: npm run bench -- <scenario> [--quick]\n\nscenarios:\n')
    for (const [name, s] of Object.entries(SCENARIOS))
      process.stderr.write(`  ${name.padEnd(10)} ${s.describe}\n`)
    return 2
  }
  for (const name of names) {
    const scenario = SCENARIOS[name]
    if (scenario === undefined) {
      process.stderr.write(
        `unknown scenario ${JSON.stringify(name)}; known: ${Object.keys(SCENARIOS).join(', ')}\n`,
      )
      return 2
    }
    process.stderr.write(`${name}: ${scenario.describe}\n`)
    await scenario.run({ quick })
  }
  return 0
}

process.exitCode = await main(process.argv.slice(2))
