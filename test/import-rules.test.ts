import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import type { Metafile } from 'esbuild'
import { describe, expect, it } from 'vitest'
import {
  BROWSER_BUDGET_BYTES,
  BROWSER_ENTRIES,
  bundleForBrowser,
  checkImports,
  importSpecifiers,
  judgeBundle,
  listSourceFiles,
  type PackageManifest,
  type SourceFile,
} from './import-rules.js'

const root = fileURLToPath(new URL('..', import.meta.url))
const manifest = JSON.parse(readFileSync(`${root}/package.json`, 'utf8')) as PackageManifest

describe('the import checker', () => {
  const fakeManifest: PackageManifest = {
    dependencies: { msgpackr: '1', 'libsodium-wrappers': '1', ws: '1', fastify: '1', postgres: '1' },
    devDependencies: { vitest: '1' },
  }
  const check = (path: string, text: string): string[] =>
    checkImports([{ path, text }], fakeManifest).map((violation) => violation.reason)

  it('reads static, re-export, type-only and dynamic imports', () => {
    const text = [
      "import a from './a.js'",
      "import type { B } from '../b.js'",
      "export { c } from 'c-pkg/sub'",
      "export * from './d.js'",
      "const e = await import('node:fs')",
      "// import f from './commented-out.js'",
    ].join('\n')
    expect(importSpecifiers(text)).toEqual(['./a.js', '../b.js', 'c-pkg/sub', './d.js', 'node:fs'])
  })

  it('accepts imports that follow the layer table', () => {
    const files: SourceFile[] = [
      {
        path: 'protocol/codec.ts',
        text: "import { Packr } from 'msgpackr'\nimport { x } from './errors.js'",
      },
      { path: 'protocol/crypto.ts', text: "import sodium from 'libsodium-wrappers'" },
      {
        path: 'protocol/node/keyfile.ts',
        text: "import { open } from 'node:fs/promises'\nimport '../keys.js'",
      },
      { path: 'signaling/machine.ts', text: "import { encode } from '../protocol/codec.js'" },
      { path: 'transports/ws-relay/node.ts', text: "import { WebSocket } from 'ws'\nimport 'node:events'" },
      { path: 'transports/memory/index.ts', text: "import '../../signaling/machine.js'" },
      { path: 'coordinator/app.ts', text: "import Fastify from 'fastify'\nimport 'node:crypto'" },
      { path: 'peer-runtime/node/daemon.ts', text: "import '../peer.js'\nimport 'node:net'" },
      { path: 'peer-runtime/peer.ts', text: "import '../transports/memory/index.js'" },
      { path: 'sdk/browser.ts', text: "import '../peer-runtime/peer.js'\nimport '../protocol/index.js'" },
      { path: 'sdk/node.ts', text: "import '../peer-runtime/node/daemon.js'\nimport 'node:os'" },
      { path: 'cli/main.ts', text: "import '../coordinator/app.js'\nimport postgres from 'postgres'" },
      { path: 'bench/run.ts', text: "import { bench } from 'vitest'\nimport '../sdk/node.js'" },
    ]
    expect(checkImports(files, fakeManifest)).toEqual([])
  })

  it('rejects a layer importing upward or sideways', () => {
    expect(check('protocol/frames.ts', "import '../signaling/machine.js'")).toEqual([
      'protocol/ may not import signaling/ (allowed: nothing)',
    ])
    expect(check('signaling/machine.ts', "export * from '../transports/memory/index.js'")).toHaveLength(1)
    expect(check('transports/memory/index.ts', "import '../../coordinator/app.js'")).toHaveLength(1)
    expect(check('coordinator/app.ts', "import type { Peer } from '../peer-runtime/peer.js'")).toHaveLength(1)
    expect(check('sdk/browser.ts', "const m = await import('../coordinator/app.js')")).toHaveLength(1)
    expect(check('sdk/browser.ts', "import '../cli/main.js'")).toHaveLength(1)
  })

  it('rejects imports of test support, imports leaving the repository, and unknown folders', () => {
    expect(check('signaling/machine.ts', "import '../test/support/fake.js'")).toEqual([
      'source code may not import test support',
    ])
    expect(check('cli/main.ts', "import '../../elsewhere.js'")).toEqual([
      'relative import leaves the repository',
    ])
    expect(check('utils/misc.ts', '')).toEqual(['folder utils/ is not in DESIGN.md §1'])
  })

  it('keeps msgpackr and libsodium each behind one file', () => {
    expect(check('protocol/frames.ts', "import { pack } from 'msgpackr'")).toEqual([
      'only protocol/codec.ts may import msgpackr',
    ])
    expect(check('coordinator/auth.ts', "import sodium from 'libsodium-wrappers'")).toEqual([
      'only protocol/crypto.ts may import libsodium-wrappers',
    ])
  })

  it('limits protocol and signaling to their packages', () => {
    expect(check('protocol/ids.ts', "import { ulid } from 'ulid'")).toEqual([
      'protocol/ may import only libsodium-wrappers, msgpackr',
    ])
    expect(check('signaling/machine.ts', "import { EventEmitter } from 'eventemitter3'")).toEqual([
      'signaling/ may import only no packages',
    ])
  })

  it('keeps Node builtins and Node-only packages in Node-only places', () => {
    const builtin = 'Node builtins only in Node-only places (DESIGN.md §1)'
    expect(check('protocol/crypto.ts', "import { randomBytes } from 'node:crypto'")).toEqual([builtin])
    expect(check('signaling/machine.ts', "import { EventEmitter } from 'events'")).toEqual([builtin])
    expect(check('transports/webrtc/index.ts', "import 'node:dgram'")).toEqual([builtin])
    expect(check('peer-runtime/peer.ts', "const fs = await import('fs/promises')")).toEqual([builtin])
    expect(check('sdk/browser.ts', "import 'node:buffer'")).toEqual([builtin])
    expect(check('peer-runtime/peer.ts', "import { WebSocket } from 'ws'")).toEqual([
      'ws is Node-only; import it only from Node-only places',
    ])
    expect(check('sdk/browser.ts', "import '../peer-runtime/node/daemon.js'")).toEqual([
      'platform-neutral code may not import the Node-only peer-runtime/node/daemon.ts',
    ])
    expect(check('transports/webrtc/index.ts', "import './node.js'")).toHaveLength(1)
  })

  it('rejects undeclared packages, and devDependencies in shipped folders', () => {
    expect(check('coordinator/app.ts', "import x from 'left-pad'")).toEqual([
      'left-pad is not in package.json "dependencies"',
    ])
    expect(check('cli/main.ts', "import { describe } from 'vitest'")).toEqual([
      'vitest is not in package.json "dependencies"',
    ])
    expect(check('bench/run.ts', "import x from 'left-pad'")).toEqual([
      'left-pad is not declared in package.json',
    ])
  })

  it('judges a bundle by its inputs, builtin imports and size', () => {
    const metafile = {
      inputs: {
        'sdk/browser.ts': {
          bytes: 10,
          imports: [
            { path: 'node_modules/ws/index.js', kind: 'import-statement' },
            { path: 'node:fs', kind: 'import-statement', external: true },
          ],
        },
        'node_modules/ws/index.js': { bytes: 10, imports: [] },
        'node_modules/@scope/pino/index.js': { bytes: 10, imports: [] },
      },
      outputs: {
        'out.js': { bytes: 2000, inputs: {}, imports: [], exports: [], entryPoint: 'sdk/browser.ts' },
      },
    } as unknown as Metafile
    expect(judgeBundle(metafile, 1000).violations).toEqual([
      'sdk/browser.ts imports the Node builtin node:fs',
      'bundle includes ws (node_modules/ws/index.js)',
      'bundle is 2000 bytes, over the 1000-byte budget',
    ])
    expect(judgeBundle(metafile, 4000).violations).toHaveLength(2)
  })
})

describe('the repository', () => {
  const files = listSourceFiles(root)

  it('finds its own source files', () => {
    const paths = files.map((file) => file.path)
    expect(paths).toContain('cli/main.ts')
    expect(paths.some((path) => path.endsWith('.test.ts') || path.startsWith('test/'))).toBe(false)
  })

  it('follows the import rules of DESIGN.md §1', () => {
    expect(checkImports(files, manifest)).toEqual([])
  })

  it.each(BROWSER_ENTRIES)(
    'bundles %s for the browser without Node-only modules, within budget',
    async (entry) => {
      const report = await bundleForBrowser(root, entry, BROWSER_BUDGET_BYTES)
      console.log(`${entry}: ${report.bytes} bytes minified (budget ${BROWSER_BUDGET_BYTES})`)
      expect(report.inputs).toContain(entry)
      expect(report.violations).toEqual([])
    },
  )
})
