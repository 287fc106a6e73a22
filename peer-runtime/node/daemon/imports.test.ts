import { readdirSync, readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'
import { importSpecifiers } from '../../../test/import-rules.js'

const dir = fileURLToPath(new URL('.', import.meta.url))

describe('the daemon folder', () => {
  it('has no import cycle (type-only imports count too)', () => {
    const files = readdirSync(dir).filter((f) => f.endsWith('.ts') && !f.endsWith('.test.ts'))
    const edges = new Map(
      files.map((f) => [
        f,
        importSpecifiers(readFileSync(`${dir}/${f}`, 'utf8'))
          .filter((s) => s.startsWith('./'))
          .map((s) => s.slice(2).replace(/\.js$/, '.ts')),
      ]),
    )
    const cycles: string[] = []
    const walk = (f: string, path: string[]): void => {
      if (path.includes(f)) {
        cycles.push([...path.slice(path.indexOf(f)), f].join(' → '))
        return
      }
      for (const next of edges.get(f) ?? []) walk(next, [...path, f])
    }
    for (const f of files) walk(f, [])
    expect(edges.get('ipc-server.ts')).not.toContain('daemon.ts')
    expect(cycles).toEqual([])
  })
})
