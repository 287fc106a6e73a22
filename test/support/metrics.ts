/** Reading a coordinator's `GET /metrics` in tests. */
import { expect } from 'vitest'

/** The Prometheus text of `GET ${url}/metrics` (asserts a 200). */
export async function scrape(url: string): Promise<string> {
  const res = await fetch(`${url}/metrics`, { signal: AbortSignal.timeout(5000) })
  expect(res.status).toBe(200)
  return res.text()
}

/** A sample's value in Prometheus text (0 when the series has no sample yet). */
export function sample(text: string, name: string, labels?: string): number {
  const prefix = labels === undefined ? `${name} ` : `${name}{${labels}} `
  const line = text.split('\n').find((l) => l.startsWith(prefix))
  return line === undefined ? 0 : Number(line.slice(prefix.length))
}
