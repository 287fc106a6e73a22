import { createServer, connect, type Server, type Socket } from 'node:net'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { startTcpProxy, type TcpProxy } from '../support/tcp-proxy.js'

/** An echo server on 127.0.0.1: what a connection sends comes back. */
async function echoServer(): Promise<{ server: Server; port: number }> {
  const server = createServer((s) => s.on('error', () => undefined).pipe(s))
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const a = server.address()
  return { server, port: typeof a === 'object' && a !== null ? a.port : 0 }
}

function dial(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port }, () => resolve(s))
    s.once('error', reject)
  })
}

/** Resolves with the next data chunk, or rejects after `ms`. */
function nextData(s: Socket, ms: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no data within ${ms} ms`)), ms)
    s.once('data', (b: Buffer) => {
      clearTimeout(t)
      resolve(b.toString())
    })
  })
}

describe('the chaos TCP proxy', () => {
  let echo: { server: Server; port: number }
  let proxy: TcpProxy
  const sockets: Socket[] = []

  beforeEach(async () => {
    echo = await echoServer()
    proxy = await startTcpProxy({ targetPort: echo.port })
  })

  afterEach(async () => {
    for (const s of sockets.splice(0)) s.destroy()
    await proxy.close()
    await new Promise((resolve) => echo.server.close(resolve))
  })

  async function client(): Promise<Socket> {
    const s = await dial(proxy.port)
    s.on('error', () => undefined)
    sockets.push(s)
    expect(await roundTrip(s, 'hello')).toBe('hello')
    return s
  }

  function roundTrip(s: Socket, text: string, ms = 2000): Promise<string> {
    const got = nextData(s, ms)
    s.write(text)
    return got
  }

  it('forwards both ways, and drop closes every connection while new ones still work', async () => {
    const s = await client()
    expect(proxy.open).toBe(1)
    const closed = new Promise((resolve) => s.once('close', resolve))
    proxy.drop()
    await closed
    expect(proxy.counters.dropped).toBe(1)
    await client()
  })

  it('stall holds the bytes (the socket stays open) and delivers them when it ends', async () => {
    const s = await client()
    const t0 = Date.now()
    const stalled = proxy.stall(400)
    const got = nextData(s, 3000)
    s.write('late')
    expect(await got).toBe('late')
    expect(Date.now() - t0).toBeGreaterThanOrEqual(380)
    await stalled
    expect(s.destroyed).toBe(false)
  })

  it('cut rst resets the client; cut half ends it and swallows what it writes after', async () => {
    const a = await client()
    const reset = new Promise<string | undefined>((resolve) =>
      a.once('error', (e: NodeJS.ErrnoException) => resolve(e.code)),
    )
    proxy.cut('rst')
    expect(await reset).toBe('ECONNRESET')

    const b = await client()
    const ended = new Promise((resolve) => b.once('end', resolve))
    proxy.cut('half')
    await ended
    await expect(roundTrip(b, 'into the void', 300)).rejects.toThrow(/no data/)
  })
})
