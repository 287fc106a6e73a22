/**
 * `npm run chaos`: the chaos suite's long runner (not part of `npm test`, which runs a short variant).
 *
 *     npm run chaos                      the issue's scenario on both stores, then 20 seeded schedules
 *     npm run chaos -- --seed 7          replays the schedule of seed 7 (its store too)
 *     npm run chaos -- --schedules 3 --messages 500 --store pglite --no-issue
 *
 * Seeds 1..N alternate between the stores (odd: PGlite, even: Postgres on a private cluster this run
 * creates and removes). Prints one line per run and exits 1 when any run broke a rule; a failing run's
 * line starts with its seed, which `--seed` replays.
 */
import { parseArgs } from 'node:util'
import { startPgCluster, type PgCluster } from '../support/pg-cluster.js'
import { burstWithKills } from './daemon-burst.js'
import { runSchedule, summarize, MEMBER_RATE_PER_S, type RunResult } from './scenario.js'
import { describeFault, drawSchedule, issueSchedule } from './schedule.js'
import { dropTemplate, makeTemplate, type Template } from './template.js'
import type { StoreKind } from './world.js'

const { values } = parseArgs({
  options: {
    seed: { type: 'string' },
    schedules: { type: 'string', default: '20' },
    messages: { type: 'string', default: '2000' },
    store: { type: 'string' },
    hold: { type: 'string' },
    'no-issue': { type: 'boolean', default: false },
    'no-faults': { type: 'boolean', default: false },
    'no-burst': { type: 'boolean', default: false },
    'burst-only': { type: 'boolean', default: false },
    'burst-messages': { type: 'string', default: '10000' },
    'burst-kills': { type: 'string', default: '10' },
    'issue-only': { type: 'boolean', default: false },
    verbose: { type: 'boolean', default: false },
  },
})

const messages = Number(values.messages)
/** About how long the messages take at the member's rate: the window faults fall in. */
export const windowFor = (n: number): number => Math.max(4000, Math.round((n / MEMBER_RATE_PER_S) * 1000))
const storeOf = (seed: number): StoreKind =>
  values.store === 'pglite' || values.store === 'postgres'
    ? values.store
    : seed % 2 === 1
      ? 'pglite'
      : 'postgres'

let cluster: PgCluster | undefined
const templates = new Map<StoreKind, Template>()
async function templateFor(store: StoreKind): Promise<Template> {
  let t = templates.get(store)
  if (t === undefined) {
    if (store === 'postgres') cluster ??= await startPgCluster()
    t = await makeTemplate(store, store === 'postgres' ? cluster : undefined)
    templates.set(store, t)
  }
  return t
}

const log = values.verbose ? (s: string): void => console.log(s) : undefined
const results: RunResult[] = []
let burstFailed = false
const broken: number[] = []
const t0 = Date.now()

async function one(label: string, o: Parameters<typeof runSchedule>[0]): Promise<void> {
  console.log(`${label}: ${o.faults.length} faults: ${o.faults.map(describeFault).join('; ')}`)
  let r: RunResult
  try {
    r = await runSchedule(o)
  } catch (err) {
    // A harness failure (the daemon never came back to answer a state query, …): the run failed.
    console.log(`  seed ${o.seed}: the run broke off: ${err instanceof Error ? err.stack : String(err)}`)
    broken.push(o.seed)
    return
  }
  results.push(r)
  console.log('  ' + summarize(r))
}

try {
  if (values.seed !== undefined) {
    const seed = Number(values.seed)
    const store = storeOf(seed)
    const faults = values['no-faults']
      ? []
      : drawSchedule({ seed, windowMs: windowFor(messages), postgres: store === 'postgres' })
    await one(`seed ${seed}`, {
      seed,
      template: await templateFor(store),
      messages,
      faults,
      holdMs: Number(values.hold ?? 5000),
      ...(log !== undefined && { log }),
    })
  } else if (!values['burst-only']) {
    if (!values['no-issue']) {
      const stores: StoreKind[] =
        values.store === 'pglite' || values.store === 'postgres' ? [values.store] : ['pglite', 'postgres']
      for (const store of stores) {
        await one(`issue scenario (${store})`, {
          seed: 0,
          template: await templateFor(store),
          messages,
          faults: issueSchedule(windowFor(messages)),
          holdMs: Number(values.hold ?? 60_000),
          ...(log !== undefined && { log }),
        })
      }
    }
    const t1 = Date.now()
    if (!values['issue-only']) {
      for (let seed = 1; seed <= Number(values.schedules); seed++) {
        const store = storeOf(seed)
        await one(`seed ${seed} (${store})`, {
          seed,
          template: await templateFor(store),
          messages,
          faults: drawSchedule({ seed, windowMs: windowFor(messages), postgres: store === 'postgres' }),
          holdMs: Number(values.hold ?? 5000),
          ...(log !== undefined && { log }),
        })
      }
      console.log(`seeded schedules: ${((Date.now() - t1) / 1000).toFixed(0)} s`)
    }
  }
  if (values.seed === undefined && !values['no-burst']) {
    const n = Number(values['burst-messages'])
    const kills = Number(values['burst-kills'])
    console.log(`daemon burst: ${n} DMs over the IPC, kill -9 of the daemon at ${kills} seeded points`)
    const b = await burstWithKills({
      template: await templateFor('pglite'),
      seed: 7,
      messages: n,
      kills,
      ...(log !== undefined && { log }),
    })
    burstFailed = b.problems.length > 0
    console.log(
      `  ${b.acked}/${b.messages} answered 202, ${b.kills} kills, ${b.checks} integrity checks, ` +
        `${(b.durationMs / 1000).toFixed(0)} s` +
        (b.problems.length === 0 ? ' — PASS' : ` — FAIL:\n    ${b.problems.join('\n    ')}`),
    )
  }
} finally {
  for (const t of templates.values()) await dropTemplate(t)
  await cluster?.destroy()
}

const failed = [...results.filter((r) => r.problems.length > 0).map((r) => r.seed), ...broken]
console.log(
  `\n${results.length + broken.length} runs, ${failed.length} failed, ${((Date.now() - t0) / 1000).toFixed(0)} s` +
    (failed.length === 0 ? '' : `; replay with: npm run chaos -- --seed <N> (failed: ${failed.join(', ')})`),
)
process.exitCode = failed.length === 0 && !burstFailed ? 0 : 1
