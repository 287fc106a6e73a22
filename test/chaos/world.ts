/**
 * The chaos suite's world: real processes of the built binary in temp homes. A coordinator (PGlite in
 * its data directory, or Postgres) on a fixed free port so it can be killed and started again where
 * the peers expect it; mesh `team` with alice and bob, each reaching the coordinator through their own
 * TCP proxy (the proxy's URL is written into their mesh.json); bob's `daemon up` with one registered
 * session that sends; alice's `listen --json`, whose every line is an arrival. Every process can be
 * `kill -9`'d and started again on the same home, data directory and port.
 */
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { DaemonClient } from '../../peer-runtime/node/daemon/client.js'
import { daemonPaths, readAdminToken } from '../../peer-runtime/node/daemon/files.js'
import { initCrypto } from '../../protocol/index.js'
import { buildOnce } from '../support/coordinator-process.js'
import { freePort, startTcpProxy, type TcpProxy } from '../support/tcp-proxy.js'
import { parseObject, Proc, runOnce, type Exit, type Line } from './proc.js'

/** Which store the coordinator runs on. */
export type StoreKind = 'pglite' | 'postgres'

export interface WorldOptions {
  store: StoreKind
  /** A world's root to start from (`makeTemplate`): its coordinator state and homes are copied. */
  from?: string
  /** Required for `postgres`: an empty database of a cluster the suite may restart. */
  databaseUrl?: string
  /** Where progress notes go (default: nowhere). */
  log?: (text: string) => void
}

/** One `listen` line that carried a message. */
export interface Arrival {
  id: string
  at: number
  /** Which `listen` process (0 = the first) printed it. */
  incarnation: number
}

/** What the coordinator's /metrics said about suppressed duplicates, summed over its lifetimes. */
export interface DuplicateCounts {
  /** Receivers acked `duplicate`: their inbox already held it (so they did not print it again). */
  receiverDuplicates: number
  /** Pushes of a delivery that had been pushed before. */
  redeliveries: number
}

const MESH = 'team'
const live = new Set<ChaosWorld>()

export class ChaosWorld {
  readonly root: string
  readonly port: number
  readonly o: WorldOptions
  readonly aliceProxy: TcpProxy
  readonly bobProxy: TcpProxy
  coordinator: Proc | undefined
  daemon: Proc | undefined
  listen: Proc | undefined
  /** Every listen process started, in order. */
  readonly listens: Proc[] = []
  readonly arrivals: Arrival[] = []
  /** Observations for the run's report (restart times). */
  readonly notes: string[] = []
  alicePk = ''
  session: DaemonClient | undefined
  #admin: DaemonClient | undefined
  readonly #all: Proc[] = []
  readonly #starts = { coordinator: [] as number[], daemon: [] as number[] }
  readonly #dupes: DuplicateCounts = { receiverDuplicates: 0, redeliveries: 0 }
  #dupesThisLife: DuplicateCounts = { receiverDuplicates: 0, redeliveries: 0 }
  #scraper: NodeJS.Timeout | undefined
  readonly #arrivalWaiters = new Set<() => void>()

  private constructor(o: WorldOptions, root: string, port: number, alice: TcpProxy, bob: TcpProxy) {
    this.o = o
    this.root = root
    this.port = port
    this.aliceProxy = alice
    this.bobProxy = bob
  }

  /** Builds the binary if needed, makes the temp root, the proxies and the coordinator's port. */
  static async create(o: WorldOptions): Promise<ChaosWorld> {
    if (o.store === 'postgres' && o.databaseUrl === undefined) throw new Error('postgres needs databaseUrl')
    await Promise.all([buildOnce(), initCrypto()])
    const root = await mkdtemp(join(tmpdir(), 'agentmesh-chaos-'))
    if (o.from !== undefined) await cp(o.from, root, { recursive: true })
    const port = await freePort()
    const alice = await startTcpProxy({ targetPort: port })
    const bob = await startTcpProxy({ targetPort: port })
    const world = new ChaosWorld(o, root, port, alice, bob)
    live.add(world)
    if (o.from !== undefined) await world.#pointAtProxies()
    return world
  }

  home(name: string): string {
    return join(this.root, name)
  }

  log(text: string): void {
    this.o.log?.(text)
  }

