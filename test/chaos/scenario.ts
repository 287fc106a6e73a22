/**
 * One chaos run: a fresh world, `messages` DMs from bob's daemon to alice's `listen`, the faults of a
 * schedule applied while they flow, then the history check, the two recovery figures and the state of
 * `listen` (still running `holdMs` after the last fault, exits 0 on SIGINT). Every process is killed
 * at the end, pass or fail.
 */
import { writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { PgCluster } from '../support/pg-cluster.js'
import { instantiate, type Template } from './template.js'
import { checkHistory, describeVerdict, type FinalState, type Verdict } from './history.js'
import { describeFault, type Fault } from './schedule.js'
import { sendAll } from './traffic.js'
import { ChaosWorld, type DuplicateCounts, type StoreKind } from './world.js'

/** The coordinator's default limit for one member (DESIGN.md §6): a burst, then a steady rate. */
export const MEMBER_RATE_PER_S = 100
/**
 * How long receipts may take after the arrivals: an ack lost with a coordinator or a Postgres restart is
 * settled by the redelivery after the claim lease (30 s, DESIGN.md §6) and its sweep (5 s).
 */
const RECEIPT_WAIT_MS = 40_000
/** The first recovery goal: what the coordinator had accepted reaches alice within this. */
export const ACCEPTED_GOAL_MS = 5000

export interface RunOptions {
  seed: number
  messages: number
  faults: Fault[]
  /** How long `listen` must still run after the last fault before SIGINT. */
  holdMs: number
  /** The set-up world to start from (its store is the run's store; on Postgres, its cluster is restarted). */
  template: Template
  log?: (text: string) => void
}

/** The recovery figures, measured from the end of the last fault (the restarted process was up). */
export interface Recovery {
  lastFaultEndedAt: number
  /** Messages the coordinator had accepted (outbox `accepted`/`done`) but alice had not printed yet. */
  acceptedCount: number
  acceptedMs: number
  acceptedMet: boolean
  /** Messages still in bob's outbox (or not yet answered) then, and the bound for them. */
  outboxCount: number
  outboxMs: number
  outboxBoundMs: number
  outboxMet: boolean
}

export interface RunResult {
  seed: number
  store: StoreKind
  messages: number
  faults: Fault[]
  verdict: Verdict
  recovery: Recovery
  duplicates: DuplicateCounts
  replays: number
  retries: number
  /** Every broken expectation in words (empty: the run passed). */
  problems: string[]
  /** What the run observed besides (how long restarted processes took to come up). */
  notes: string[]
  durationMs: number
}

/** Runs one schedule; never throws for a product failure (it lands in `problems`). */
export async function runSchedule(o: RunOptions): Promise<RunResult> {
  rawStates.clear() // one run's rows only
  const t0 = Date.now()
  const log = o.log ?? (() => {})
  const start = await instantiate(o.template)
  const world = await ChaosWorld.create({ store: o.template.store, ...start, log })
  const problems: string[] = []
  const killedByUs = new Set<number>()
  try {
    const step = (what: string): void => log(`  ${fmt(Date.now() - t0)} ${what}`)
    try {
      await world.startCoordinator()
      step('coordinator up')
      await world.startDaemon()
      step('daemon up, session registered')
      world.startListen()
      await world.listening()
      step('listen up')
    } catch (err) {
      return failedSetup(o, err, t0)
    }

    // One message first: bob's session learns alice's key, and the timing starts warm.
    const warm = await sendAll({
      client: () => world.session!,
      to: world.alicePk,
      count: 1,
      tag: `seed-${o.seed}-warm`,
      signal: AbortSignal.timeout(30_000),
    })
    await world.arrivedAll(new Set(warm.acked.keys()), 30_000)
    const printedBefore = world.arrivals.length
    step('warm-up message printed')

    const traffic = new AbortController()
    const trafficStart = Date.now()
    const liveAcked = new Set<string>()
    const sending = sendAll({
      client: () => world.session!,
      to: world.alicePk,
      count: o.messages,
      tag: `seed-${o.seed}`,
      signal: traffic.signal,
      onAck: (id) => liveAcked.add(id),
    })

    // The faults, in order; each kill waits `downMs` and starts the process again (listen only when it
    // was listen that was killed: nobody restarts it after the coordinator went away).
    let lastFaultEndedAt = trafficStart
    for (const f of o.faults) {
      const wait = trafficStart + f.atMs - Date.now()
      if (wait > 0) await sleep(wait)
      log(`  fault ${describeFault(f)}`)
      try {
        await applyFault(world, f, o.template.pg?.cluster, killedByUs)
      } catch (err) {
        problems.push(`${describeFault(f)}: ${err instanceof Error ? err.message : String(err)}`)
      }
      lastFaultEndedAt = Date.now()
    }

    // What each acknowledged, not-yet-printed message was when the last fault ended: accepted by the
    // coordinator, or still in bob's outbox. (Sends answered later are in neither figure.)
    const printedIds = new Set(world.arrivals.map((a) => a.id))
    const pendingAtEnd: string[] = []
    const acceptedAtEnd = new Set<string>()
    const ackedSoFar = new Set(liveAcked)
    const states = await statesOf(
      world,
      [...ackedSoFar].filter((id) => !printedIds.has(id)),
    )
    const atFault = new Map([...states.keys()].map((id) => [id, rawStates.get(id)]))
    for (const [id, s] of states) {
      if (s !== undefined && (s.state === 'accepted' || s.state === 'done')) acceptedAtEnd.add(id)
      else pendingAtEnd.push(id)
    }

    const result = await sending
    step('every send answered')
    for (const [id, why] of result.refused) problems.push(`send ${id} refused: ${why}`)
    const outboxIds = new Set(pendingAtEnd)

    // Everything answered 202 must reach alice: bounded by the rate limit for what was still with bob.
    const acked = new Set(result.acked.keys())
    const boundMs = Math.ceil((outboxIds.size / MEMBER_RATE_PER_S) * 1000) + 1000
    // Idle for longer than a claim lease (a push lost with a connection is redelivered after it) is lost.
    const waited = await waitForArrivals(world, acked, {
      timeoutMs: boundMs + 90_000,
      idleMs: RECEIPT_WAIT_MS + 5000,
    })
    if (waited !== undefined) problems.push(waited)

    step('arrivals awaited')
    // Receipts follow the arrivals: wait (bounded) until each printed message's row is done. This costs
    // time only when receipts are missing.
    const printed = new Set(world.arrivals.map((a) => a.id))
    const finals = await settledStates(world, result.ids, (id) => printed.has(id), RECEIPT_WAIT_MS)

    step('receipts awaited')
    // The recovery figures.
    const arrivedAt = new Map<string, number>()
    for (const a of world.arrivals) if (!arrivedAt.has(a.id)) arrivedAt.set(a.id, a.at)
    const lastOf = (ids: Iterable<string>): number => {
      let last = lastFaultEndedAt
      for (const id of ids) last = Math.max(last, arrivedAt.get(id) ?? Infinity)
      return last - lastFaultEndedAt
    }
    const acceptedMs = lastOf(acceptedAtEnd)
    const outboxMs = lastOf(outboxIds)
    const recovery: Recovery = {
      lastFaultEndedAt,
      acceptedCount: acceptedAtEnd.size,
      acceptedMs,
      acceptedMet: acceptedMs <= ACCEPTED_GOAL_MS,
      outboxCount: outboxIds.size,
      outboxMs,
      outboxBoundMs: boundMs,
      outboxMet: outboxMs <= boundMs,
    }
    if (o.log !== undefined) {
      // Where the recovery time went: arrivals per second after the last fault, of each figure's ids.
      const perSecond = (ids: Iterable<string>): string => {
        const bins: number[] = []
        for (const id of ids) {
          const at = arrivedAt.get(id)
          if (at === undefined) continue
          const bin = Math.max(0, Math.floor((at - lastFaultEndedAt) / 1000))
          bins[bin] = (bins[bin] ?? 0) + 1
        }
        return Array.from(bins, (n) => n ?? 0).join(' ')
      }
      step(`outbox ids arriving per second after the last fault: ${perSecond(outboxIds)}`)
      step(`accepted ids arriving per second after the last fault: ${perSecond(acceptedAtEnd)}`)
      // The stragglers: the last outbox ids to arrive, with what bob's outbox says of them now.
      const late = [...outboxIds]
        .map((id) => ({ id, at: arrivedAt.get(id) ?? Infinity }))
        .sort((a, b) => b.at - a.at)
        .slice(0, 3)
      for (const { id, at } of late) {
        const res = await world
          .session!.request<Record<string, unknown>>('GET', `/v1/messages/${id}`, {
            signal: AbortSignal.timeout(5_000),
          })
          .catch((err: unknown) => ({ status: 0, body: { error: String(err) } }))
        step(`  straggler ${id} at +${fmt(at - lastFaultEndedAt)}: ${JSON.stringify(res.body)}`)
        step(`    when the last fault ended: ${JSON.stringify(atFault.get(id))}`)
      }
    }
    if (!recovery.acceptedMet)
      problems.push(
        `recovery: ${acceptedAtEnd.size} accepted messages took ${fmt(acceptedMs)} after the last fault (goal ${fmt(ACCEPTED_GOAL_MS)})`,
      )
    if (!recovery.outboxMet)
      problems.push(
        `recovery: ${outboxIds.size} messages from bob's outbox took ${fmt(outboxMs)} after the last fault (bound ${fmt(boundMs)})`,
      )

    // The history.
    const verdict = checkHistory({
      attempted: result.ids,
      acked: result.acked,
      printed: world.arrivals.slice(printedBefore).map((a) => a.id),
      finals,
      recipient: world.alicePk,
      // With no listen left, an ack that died with a coordinator is never redelivered: no receipt comes.
      recipientGone: world.listen?.running !== true,
    })
    problems.push(...describeVerdict(verdict))
    for (const id of verdict.duplicated.slice(0, 5)) {
      const by = world.arrivals.filter((a) => a.id === id)
      problems.push(
        `  ${id} was printed by ${by.map((a) => `listen#${a.incarnation} at +${fmt(a.at - trafficStart)}`).join(' and ')}` +
          ` (listen kills at ${
            o.faults
              .filter((f) => f.kind === 'kill' && f.target === 'listen')
              .map((f) => `+${fmt(f.atMs)}`)
              .join(', ') || 'none'
          })`,
      )
    }
    if (verdict.arrivalWithoutReceipt.length > 0) {
      const states = new Map<string, number>()
      for (const id of verdict.arrivalWithoutReceipt) {
        const f = finals.get(id)
        const k = f === undefined ? 'no row' : `${f.state}, alice ${f.recipients[world.alicePk] ?? '-'}`
        states.set(k, (states.get(k) ?? 0) + 1)
      }
      problems.push(
        `  their rows in bob's outbox ${fmt(RECEIPT_WAIT_MS)} after the arrivals: ` +
          [...states].map(([k, n]) => `${n} ${k}`).join('; '),
      )
    }

    // Processes that died on their own (not by our kill -9): listen must ride out every outage.
    for (const p of [world.coordinator, world.daemon, ...world.listens]) {
      if (p !== undefined && !p.running && !killedByUs.has(p.pid)) {
        const exit = await p.exited
        // The whole kept stderr goes to a file: the first lines of a crash say what it was.
        const file = join(tmpdir(), `agentmesh-chaos-${o.seed}-${p.name.replace(/\W+/g, '_')}-${p.pid}.log`)
        await writeFile(file, p.stderr).catch(() => undefined)
        problems.push(
          `${p.name} exited by itself (code ${exit.code}, signal ${exit.signal}): ${tail(p.stderr)} (stderr in ${file})`,
        )
      }
    }

    // listen is still running `holdMs` after the last fault, and SIGINT ends it with 0.
    const listen = world.listen
    const hold = lastFaultEndedAt + o.holdMs - Date.now()
    if (hold > 0) await Promise.race([sleep(hold), listen?.exited])
    if (listen === undefined || !listen.running) {
      if (listen !== undefined && killedByUs.has(listen.pid))
        problems.push('listen was not running at the end (killed, not restarted)')
      else if (listen !== undefined && !problems.some((p) => p.startsWith(listen.name)))
        problems.push(
          `${listen.name} was not running ${fmt(o.holdMs)} after the last fault: ${tail(listen.stderr)}`,
        )
    } else {
      const exit = await Promise.race([listen.signal('SIGINT'), sleep(10_000).then(() => undefined)])
      if (exit === undefined) problems.push('listen did not exit within 10 s of SIGINT')
      else if (exit.code !== 0)
        problems.push(`listen exited ${exit.code ?? exit.signal} on SIGINT: ${tail(listen.stderr)}`)
    }

    const duplicates = await world.duplicates()
    return {
      seed: o.seed,
      store: o.template.store,
      messages: o.messages,
      faults: o.faults,
      verdict,
      recovery,
      duplicates,
      replays: result.replays,
      retries: result.retries,
      problems,
      notes: [
        ...world.notes,
        `coordinator starts ${world.startTimes.coordinator.map(fmt).join(', ')}`,
        `daemon starts ${world.startTimes.daemon.map(fmt).join(', ')}`,
      ],
      durationMs: Date.now() - t0,
    }
  } finally {
    await world.close()
  }
}

/** The result of a run whose world did not come up: no history, one problem saying why. */
function failedSetup(o: RunOptions, err: unknown, t0: number): RunResult {
  const message = err instanceof Error ? err.message : String(err)
  return {
    seed: o.seed,
    store: o.template.store,
    messages: o.messages,
    faults: o.faults,
    verdict: checkHistory({ attempted: [], acked: new Map(), printed: [], finals: new Map(), recipient: '' }),
    recovery: {
      lastFaultEndedAt: t0,
      acceptedCount: 0,
      acceptedMs: 0,
      acceptedMet: false,
      outboxCount: 0,
      outboxMs: 0,
      outboxBoundMs: 0,
      outboxMet: false,
    },
    duplicates: { receiverDuplicates: 0, redeliveries: 0 },
    replays: 0,
    retries: 0,
    problems: [`the world did not come up: ${message}`],
    notes: [],
    durationMs: Date.now() - t0,
  }
}

async function applyFault(
  world: ChaosWorld,
  f: Fault,
  pg: PgCluster | undefined,
  killedByUs: Set<number>,
): Promise<void> {
  const proxy = (p: 'alice' | 'bob'): ChaosWorld['aliceProxy'] =>
    p === 'alice' ? world.aliceProxy : world.bobProxy
  switch (f.kind) {
    case 'kill': {
      const p =
        f.target === 'coordinator' ? world.coordinator : f.target === 'daemon' ? world.daemon : world.listen
      if (p === undefined || !p.running) return // it died already: that is reported at the end
      killedByUs.add(p.pid)
      if (f.target === 'coordinator') await world.killCoordinator()
      else await p.kill9()
      await sleep(f.downMs)
      if (f.target === 'coordinator') await world.startCoordinator()
      else if (f.target === 'daemon') await world.startDaemon()
      else {
        // Not awaited (a listen may start while all is down); when it says it listens goes in the report.
        const started = Date.now()
        world.startListen()
        world.listening(120_000).then(
          () =>
            world.notes.push(
              `listen#${world.listens.length - 1} listening ${fmt(Date.now() - started)} after its start`,
            ),
          () => undefined,
        )
      }
      return
    }
    case 'drop':
      proxy(f.proxy).drop()
      return
    case 'cut':
      proxy(f.proxy).cut(f.mode)
      return
    case 'stall':
      await proxy(f.proxy).stall(f.ms)
      return
    case 'pg-restart':
      if (pg === undefined) throw new Error('a Postgres restart needs the Postgres leg')
      await pg.restartImmediate()
      return
  }
}

/** `GET /v1/messages/:id` of each id (undefined for a 404), 32 at a time; retried while the daemon is down. */
/** The last `/v1/messages/:id` body read of each id, whole (a verbose run shows the stragglers'). */
const rawStates = new Map<string, unknown>()

async function statesOf(world: ChaosWorld, ids: string[]): Promise<Map<string, FinalState | undefined>> {
  const out = new Map<string, FinalState | undefined>()
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < ids.length) {
      const id = ids[next++]!
      for (let attempt = 0; ; attempt++) {
        try {
          const res = await world.session!.request<FinalState>('GET', `/v1/messages/${id}`, {
            signal: AbortSignal.timeout(10_000),
            redial: false,
          })
          if (res.status === 200) {
            out.set(id, { state: res.body.state, recipients: res.body.recipients })
            rawStates.set(id, res.body)
          } else if (res.status === 404) out.set(id, undefined)
          else throw new Error(`HTTP ${res.status}`)
          break
        } catch (err) {
          if (attempt >= 20) throw err
          await sleep(200)
        }
      }
    }
  }
  await Promise.all(Array.from({ length: 32 }, worker))
  return out
}

