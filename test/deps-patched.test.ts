import { readFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { describe, expect, it } from 'vitest'

// scripts/patch-deps.mjs (postinstall) guards postgres.js's nextWrite against a closed socket
// (porsager/postgres#1208): unguarded, a Postgres restart under load exits the coordinator with an
// uncaught TypeError. When a postgres.js release changes that code, this fails: drop the patch if the
// release fixed it, else port the guard.
describe('dependency patches', () => {
  it('the postgres.js in node_modules has its nextWrite guarded, in both module formats', async () => {
    const entry = createRequire(import.meta.url).resolve('postgres') // …/postgres/cjs/src/index.js
    const dir = dirname(dirname(dirname(entry)))
    for (const file of ['src/connection.js', 'cjs/src/connection.js']) {
      const text = await readFile(join(dir, file), 'utf8')
      const body = /function nextWrite\(fn\) \{([\s\S]*?)\n {2}\}/.exec(text)?.[1] ?? ''
      expect(body, file).toContain('if (socket === null)')
      expect(body.indexOf('socket === null'), file).toBeLessThan(body.indexOf('socket.write'))
    }
  })
})
