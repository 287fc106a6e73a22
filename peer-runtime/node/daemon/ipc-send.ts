/**
 * `POST /v1/send`, idempotent by id and request fingerprint (PROTOCOL.md §5 "Request fingerprint"):
 * the fingerprint of `[channel, target, meta, payload]` is computed before sealing and stored on the
 * outbox row with the sealed bytes, in the same write. A repeat of the id with the same fingerprint gets
 * the same answer and sends nothing; another fingerprint gets `MESH_ERR_IDEMPOTENCY_CONFLICT` (409) and
 * changes nothing. Sends of one session with one id run one at a time, so two concurrent repeats cannot
 * both seal; a repeat that still loses a race (the row came from elsewhere) is caught after the insert,
 * from the fingerprint the send's receipt reports for the stored row (no read back).
 *
 * Sends arriving in one turn of the event loop (requests read from several connections in one poll
 * phase) start together at its end (`setImmediate`), so the outbox stores them in one transaction and
 * claims them in one batch: a send costs a share of a commit, not a commit of its own. (The outbox
 * itself groups only what reaches it in one microtask turn.)
 */
import { bytesEqual, fromHex, toHex } from '../../../protocol/encoding.js'
import { isDirectChannel, type DirectChannel } from '../../../protocol/envelope.js'
import { MeshError } from '../../../protocol/errors.js'
import { requestFingerprint } from '../../../protocol/fingerprint.js'
import { isPlainObject } from '../../../protocol/schema.js'
import { isUlid } from '../../../protocol/ulid.js'
import type { Peer } from '../../peer.js'
import { endOfTurn } from '../../store/coalescing.js'
import type { OutboxRow } from '../../store/types.js'

/** The body of `POST /v1/send`. */
export interface SendBody {
  /** The recipient key, 64 hex characters. */
  to: string
  /** Any JSON value; or `text`, sent as `{text}` (what `agentmesh send` sends). */
  payload?: unknown
  text?: string
  /** The idempotency key: a ULID, used as the message's clientMessageId. Minted when absent. */
  id?: string
  /** `dm` (default), `rpc` or `stream`. */
  channel?: string
  meta?: Record<string, unknown>
}

/** What `POST /v1/send` answers (the same for a repeat of the same request). */
export interface SendAnswer {
  id: string
  mesh: string
  /** The sending session's key (hex). */
  from: string
  to: string
  channel: DirectChannel
  /** The request fingerprint (hex). */
  fingerprint: string
  /**
   * The session's outbox depth when the send was answered (rows pending or in flight, this one
   * included while undelivered): what a caller paces itself by before `MESH_ERR_OUTBOX_FULL` (429).
   */
  outboxDepth: number
}

/** The most sends one `POST /v1/send` with an array body may carry. */
export const MAX_SENDS_PER_REQUEST = 1_000

/** One item of a batch send's answer: the status and body a single `POST /v1/send` would have had. */
export type BatchItem =
  ({ status: 202; replay: boolean } & SendAnswer) | { status: number; error: Record<string, unknown> }

/** A send's outcome: `replay` is true for a repeat answered from the outbox. */
export interface SendOutcome {
  answer: SendAnswer
  replay: boolean
}

/** Runs idempotent sends for one session's peer. */
export class IdempotentSender {
  readonly #peer: Peer
  readonly #locks = new Map<string, Promise<unknown>>()
  /** The end of the current turn, shared by every send that arrived in it. */
  #turn: Promise<void> | undefined

  constructor(peer: Peer) {
    this.#peer = peer
  }