/**
 * Waits until every id in `ids` was printed; gives up (with the reason) when no `listen` runs, when
 * nothing new arrived for `idleMs`, or after `timeoutMs`.
 */
async function waitForArrivals(
  world: ChaosWorld,
  ids: ReadonlySet<string>,
  o: { timeoutMs: number; idleMs: number },
): Promise<string | undefined> {
  const deadline = Date.now() + o.timeoutMs
  let seen = 0
  let lastProgress = Date.now()
  for (;;) {
    const printed = new Set(world.arrivals.map((a) => a.id))
    const n = [...ids].filter((id) => printed.has(id)).length
    if (n >= ids.size) return undefined
    if (n > seen) {
      seen = n
      lastProgress = Date.now()
    }
    const why =
      world.listen?.running !== true
        ? 'no listen is running'
        : Date.now() - lastProgress > o.idleMs
          ? `nothing new for ${fmt(o.idleMs)}`
          : Date.now() > deadline
            ? `the ${fmt(o.timeoutMs)} bound passed`
            : undefined
    if (why !== undefined)
      return `${n} of ${ids.size} acknowledged messages printed when the wait ended: ${why}`
    await sleep(100)
  }
}

/** The states of `ids`, asked again for those `open` and not yet `done` until all are or `timeoutMs` passed. */
async function settledStates(
  world: ChaosWorld,
  ids: string[],
  wait: (id: string) => boolean,
  timeoutMs: number,
): Promise<Map<string, FinalState | undefined>> {
  const deadline = Date.now() + timeoutMs
  const out = await statesOf(world, ids)
  for (;;) {
    const open = ids.filter((id) => wait(id) && out.get(id)?.state !== 'done')
    if (open.length === 0 || Date.now() > deadline) return out
    await sleep(250)
    for (const [id, s] of await statesOf(world, open)) out.set(id, s)
  }
}

function fmt(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`
}

function tail(text: string): string {
  return JSON.stringify(text.trim().split('\n').slice(-4).join(' | ').slice(-600))
}

/** One line per run for the report. */
export function summarize(r: RunResult): string {
  const rec = r.recovery
  const mark = (met: boolean): string => (met ? 'met' : 'MISSED')
  return (
    `seed ${r.seed} ${r.store}: ${r.verdict.printedOnce}/${r.messages} printed once, ${r.faults.length} faults, ` +
    `accepted→alice ${fmt(rec.acceptedMs)} for ${rec.acceptedCount} (${mark(rec.acceptedMet)}), ` +
    `outbox→alice ${fmt(rec.outboxMs)} for ${rec.outboxCount} (bound ${fmt(rec.outboxBoundMs)}, ${mark(rec.outboxMet)}), ` +
    `duplicates suppressed ${r.duplicates.receiverDuplicates} at alice + ${r.replays} IPC replays, ` +
    `${r.retries} IPC retries, ${fmt(r.durationMs)}` +
    (r.notes.length === 0 ? '' : ` (${r.notes.join('; ')})`) +
    (r.problems.length === 0 ? ' — PASS' : ` — FAIL:\n    ${r.problems.join('\n    ')}`)
  )
}
