// Bundles the CLI into dist/cli.js. Runs as `prepare` on every `npm install`, so it stays a single
// esbuild call (well under a second); dependencies stay external and resolve from node_modules.
import { mkdir, readdir, readFile, rename, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'

const root = fileURLToPath(new URL('..', import.meta.url))
const pkg = JSON.parse(await readFile(new URL('../package.json', import.meta.url), 'utf8'))

const result = await build({
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
  write: false,
})

// Every file lands by rename, so a coordinator starting while a build runs (tests build before they
// spawn the binary, several test files at once) reads either the old file or the new one, never half.
for (const file of result.outputFiles) await replace(file.path, file.contents)

// The store's migrations are read at run time relative to the module (coordinator/store/migrate.ts):
// bundled, that module is dist/cli.js, so the SQL files go to dist/migrations/.
const migrations = join(root, 'coordinator/store/migrations')
for (const name of await readdir(migrations)) {
  await replace(join(root, 'dist/migrations', name), await readFile(join(migrations, name)))
}

async function replace(path, contents) {
  await mkdir(dirname(path), { recursive: true })
  // A dot name that does not end in .sql: migrate.ts never lists it as a migration.
  const tmp = join(dirname(path), `.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`)
  await writeFile(tmp, contents)
  await rename(tmp, path)
}
