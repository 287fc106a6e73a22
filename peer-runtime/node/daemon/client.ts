/**
 * A small client of the daemon's IPC, over `daemon.sock` (default) or the loopback port: JSON requests
 * with the bearer token, and the SSE stream parsed into events. The CLI (`daemon status`, `down`), the
 * tests and the bench use it; agents may use it or plain HTTP.
 */
import { Agent, request, type IncomingMessage } from 'node:http'
import { MeshError, isMeshErrorCode } from '../../../protocol/errors.js'

/** Where the daemon listens: its socket file, or `127.0.0.1:<port>`. */
export type DaemonAddress = { socketPath: string } | { port: number }

/** One HTTP answer. */
export interface IpcResponse<T = unknown> {
  status: number
  headers: IncomingMessage['headers']
  body: T
}

/** One server-sent event. */
export interface IpcEvent {
  event: string
  id?: string
  data: unknown
}

export class DaemonClient {
  readonly #address: DaemonAddress
  readonly #token: string | undefined
  readonly #agent: Agent

  constructor(address: DaemonAddress, token?: string) {
    this.#address = address
    this.#token = token
    this.#agent = new Agent({ keepAlive: true, maxSockets: 64 })
  }

  /** A client for the same daemon with another token. */
  as(token: string | undefined): DaemonClient {
    return new DaemonClient(this.#address, token)
  }

  /** Sends a request; resolves with any status (tests look at 4xx answers too). */
  request<T = unknown>(
    method: string,
    path: string,
    o: { body?: unknown; headers?: Record<string, string>; signal?: AbortSignal } = {},
  ): Promise<IpcResponse<T>> {
    const payload = o.body === undefined ? undefined : Buffer.from(JSON.stringify(o.body))
    return new Promise((resolve, reject) => {
      const req = request(
        {
          ...('socketPath' in this.#address
            ? { socketPath: this.#address.socketPath }
            : { host: '127.0.0.1', port: this.#address.port }),
          agent: this.#agent,
          method,
          path,
          headers: {
            host: 'localhost',
            accept: 'application/json',
            ...(this.#token !== undefined && { authorization: `Bearer ${this.#token}` }),
            ...(payload !== undefined && {
              'content-type': 'application/json',
              'content-length': String(payload.length),
            }),
            ...o.headers,
          },
          ...(o.signal !== undefined && { signal: o.signal }),
        },
        (res) => {
          const chunks: Buffer[] = []
          res.on('data', (c: Buffer) => chunks.push(c))
          res.on('error', reject)
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8')
            let body: unknown = undefined
            if (text !== '') {
              try {
                body = JSON.parse(text)
              } catch {
                body = text
              }
            }
            resolve({ status: res.statusCode ?? 0, headers: res.headers, body: body as T })
          })
        },
      )
      req.on('error', reject)
      req.end(payload)
    })
  }

  /** Like `request`, but a non-2xx answer throws its `MeshError`. */
  async call<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await this.request<T>(method, path, body === undefined ? {} : { body })
    if (res.status >= 200 && res.status < 300) return res.body
    const err = (
      res.body as { error?: { code?: string; message?: string; details?: Record<string, unknown> } }
    )?.error
    const code = err?.code !== undefined && isMeshErrorCode(err.code) ? err.code : 'MESH_ERR_INTERNAL'
    throw new MeshError(code, err?.message ?? `HTTP ${res.status}`, {
      details: { status: res.status, ...err?.details },
    })
  }

  /**
   * The session's event stream (`GET /v1/events`) as an async iterator; ends when `signal` aborts or the
   * daemon ends the stream. Rejects with the answer when the stream is refused (401, 403).
   */
  async *events(o: { signal: AbortSignal; after?: number }): AsyncGenerator<IpcEvent> {
    const path = o.after === undefined ? '/v1/events' : `/v1/events?after=${o.after}`
    const res = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = request({
        ...('socketPath' in this.#address
          ? { socketPath: this.#address.socketPath }
          : { host: '127.0.0.1', port: this.#address.port }),
        method: 'GET',
        path,
        headers: {
          host: 'localhost',
          accept: 'text/event-stream',
          ...(this.#token !== undefined && { authorization: `Bearer ${this.#token}` }),
        },
        signal: o.signal,
      })
      req.on('response', resolve)
      req.on('error', reject)
      req.end()
    })
    if (res.statusCode !== 200) {
      res.resume()
      throw new MeshError('MESH_ERR_NOT_AUTHORIZED', `GET /v1/events answered ${res.statusCode}`, {
        details: { status: res.statusCode },
      })
    }
    res.setEncoding('utf8')
    let buffer = ''
    try {
      for await (const chunk of res as AsyncIterable<string>) {
        buffer += chunk
        for (let at = buffer.indexOf('\n\n'); at >= 0; at = buffer.indexOf('\n\n')) {
          const frame = buffer.slice(0, at)
          buffer = buffer.slice(at + 2)
          const event = parseFrame(frame)
          if (event !== undefined) yield event
        }
      }
    } catch (err) {
      if (!o.signal.aborted) throw err
    } finally {
      res.destroy()
    }
  }

  /** Closes idle keep-alive sockets. */
  close(): void {
    this.#agent.destroy()
  }
}

function parseFrame(frame: string): IpcEvent | undefined {
  let event = 'message'
  let id: string | undefined
  const data: string[] = []
  for (const line of frame.split('\n')) {
    if (line.startsWith(':') || line === '') continue
    const colon = line.indexOf(':')
    const field = colon < 0 ? line : line.slice(0, colon)
    const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '')
    if (field === 'event') event = value
    else if (field === 'id') id = value
    else if (field === 'data') data.push(value)
  }
  if (data.length === 0) return undefined
  const text = data.join('\n')
  let parsed: unknown = text
  try {
    parsed = JSON.parse(text)
  } catch {
    // not JSON: keep the text
  }
  return { event, ...(id !== undefined && { id }), data: parsed }
}
