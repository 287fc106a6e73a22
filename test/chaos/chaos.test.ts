import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { startPgCluster, type PgCluster } from '../support/pg-cluster.js'
import { burstWithKills } from './daemon-burst.js'
import { runSchedule, summarize, type RunResult } from './scenario.js'
import { describeFault, drawSchedule, issueSchedule } from './schedule.js'
import { dropTemplate, makeTemplate, type Template } from './template.js'
import { ChaosWorld, type StoreKind } from './world.js'

// The short variant of `npm run chaos` (test/chaos/run.ts): real processes of the built binary, faults
// from a seed, and the history checker. A failing run's message starts with its seed; replay it with
// `npm run chaos -- --seed <N> --messages <M>`.
const SHORT_SEEDS = [101, 102, 103]
const SHORT_MESSAGES = 200
const ISSUE_MESSAGES = 2000
// The full burst (10 kills of 10,000 DMs) is in `npm run chaos`: the IPC takes sends at ~50/s here.
const BURST_MESSAGES = 600
const BURST_KILLS = 3

function report(r: RunResult): string {
  return `${summarize(r)}\n  faults: ${r.faults.map(describeFault).join('; ')}`
}

function legs(): { store: StoreKind; on: boolean }[] {
  // The Postgres leg runs when DATABASE_URL asks for it, on a private cluster (it restarts Postgres).
  return [
    { store: 'pglite', on: true },
    { store: 'postgres', on: (process.env['DATABASE_URL'] ?? '') !== '' },
  ]
}

for (const leg of legs()) {
  describe.runIf(leg.on)(`chaos (${leg.store}, the built binary)`, () => {
    let cluster: PgCluster | undefined
    let template: Template

    beforeAll(async () => {
      if (leg.store === 'postgres') cluster = await startPgCluster()
      template = await makeTemplate(leg.store, cluster)
    }, 180_000)

    afterEach(async () => {
      await ChaosWorld.closeAll()
    })

    afterAll(async () => {
      await ChaosWorld.closeAll()
      if (template !== undefined) await dropTemplate(template)
      await cluster?.destroy()
    })

    it.runIf(leg.store === 'pglite')(
      `${SHORT_SEEDS.length} seeded schedules of ${SHORT_MESSAGES} DMs: every acknowledged send printed once`,
      async () => {
        const failures: string[] = []
        for (const seed of SHORT_SEEDS) {
          const r = await runSchedule({
            seed,
            template,
            messages: SHORT_MESSAGES,
            faults: drawSchedule({ seed, windowMs: 4000, postgres: false }),
            holdMs: 2000,
          })
          if (r.problems.length > 0) failures.push(report(r))
        }
        expect(failures).toEqual([])
      },
      240_000,
    )

    it.runIf(leg.store === 'pglite')(
      `kill -9 of the daemon at ${BURST_KILLS} seeded points of a ${BURST_MESSAGES}-DM burst: the stores stay ` +
        'intact and every send answered 202 is in an outbox',
      async () => {
        const r = await burstWithKills({ template, seed: 7, messages: BURST_MESSAGES, kills: BURST_KILLS })
        expect(r.problems).toEqual([])
        expect(r).toMatchObject({ kills: BURST_KILLS, acked: BURST_MESSAGES })
      },
      240_000,
    )

    it(
      `the issue's scenario: ${ISSUE_MESSAGES} DMs, kill -9 of the coordinator twice, of the daemon and of ` +
        'listen once; nobody restarts listen after the coordinator kills',
      async () => {
        const r = await runSchedule({
          seed: 0,
          template,
          messages: ISSUE_MESSAGES,
          faults: [
            ...issueSchedule(20_000),
            ...(leg.store === 'postgres' ? [{ kind: 'pg-restart' as const, atMs: 16_000 }] : []),
          ],
          holdMs: 10_000,
        })
        expect(r.problems, report(r)).toEqual([])
        expect(r.verdict.printedOnce).toBe(ISSUE_MESSAGES)
        expect(r.recovery.acceptedMet && r.recovery.outboxMet, report(r)).toBe(true)
      },
      300_000,
    )
  })
}
