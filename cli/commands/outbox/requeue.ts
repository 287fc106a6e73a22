import { Command, Option, UsageError } from 'clipanion'
import { initCrypto } from '../../../protocol/crypto.js'
import { isMeshError, MeshError } from '../../../protocol/errors.js'
import { ulidFactory } from '../../../protocol/ulid.js'
import type { OutboxRow } from '../../../peer-runtime/store/types.js'
import { connectDaemon } from '../daemon/connect.js'
import { HomeCommand } from '../home-command.js'
import { DaemonLink } from '../link/daemon-link.js'
import { CLI_SESSION_ID } from '../link/mesh-link.js'
import { openCliOutbox } from './cli-outbox.js'
import { resealed } from './reseal.js'

/** What `outbox requeue --json` prints. */
export interface OutboxRequeueJson {
  mesh: string
  /** Through the daemon (its session closed and opened again around the requeue), or on disk. */
  via: 'daemon' | 'direct'
  /** Each dead row requeued: its id, the id it goes out under now, and that row's state (`pending`). */
  requeued: { id: string; requeuedAs: string; state: 'pending' }[]
  /** With `--dead`: dead rows left as they are (a group message), with why. */
  skipped: { id: string; code: string; message: string }[]
}

/** `agentmesh outbox requeue <id>|--dead`: a dead message goes back to pending, under a fresh id. */
export class OutboxRequeueCommand extends HomeCommand {
  static override paths = [['outbox', 'requeue']]

  static override usage = Command.Usage({
    category: 'Messages',
    description: 'Send a dead message again',
    details: `
      Puts a \`dead\` row of the session \`${CLI_SESSION_ID}\`'s outbox (\`agentmesh outbox list --state dead\`)
      back to \`pending\`: the message is sealed again under a fresh id (the id is sealed inside it), stored
      \`pending\`, and the dead row becomes \`aborted\` with \`requeuedAs\` naming the new id, in one
      transaction. Without a daemon it goes out when the session \`${CLI_SESSION_ID}\` next connects (the
      next \`agentmesh send\` or \`rpc\` of this home, or the daemon). \`--dead\` requeues every dead row. \`--json\` prints \`{mesh,
      via, requeued: [{id, requeuedAs, state}], skipped}\`.

      Only a direct message is requeued (a group message is sealed to the roster of its time: send it
      again). An id this home never sent is \`MESH_ERR_UNKNOWN_MESSAGE\` (exit 1); one that is not dead is a
      usage error (exit 2). The requeue is made in the store on disk: while the home's daemon runs, which
      holds that store while the session is open, it closes the daemon's session \`${CLI_SESSION_ID}\`
      (\`DELETE /v1/sessions/${CLI_SESSION_ID}\`; its outbox stays on disk), requeues, and registers the session
      again, which opens its outbox and sends the message at once. It says on stderr which path it took.
    `,
    examples: [
      ['Send one dead message again', '$0 outbox requeue 01JD3XK5Q6M8Z7Y2W9V4T1S0RP'],
      ['Send every dead message again', '$0 outbox requeue --dead'],
    ],
  })

  mesh = Option.String('--mesh', { description: "The mesh (default: the home's only one)" })

  dead = Option.Boolean('--dead', false, { description: 'Requeue every dead message' })

  id = Option.String({ name: 'id', required: false })

  override async run(): Promise<number> {
    if ((this.id === undefined) === !this.dead) {
      throw new UsageError('pass the id of a dead message, or --dead for all of them (not both)')
    }
    const mesh = await this.meshOrOnly(this.mesh)
    await initCrypto()
    const daemon = await connectDaemon(this.home)
    let out: OutboxRequeueJson
    if (daemon === undefined) {
      this.note('no daemon runs on this home: requeueing in the outbox on disk')
      out = { mesh, via: 'direct', ...(await this.#requeue(mesh)) }
    } else {
      // The daemon holds the session's store while the session is open: close the session (its outbox
      // stays on disk), requeue there, and open it again, which sends what is pending.
      this.note(
        `through the daemon (pid ${daemon.pid}): closing its session ${CLI_SESSION_ID} to requeue in its outbox, then opening it again`,
      )
      try {
        await daemon.client
          .call('DELETE', `/v1/sessions/${CLI_SESSION_ID}?mesh=${encodeURIComponent(mesh)}`)
          .catch((err: unknown) => {
            if (!isMeshError(err, 'MESH_ERR_UNKNOWN_SESSION')) throw err
          })
        out = { mesh, via: 'daemon', ...(await this.#requeue(mesh)) }
      } finally {
        const link = await DaemonLink.open(daemon.client, this.home, mesh).catch((err: unknown) => {
          daemon.client.close()
          throw err
        })
        try {
          await link.renew()
        } finally {
          await link.close()
        }
      }
    }
    if (this.json) {
      this.printJson(out)
      return 0
    }
    const when =
      out.via === 'daemon'
        ? `the daemon's session ${CLI_SESSION_ID} sends it now`
        : `sent when the session ${CLI_SESSION_ID} next connects (agentmesh send or rpc, or the daemon)`
    for (const r of out.requeued) {
      this.context.stdout.write(`requeued ${r.id} as ${r.requeuedAs}: pending, ${when}\n`)
    }
    for (const s of out.skipped) this.note(`left ${s.id} dead: ${s.message}`)
    if (out.requeued.length === 0 && out.skipped.length === 0) this.note('no dead messages in the outbox')
    return 0
  }

  /** Requeues in the session `cli`'s store on disk (no process may hold it). */
  async #requeue(mesh: string): Promise<Omit<OutboxRequeueJson, 'mesh' | 'via'>> {
    const cli = await openCliOutbox(this.home, mesh, (holder) =>
      this.note(`waiting for ${holder}, which holds this presence's store`),
    )
    const out: Omit<OutboxRequeueJson, 'mesh' | 'via'> = { requeued: [], skipped: [] }
    try {
      let rows: OutboxRow[]
      if (this.id !== undefined) {
        const row = await cli?.store.getOutbox(this.id)
        if (row === undefined) {
          throw new MeshError(
            'MESH_ERR_UNKNOWN_MESSAGE',
            `this home sent no message ${this.id} in mesh ${mesh}`,
            { details: { id: this.id, mesh } },
          )
        }
        if (row.state !== 'dead') {
          throw new UsageError(
            `message ${row.id} is ${row.state}, not dead: only a dead message is requeued` +
              (row.state === 'aborted' && row.requeuedAs !== undefined
                ? ` (it was requeued as ${row.requeuedAs})`
                : ''),
          )
        }
        rows = [row]
      } else {
        rows = cli === undefined ? [] : await cli.store.listOutbox(['dead'], Number.MAX_SAFE_INTEGER)
      }
      const nextId = ulidFactory()
      for (const row of rows) {
        const now = Date.now()
        let fresh
        try {
          fresh = resealed(row, cli!.identity, nextId(), now)
        } catch (err) {
          if (!isMeshError(err) || this.id !== undefined) throw err
          out.skipped.push({ id: row.id, code: err.code, message: err.message })
          continue
        }
        const created = await cli!.store.requeueDead(row.id, fresh, now)
        // Moved on meanwhile (another process requeued it): nothing of ours to report.
        if (created !== undefined) out.requeued.push({ id: row.id, requeuedAs: created.id, state: 'pending' })
      }
    } finally {
      await cli?.store.close()
    }
    return out
  }
}