  #spawn(name: string, args: string[], onLine?: (l: Line) => void): Proc {
    const p = new Proc(name, args, {}, onLine)
    this.#all.push(p)
    return p
  }

  // ── the coordinator ──

  /** Starts the coordinator on the world's port and waits for its ready line. */
  async startCoordinator(timeoutMs = 60_000): Promise<void> {
    if (this.coordinator?.running === true) throw new Error('the coordinator runs already')
    const args = [
      'coordinator',
      'up',
      '--json',
      '--port',
      String(this.port),
      '--data-dir',
      this.home('coordinator'),
      '--log-level',
      'warn',
      ...(this.o.store === 'postgres' ? ['--database-url', this.o.databaseUrl!] : []),
    ]
    const p = this.#spawn('coordinator', args)
    this.coordinator = p
    await p.json((l) => typeof l['url'] === 'string' && !('level' in l), 'its ready line', timeoutMs)
    this.#starts.coordinator.push(Date.now() - p.startedAt)
    this.#dupesThisLife = { receiverDuplicates: 0, redeliveries: 0 }
    this.#scraper ??= setInterval(() => void this.scrapeDuplicates(), 1000)
  }

  /** `kill -9` of the coordinator (its duplicate counters are read first: they die with it). */
  async killCoordinator(): Promise<void> {
    await this.#scrapeAndFold()
    await this.coordinator?.kill9()
  }

  /** SIGTERM: the coordinator closes cleanly (used to finish a template). */
  async stopCoordinator(): Promise<Exit | undefined> {
    await this.#scrapeAndFold()
    return this.coordinator?.signal('SIGTERM')
  }

  async #scrapeAndFold(): Promise<void> {
    await this.scrapeDuplicates()
    this.#foldDuplicates()
  }

  /** Reads /metrics of the running coordinator (direct, not through a proxy). */
  async scrapeDuplicates(): Promise<void> {
    if (this.coordinator?.running !== true) return
    try {
      const res = await fetch(`http://127.0.0.1:${this.port}/metrics`, { signal: AbortSignal.timeout(1000) })
      const text = await res.text()
      const dup = /^agentmesh_deliveries_total\{status="duplicate"\} (\d+)/m.exec(text)
      const re = /^agentmesh_redeliveries_total (\d+)/m.exec(text)
      this.#dupesThisLife = {
        receiverDuplicates: dup === null ? 0 : Number(dup[1]),
        redeliveries: re === null ? 0 : Number(re[1]),
      }
    } catch {
      // down, or busy: the next scrape reads the counters (they only grow within one life)
    }
  }

  #foldDuplicates(): void {
    this.#dupes.receiverDuplicates += this.#dupesThisLife.receiverDuplicates
    this.#dupes.redeliveries += this.#dupesThisLife.redeliveries
    this.#dupesThisLife = { receiverDuplicates: 0, redeliveries: 0 }
  }

  /** Duplicates the coordinator saw suppressed, over all its lives so far (a lower bound after a kill). */
  async duplicates(): Promise<DuplicateCounts> {
    await this.scrapeDuplicates()
    return {
      receiverDuplicates: this.#dupes.receiverDuplicates + this.#dupesThisLife.receiverDuplicates,
      redeliveries: this.#dupes.redeliveries + this.#dupesThisLife.redeliveries,
    }
  }

  // ── the mesh ──

  /** The owner creates `team`; alice and bob join; both homes are pointed at their proxies. */
  async createMesh(): Promise<void> {
    const direct = `http://127.0.0.1:${this.port}`
    await must([
      'mesh',
      'create',
      MESH,
      '--coordinator',
      direct,
      '--admin-token-file',
      join(this.home('coordinator'), 'admin-token'),
      '--name',
      'owner',
      '--home',
      this.home('owner'),
      '--json',
    ])
    const invite = await must([
      'invite',
      'create',
      '--mesh',
      MESH,
      '--uses',
      '2',
      '--home',
      this.home('owner'),
    ])
    const token = invite.stdout.trim()
    for (const name of ['alice', 'bob']) {
      await must(['join', token, '--name', name, '--home', this.home(name), '--json'])
    }
    await this.#pointAtProxies()
  }

  /** Writes each peer's proxy into its mesh.json: every later process of that home goes through it. */
  async #pointAtProxies(): Promise<void> {
    for (const [name, proxy] of [
      ['alice', this.aliceProxy],
      ['bob', this.bobProxy],
    ] as const) {
      const path = join(this.home(name), 'meshes', MESH, 'mesh.json')
      const config = JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>
      config['coordinatorUrl'] = proxy.url
      config['wsUrl'] = `ws://127.0.0.1:${proxy.port}/ws`
      await writeFile(path, JSON.stringify(config, null, 2) + '\n')
      if (name === 'alice') this.alicePk = String(config['memberPk'])
    }
    this.log(`mesh ${MESH}: alice ${this.alicePk.slice(0, 12)}…, bob; coordinator :${this.port}`)
  }

  // ── bob's daemon ──

  /** Starts bob's daemon (relay only) and waits for its ready line; registers the session once. */
  async startDaemon(timeoutMs = 30_000): Promise<void> {
    if (this.daemon?.running === true) throw new Error('the daemon runs already')
    const p = this.#spawn('daemon', ['daemon', 'up', '--json', '--no-p2p', '--home', this.home('bob')])
    this.daemon = p
    await p.json((l) => typeof l['socket'] === 'string', 'its ready line', timeoutMs)
    this.#starts.daemon.push(Date.now() - p.startedAt)
    if (this.session === undefined) {
      const paths = daemonPaths(this.home('bob'))
      this.#admin = new DaemonClient({ socketPath: paths.socket }, await readAdminToken(paths.token))
      const res = await this.#admin.request<{ token: string }>('POST', '/v1/sessions', {
        body: { mesh: MESH, sessionId: 'chaos', displayName: 'bob-chaos' },
      })
      if (res.status !== 201)
        throw new Error(`POST /v1/sessions answered ${res.status}: ${JSON.stringify(res.body)}`)
      this.session = this.#admin.as(res.body.token)
    }
  }

  async killDaemon(): Promise<void> {
    await this.daemon?.kill9()
  }

  /** The daemon's runtime store files (bob's presences): checked while the daemon is down. */
  storeDir(): string {
    return join(this.home('bob'), 'meshes', MESH, 'stores')
  }

  // ── alice's listen ──

  /** Starts `listen --json` on alice's home; does not wait for it (a start may happen while all is down). */
  startListen(): Proc {
    if (this.listen?.running === true) throw new Error('listen runs already')
    const incarnation = this.listens.length
    const p = this.#spawn(
      `listen#${incarnation}`,
      ['listen', '--mesh', MESH, '--json', '--home', this.home('alice')],
      (l) => {
        const v = parseObject(l.text)
        if (v === undefined || typeof v['clientMessageId'] !== 'string') return
        this.arrivals.push({ id: v['clientMessageId'], at: l.at, incarnation })
        for (const w of [...this.#arrivalWaiters]) w()
      },
    )
    this.listen = p
    this.listens.push(p)
    return p
  }

  /** Resolves once alice's listen said it listens. */
  async listening(timeoutMs = 30_000): Promise<void> {
    const p = this.listen
    if (p === undefined) throw new Error('no listen')
    await p.until(() => p.stderr.includes(`listening on mesh ${MESH}`), '"listening on mesh"', timeoutMs)
  }

  async killListen(): Promise<void> {
    await this.listen?.kill9()
  }

  /** Resolves once every id in `ids` arrived, or rejects after `timeoutMs` saying how many did. */
  arrivedAll(ids: ReadonlySet<string>, timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const seen = new Set<string>()
      let scanned = 0
      const check = (): void => {
        for (; scanned < this.arrivals.length; scanned++) {
          const id = this.arrivals[scanned]!.id
          if (ids.has(id)) seen.add(id)
        }
        if (seen.size >= ids.size) finish(resolve)
      }
      const finish = (fn: () => void): void => {
        clearTimeout(timer)
        this.#arrivalWaiters.delete(check)
        fn()
      }
      const timer = setTimeout(
        () => finish(() => reject(new Error(`${seen.size} of ${ids.size} arrived within ${timeoutMs} ms`))),
        timeoutMs,
      )
      this.#arrivalWaiters.add(check)
      check()
    })
  }

  /** How long each start of the coordinator and of the daemon took until its ready line (ms). */
  get startTimes(): { coordinator: number[]; daemon: number[] } {
    return this.#starts
  }

  /** Every process the world started and is still running. */
  running(): Proc[] {
    return this.#all.filter((p) => p.running)
  }

  /** Closes every world not closed yet (a test's afterEach: a timed-out run leaves its processes). */
  static async closeAll(): Promise<void> {
    await Promise.all([...live].map((w) => w.close()))
  }

  /** Kills every process, closes the proxies and removes the temp root. */
  async close(): Promise<void> {
    live.delete(this)
    clearInterval(this.#scraper)
    this.session?.close()
    this.#admin?.close()
    await Promise.all(this.#all.map((p) => p.kill9()))
    await Promise.all([this.aliceProxy.close(), this.bobProxy.close()])
    await rm(this.root, { recursive: true, force: true })
  }
}

/** Runs a setup command and throws with its output unless it exits 0. */
async function must(args: string[]): Promise<{ stdout: string; stderr: string }> {
  const r = await runOnce(args)
  if (r.code !== 0) throw new Error(`agentmesh ${args.slice(0, 2).join(' ')} exited ${r.code}: ${r.stderr}`)
  return r
}
