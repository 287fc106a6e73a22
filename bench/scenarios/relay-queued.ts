/**
 * Figure 2 of the `relay` scenario: DMs to offline recipients, committed on Postgres before the sender
 * hears `queued`, beside raw batched inserts of the same rows into a `delivery`-shaped table.
 *
 * - *ours*: 8 sender connections (one process), 128 DMs in flight each, 1 KiB DMs to 8 members that
 *   never connect (a member key is always a known target); rate and queue limits lifted. DMs/s from the
 *   first send to the last `queued` send_ack.
 * - *baseline*: the same number of rows, of the same shape and size, inserted with postgres.js into a
 *   table `like delivery including all` (same columns and indexes) in multi-row INSERTs of the sizes the
 *   coordinator's group commit used in that round (read from its timed store), one transaction each,
 *   one at a time as the committer runs them. The coordinator also writes a `dedupe` row per DM in the
 *   same transactions; the baseline does not, so it bounds what the store could take.
 */
import postgres from 'postgres'
import { randomBytes, ulidFactory } from '../../protocol/index.js'
import { median, report } from '../measure.js'
import type { ChildHandle, Children } from '../processes/child.js'
import { cpuMeter } from '../processes/cpu.js'
import type { BurstResult } from '../processes/dm-peer.js'
import { seedFor, startMesh } from '../processes/mesh.js'
import type { StatementStats } from '../processes/timed-store.js'
import { mergeCounts, perDm, round2, SCENARIO, topStatements } from './relay-report.js'

const NAME = 'queued DM 1KiB, postgres'
const GOAL = '≥ 10,000 DMs/s committed'
const SENDERS = 8
const RECIPIENTS = 8
const WINDOW = 128

export async function queuedFigure(
  children: Children,
  databaseUrl: string | undefined,
  quick: boolean,
): Promise<void> {
  if (databaseUrl === undefined) {
    const line = { scenario: SCENARIO, name: NAME, unit: 'DMs/s', goal: GOAL, skipped: 'DATABASE_URL unset' }
    process.stdout.write(JSON.stringify(line) + '\n')
    process.stderr.write(`  ${NAME.padEnd(44)} skipped: DATABASE_URL unset\n`)
    return
  }
  const perConnection = quick ? 250 : 3000
  const rounds = quick ? 1 : 3
  const m = await startMesh(children, { driver: 'postgres', databaseUrl })
  let sender: ChildHandle | undefined
  const sql = postgres(databaseUrl, {
    max: 1,
    onnotice: () => {},
    connection: { search_path: m.postgres!.schema },
  })
  try {
    const senders = await m.join(SENDERS)
    const recipients = (await m.join(RECIPIENTS)).map((r) => r.publicKey)
    sender = await children.start('queued senders', 'dm-peer')
    await sender.run('senders', { wsUrl: m.wsUrl, mesh: m.mesh, seeds: senders.map(seedFor) })
    await sql.unsafe('create table bench_delivery (like delivery including all)')
    const burst = (n: number): Promise<BurstResult> =>
      sender!.run<BurstResult>('burst', {
        via: 'coordinator',
        recipients,
        perConnection: n,
        window: WINDOW,
        size: '1KiB',
      })

    await burst(quick ? 50 : 300)
    await m.storeStats()
    const ours: BurstResult[] = []
    const raw: number[] = []
    const batchSizes: number[] = []
    const statements: StatementStats[] = []
    const cpu: Record<string, number>[] = []
    const commits = { calls: 0, ms: 0 }
    for (let r = 0; r < rounds; r++) {
      const meter = cpuMeter({
        coordinator: [m.coordinator.pid],
        senders: [sender.pid],
        postgres: { command: 'postgres' },
      })
      const result = await burst(perConnection)
      cpu.push(meter.stop())
      ours.push(result)
      const stats = await m.storeStats()
      statements.push(...stats.statements)
      commits.calls += stats.transactions.calls
      commits.ms += stats.transactions.totalMs
      batchSizes.push(...stats.deliveryBatches)
      raw.push(await rawInserts(sql, stats.deliveryBatches, m.mesh, result.envelopeBytes))
    }
    const value = median(ours.map((x) => x.perSecond))
    const baseline = median(raw)
    const sent = ours.reduce((n, x) => n + x.messages, 0)
    report({
      scenario: SCENARIO,
      name: NAME,
      unit: 'DMs/s',
      value,
      baseline: { name: 'raw multi-row INSERTs, same batch sizes', value: baseline },
      goal: GOAL,
      met: value >= 10_000,
      bytes: ours[0]!.envelopeBytes,
      connections: SENDERS,
      window: WINDOW,
      messages: SENDERS * perConnection,
      rounds,
      replies: mergeCounts(ours.map((x) => x.replies)),
      meanBatchRows: round2(batchSizes.reduce((n, b) => n + b, 0) / Math.max(1, batchSizes.length)),
      // Wall time of one group commit, begin to commit (waiting for a pool connection included).
      meanCommitMs: round2(commits.ms / Math.max(1, commits.calls)),
      cpuMsPerDm: perDm(mergeCounts(cpu), sent),
      store: topStatements(statements, sent),
    })
  } finally {
    await sql.end({ timeout: 2 })
    await sender?.stop()
    await m.dispose()
  }
}

/**
 * Inserts rows shaped like the round's DMs in multi-row INSERTs of `batches` sizes, one transaction each,
 * one after another; returns rows/s. Rows are built before the clock starts.
 */
async function rawInserts(
  sql: postgres.Sql,
  batches: number[],
  mesh: string,
  envelopeBytes: number,
): Promise<number> {
  const nextId = ulidFactory()
  const now = Date.now()
  const senders = Array.from({ length: SENDERS }, () => Buffer.from(randomBytes(32)))
  const recipients = Array.from({ length: RECIPIENTS }, () => Buffer.from(randomBytes(32)))
  const statements = batches.map((rows) => {
    const params: postgres.ParameterOrJSON<never>[] = []
    const values: string[] = []
    for (let i = 0; i < rows; i++) {
      const envelope = Buffer.from(randomBytes(envelopeBytes))
      const p = params.length
      values.push(`(${Array.from({ length: 12 }, (_, c) => `$${p + c + 1}`).join(', ')})`)
      params.push(
        nextId(),
        mesh,
        recipients[i % RECIPIENTS]!,
        senders[i % SENDERS]!,
        nextId(),
        envelope,
        envelope.length,
        now,
        now + 7 * 24 * 3600 * 1000,
        null,
        null,
        0,
      )
    }
    const text = `insert into bench_delivery (id, mesh, recipient, sender, client_message_id, envelope, size,
      queued_at, expires_at, claim_owner, claim_until, attempts) values ${values.join(', ')}`
    return { text, params, rows }
  })
  const total = statements.reduce((n, s) => n + s.rows, 0)
  const start = performance.now()
  for (const s of statements) await sql.begin((tx) => tx.unsafe(s.text, s.params, { prepare: true }))
  return (total * 1000) / (performance.now() - start)
}
