import { readdirSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { ERROR_CODES, isMeshError, MeshError } from './errors.js'

const ROOT = join(import.meta.dirname, '..')
const SOURCE_FOLDERS = [
  'protocol',
  'signaling',
  'transports',
  'coordinator',
  'peer-runtime',
  'sdk',
  'cli',
  'bench',
]

function sourceFiles(dir: string): string[] {
  let out: string[] = []
  let entries: string[]
  try {
    entries = readdirSync(dir)
  } catch {
    return out
  }
  for (const name of entries) {
    const path = join(dir, name)
    if (statSync(path).isDirectory()) out = out.concat(sourceFiles(path))
    else if (name.endsWith('.ts') && !name.endsWith('.test.ts')) out.push(path)
  }
  return out
}

describe('error codes', () => {
  const documented = [
    ...readFileSync(join(ROOT, 'docs/errors.md'), 'utf8').matchAll(/^### (MESH_ERR_[A-Z0-9_]+)/gm),
  ].map((m) => m[1])

  it('docs/errors.md has one section for each code, and no other', () => {
    expect([...documented].sort()).toEqual(Object.keys(ERROR_CODES).sort())
    expect(new Set(documented).size).toBe(documented.length)
  })

  it('every code the source mentions is in the catalog', () => {
    const used = new Set<string>()
    for (const folder of SOURCE_FOLDERS) {
      for (const file of sourceFiles(join(ROOT, folder))) {
        for (const m of readFileSync(file, 'utf8').matchAll(/MESH_ERR_[A-Z0-9_]+/g)) used.add(m[0])
      }
    }
    expect(used.size).toBeGreaterThan(10)
    expect([...used].filter((c) => !(c in ERROR_CODES))).toEqual([])
  })

  it('travels on the wire and comes back with its code, details and permanence', () => {
    const err = new MeshError('MESH_ERR_QUEUE_FULL', 'recipient queue full', {
      details: { retryAfterMs: 1000 },
    })
    const back = MeshError.fromWire(err.toWire())
    expect(back.code).toBe('MESH_ERR_QUEUE_FULL')
    expect(back.details).toEqual({ retryAfterMs: 1000 })
    expect(back.permanent).toBe(false)
    expect(isMeshError(back, 'MESH_ERR_QUEUE_FULL')).toBe(true)
  })

  it('keeps the text of a code from a newer peer', () => {
    // Built at run time: a code no catalog lists, not one the source means to raise.
    const newer = ['MESH', 'ERR', 'FROM', 'A', 'NEWER', 'PEER'].join('_')
    const back = MeshError.fromWire({ code: newer, message: 'hm', permanent: true })
    expect(back.message).toContain(newer)
  })
})
