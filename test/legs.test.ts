import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { assertExecutable, describeLegs, legsFrom } from './legs.js'

describe('optional test legs', () => {
  it('names every leg it leaves out, in one line', () => {
    expect(describeLegs(legsFrom({}))).toBe(
      'agentmesh tests: left out postgres (DATABASE_URL unset), browser (AGENTMESH_CHROMIUM unset)',
    )
    expect(describeLegs(legsFrom({ DATABASE_URL: 'postgres://x', AGENTMESH_CHROMIUM: '' }))).toBe(
      'agentmesh tests: left out browser (AGENTMESH_CHROMIUM unset); on: postgres',
    )
    expect(describeLegs(legsFrom({ DATABASE_URL: 'postgres://x', AGENTMESH_CHROMIUM: '/bin/sh' }))).toBe(
      'agentmesh tests: all legs on (postgres, browser)',
    )
  })

  it('rejects a browser path that is missing or not executable', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'agentmesh-legs-'))
    try {
      const plain = join(dir, 'chromium')
      await writeFile(plain, '', { mode: 0o644 })
      await expect(assertExecutable(join(dir, 'absent'))).rejects.toThrow(/AGENTMESH_CHROMIUM/)
      await expect(assertExecutable(plain)).rejects.toThrow(/AGENTMESH_CHROMIUM/)
      await expect(assertExecutable(dir)).rejects.toThrow(/AGENTMESH_CHROMIUM/)
      await expect(assertExecutable(process.execPath)).resolves.toBeUndefined()
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})
