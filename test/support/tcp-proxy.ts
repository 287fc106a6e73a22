/**
 * A loopback TCP proxy for fault injection between a peer and its coordinator (test use only). Each
 * accepted connection gets its own upstream connection; the proxy forwards bytes both ways and can, on
 * request, `drop` every connection (FIN), `cut` them (RST, or a half-close that leaves a half-dead
 * link), or `stall` forwarding for a while with the sockets held open, as a sleeping laptop or a
 * congested link would. Bounded: loopback only, at most `maxConnections` pairs, stalls of at most 60 s.
 */
import { createServer, connect, type Server, type Socket } from 'node:net'

/** A free TCP port on 127.0.0.1 (listen on 0, read it, close): for servers that must keep their port. */
export async function freePort(): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => resolve())
  })
  const address = server.address()
  const port = typeof address === 'object' && address !== null ? address.port : 0
  await new Promise((resolve) => server.close(resolve))
  return port
}

/** How a `cut` ends the connections: a reset both ways, or a FIN to the client only. */
export type CutMode = 'rst' | 'half'

/** What the proxy did so far. */
export interface ProxyCounters {
  accepted: number
  dropped: number
  cut: number
  stalls: number
}

/** A running proxy; `url` is its `http://127.0.0.1:<port>`. */
export interface TcpProxy {
  readonly port: number
  readonly url: string
  readonly counters: ProxyCounters
  /** Open connection pairs now. */
  readonly open: number
  /** Closes every connection (FIN both ways); new connections are accepted as before. */
  drop(): void
  /**
   * `rst`: resets both sockets. `half`: sends FIN to the client and stops forwarding either way while
   * the sockets stay open, so the client sees a link that ends but whose writes vanish.
   */
  cut(mode: CutMode): void
  /** Stops forwarding (both ways, new connections too) for `ms`, holding every socket open. */
  stall(ms: number): Promise<void>
  close(): Promise<void>
}

interface Pair {
  client: Socket
  upstream: Socket
  /** Bytes held while stalled, per direction. */
  toUpstream: Buffer[]
  toClient: Buffer[]
  /** A half-cut pair forwards nothing more. */
  dead: boolean
}

const MAX_STALL_MS = 60_000

/** Starts a proxy on 127.0.0.1 (port 0 unless given) to `127.0.0.1:<targetPort>`. */
export async function startTcpProxy(o: {
  targetPort: number
  port?: number
  maxConnections?: number
}): Promise<TcpProxy> {
  const maxConnections = o.maxConnections ?? 64
  const pairs = new Set<Pair>()
  const counters: ProxyCounters = { accepted: 0, dropped: 0, cut: 0, stalls: 0 }
  let stalled = 0 // nesting count: overlapping stalls end with the last one
  const waitingForStall: (() => void)[] = []

  const flush = (pair: Pair): void => {
    if (pair.dead) return
    for (const b of pair.toUpstream.splice(0)) pair.upstream.write(b)
    for (const b of pair.toClient.splice(0)) pair.client.write(b)
  }

  const server: Server = createServer((client) => {
    if (pairs.size >= maxConnections) {
      client.destroy()
      return
    }
    counters.accepted++
    client.setNoDelay(true)
    const start = (): void => {
      if (client.destroyed) return
      const upstream = connect({ host: '127.0.0.1', port: o.targetPort })
      upstream.setNoDelay(true)
      const pair: Pair = { client, upstream, toUpstream: [], toClient: [], dead: false }
      pairs.add(pair)
      const forward = (from: Socket, to: Socket, held: Buffer[]): void => {
        from.on('data', (b: Buffer) => {
          if (pair.dead) return
          if (stalled > 0) held.push(b)
          else to.write(b)
        })
      }
      forward(client, upstream, pair.toUpstream)
      forward(upstream, client, pair.toClient)
      const end = (): void => {
        pairs.delete(pair)
        client.destroy()
        upstream.destroy()
      }
      // A FIN from one side passes on to the other (unless the pair was cut half-way).
      client.on('end', () => (pair.dead ? undefined : upstream.end()))
      upstream.on('end', () => (pair.dead ? undefined : client.end()))
      client.on('close', end)
      upstream.on('close', end)
      client.on('error', end)
      upstream.on('error', end)
    }
    if (stalled > 0) waitingForStall.push(start)
    else start()
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(o.port ?? 0, '127.0.0.1', () => resolve())
  })
  const address = server.address()
  const port = typeof address === 'object' && address !== null ? address.port : 0

  return {
    port,
    url: `http://127.0.0.1:${port}`,
    counters,
    get open() {
      return pairs.size
    },
    drop() {
      for (const p of [...pairs]) {
        counters.dropped++
        pairs.delete(p)
        p.client.destroy()
        p.upstream.destroy()
      }
    },
    cut(mode) {
      for (const p of [...pairs]) {
        counters.cut++
        if (mode === 'rst') {
          pairs.delete(p)
          p.client.resetAndDestroy()
          p.upstream.resetAndDestroy()
        } else {
          // The client gets a FIN and nothing more; its writes go nowhere; the coordinator hears nothing.
          p.dead = true
          p.toClient.length = 0
          p.toUpstream.length = 0
          p.client.end()
        }
      }
    },
    async stall(ms) {
      const bounded = Math.max(0, Math.min(ms, MAX_STALL_MS))
      counters.stalls++
      // Reading stays on and the bytes are held here, so the kernel's buffers do not decide for us.
      stalled++
      await new Promise((resolve) => setTimeout(resolve, bounded))
      stalled--
      if (stalled > 0) return
      for (const p of pairs) flush(p)
      for (const start of waitingForStall.splice(0)) start()
    },
    async close() {
      stalled = 0
      waitingForStall.length = 0
      for (const p of [...pairs]) {
        p.client.destroy()
        p.upstream.destroy()
      }
      pairs.clear()
      await new Promise((resolve) => server.close(resolve))
    },
  }
}