  async send(body: unknown, signal?: AbortSignal): Promise<SendOutcome> {
    const req = parseSendBody(body)
    const fingerprint = requestFingerprint({
      channel: req.channel,
      target: req.to,
      payload: req.payload,
      ...(req.meta !== undefined && { meta: req.meta }),
    })
    await this.#endOfTurn()
    if (req.id === undefined) return this.#fresh(req, fingerprint, undefined, signal)
    const id = req.id
    return this.#serial(id, async () => {
      const existing = await this.#peer.status(id)
      if (existing !== undefined) return { answer: this.#check(existing, req, fingerprint), replay: true }
      return this.#fresh(req, fingerprint, id, signal)
    })
  }

  /**
   * Many sends at once (`POST /v1/send` with an array): each is exactly the single send of its body,
   * answered on its own (a refusal of one refuses nothing else); they start in the same turn, so the
   * outbox stores them in one transaction.
   */
  async sendMany(
    bodies: readonly unknown[],
    answerError: (err: unknown) => { status: number; body: { error: Record<string, unknown> } },
    signal?: AbortSignal,
  ): Promise<BatchItem[]> {
    if (bodies.length > MAX_SENDS_PER_REQUEST) {
      throw new MeshError(
        'MESH_ERR_PAYLOAD_TOO_LARGE',
        `at most ${MAX_SENDS_PER_REQUEST} sends in one request (got ${bodies.length})`,
        { details: { path: '', max: MAX_SENDS_PER_REQUEST } },
      )
    }
    return Promise.all(
      bodies.map((body) =>
        this.send(body, signal).then(
          ({ answer, replay }): BatchItem => ({ status: 202, replay, ...answer }),
          (err: unknown): BatchItem => {
            const { status, body: b } = answerError(err)
            return { status, error: b.error }
          },
        ),
      ),
    )
  }

  /** Resolves at the end of this turn of the event loop, once for every send that arrived in it. */
  #endOfTurn(): Promise<void> {
    return (this.#turn ??= new Promise<void>((resolve) =>
      endOfTurn(() => {
        this.#turn = undefined
        resolve()
      }),
    ))
  }

  async #fresh(
    req: ParsedSend,
    fingerprint: Uint8Array,
    id: string | undefined,
    signal: AbortSignal | undefined,
  ): Promise<SendOutcome> {
    const receipt = await this.#peer.send(req.to, req.payload, {
      channel: req.channel,
      fingerprint,
      ...(id !== undefined && { clientMessageId: id }),
      ...(req.meta !== undefined && { meta: req.meta }),
      ...(signal !== undefined && { signal }),
    })
    const stored = {
      id: receipt.clientMessageId,
      ...(receipt.fingerprint !== undefined && { fingerprint: receipt.fingerprint }),
    }
    return { answer: this.#check(stored, req, fingerprint), replay: false }
  }

  /** The answer for `row`, or a 409 when the row was stored for another request. */
  #check(row: Pick<OutboxRow, 'id' | 'fingerprint'>, req: ParsedSend, fingerprint: Uint8Array): SendAnswer {
    if (row.fingerprint === undefined || !bytesEqual(row.fingerprint, fingerprint)) {
      throw new MeshError(
        'MESH_ERR_IDEMPOTENCY_CONFLICT',
        `id ${row.id} was already used for another request (to, channel, meta or payload differ)`,
        {
          details: {
            id: row.id,
            storedFingerprintPrefix:
              row.fingerprint === undefined ? null : toHex(row.fingerprint).slice(0, 16),
            fingerprintPrefix: toHex(fingerprint).slice(0, 16),
          },
        },
      )
    }
    return this.#answer(row.id, req, fingerprint)
  }

  #answer(id: string, req: ParsedSend, fingerprint: Uint8Array): SendAnswer {
    return {
      id,
      mesh: this.#peer.mesh,
      from: toHex(this.#peer.identity.publicKey),
      to: req.to,
      channel: req.channel,
      fingerprint: toHex(fingerprint),
      outboxDepth: this.#peer.outboxDepth,
    }
  }

  async #serial<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const before = this.#locks.get(id) ?? Promise.resolve()
    const run = before.then(fn, fn)
    const tail = run.catch(() => undefined)
    this.#locks.set(id, tail)
    try {
      return await run
    } finally {
      if (this.#locks.get(id) === tail) this.#locks.delete(id)
    }
  }
}

interface ParsedSend {
  to: string
  payload: unknown
  id?: string
  channel: DirectChannel
  meta?: Record<string, unknown>
}

function bad(message: string, path: string): MeshError {
  return new MeshError('MESH_ERR_MALFORMED_FRAME', message, { details: { path } })
}

/** Checks the JSON body; a refusal here writes nothing and keeps the id unused. */
export function parseSendBody(body: unknown): ParsedSend {
  if (!isPlainObject(body))
    throw bad('the body is a JSON object {to, payload | text, id?, channel?, meta?}', '')
  const b = body
  const to = b['to']
  if (typeof to !== 'string' || fromHex(to) === null || to.length !== 64) {
    throw new MeshError('MESH_ERR_MALFORMED_KEY', '`to` is a recipient key: 64 hex characters', {
      details: { path: 'to' },
    })
  }
  const hasPayload = b['payload'] !== undefined
  const hasText = b['text'] !== undefined
  if (hasPayload === hasText) throw bad('give exactly one of `payload` and `text`', 'payload')
  if (hasText && typeof b['text'] !== 'string') throw bad('`text` is a string', 'text')
  const id = b['id']
  if (id !== undefined && !isUlid(id)) {
    throw new MeshError('MESH_ERR_INVALID_MESSAGE_ID', '`id` is a ULID (26 characters, Crockford base32)', {
      details: { path: 'id' },
    })
  }
  const channel = b['channel'] ?? 'dm'
  if (typeof channel !== 'string' || !isDirectChannel(channel as DirectChannel)) {
    throw bad('`channel` is dm, rpc or stream', 'channel')
  }
  const meta = b['meta']
  if (meta !== undefined && !isPlainObject(meta)) throw bad('`meta` is an object', 'meta')
  return {
    to: to.toLowerCase(),
    payload: hasText ? { text: b['text'] } : b['payload'],
    channel: channel as DirectChannel,
    ...(id !== undefined && { id }),
    ...(meta !== undefined && { meta: meta }),
  }
}
