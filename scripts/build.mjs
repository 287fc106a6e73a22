// Bundles the CLI into dist/cli.js. Runs as `prepare` on every `npm install`, so it stays a single
// esbuild call (well under a second); dependencies stay external and resolve from node_modules.
import { readFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'

const root = fileURLToPath(new URL('..', import.meta.url))
const pkg = JSON.parse(await readFile(new URL('../package.json', import.meta.url), 'utf8'))

await build({
  absWorkingDir: root,
  entryPoints: ['cli/main.ts'],
  outfile: 'dist/cli.js',
  platform: 'node',
  format: 'esm',
  target: 'node20',
  bundle: true,
  packages: 'external',
  sourcemap: true,
  define: { AGENTMESH_VERSION: JSON.stringify(pkg.version) },
  logLevel: 'warning',
})
