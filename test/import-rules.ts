import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { builtinModules } from 'node:module'
import { join, posix } from 'node:path'
import { build, type Metafile } from 'esbuild'
import ts from 'typescript'

// The import rules of DESIGN.md §1, as data. test/import-rules.test.ts runs them on the repository and
// on synthetic files, so a checker that silently accepts everything cannot pass.

/** The top-level source folders and the other folders each may import relatively. */
export const LAYERS: Readonly<Record<string, readonly string[] | 'everything'>> = {
  protocol: [],
  signaling: ['protocol'],
  transports: ['protocol', 'signaling'],
  coordinator: ['protocol', 'signaling'],
  'peer-runtime': ['protocol', 'signaling', 'transports'],
  sdk: ['peer-runtime', 'transports', 'protocol'],
  cli: 'everything',
  bench: 'everything',
  // Build and CI tooling; not a layer in DESIGN.md, never imported by one.
  scripts: 'everything',
}

/**
 * Where Node-only code may live (DESIGN.md §1). `protocol/node/` (key files on disk) is a documented
 * departure: it sits beside the formats it writes and no browser entry reaches it. `protocol/vectors/`
 * holds the golden-vector builder, a tool that reads and writes the JSON files beside it; no layer
 * imports it (only `protocol/vectors.test.ts` does).
 */
const NODE_ONLY_PLACES: readonly RegExp[] = [
  /^coordinator\//,
  /^peer-runtime\/node\//,
  /^transports\/[^/]+\/node\.ts$/,
  /^sdk\/node\.ts$/,
  /^cli\//,
  /^bench\//,
  /^scripts\//,
  /^protocol\/node\//,
  /^protocol\/vectors\//,
]

/** Packages only Node can run, or that belong to the coordinator, kept out of browser-shareable code. */
export const NODE_ONLY_PACKAGES: readonly string[] = [
  'ws',
  'node-datachannel',
  'fastify',
  'fastify-plugin',
  'postgres',
  'better-sqlite3',
  'pino',
  'prom-client',
  'clipanion',
]

/** One module per third-party concern (CONVENTIONS.md §9): the package, and the only file that may import it. */
const SOLE_IMPORTERS: Readonly<Record<string, string>> = {
  msgpackr: 'protocol/codec.ts',
  'libsodium-wrappers': 'protocol/crypto.ts',
}

/** Bare packages a folder may import at all; folders not listed may import any declared dependency. */
const PACKAGE_ALLOWLIST: Readonly<Record<string, readonly string[]>> = {
  protocol: ['libsodium-wrappers', 'msgpackr'],
  signaling: [],
}

/** Folders that never ship, so they may also import devDependencies. */
const DEV_FOLDERS: ReadonlySet<string> = new Set(['bench', 'scripts'])

export interface SourceFile {
  /** Repository-relative path with `/` separators, e.g. `transports/webrtc/node.ts`. */
  path: string
  text: string
}

export interface PackageManifest {
  dependencies?: Record<string, string>
  devDependencies?: Record<string, string>
}

export interface Violation {
  file: string
  specifier: string
  reason: string
}

const BUILTINS: ReadonlySet<string> = new Set(builtinModules)

/** Module specifiers of static imports, `export … from`, `import x = require()` and literal `import()`. */
export function importSpecifiers(text: string): string[] {
  return ts.preProcessFile(text, true, true).importedFiles.map((file) => file.fileName)
}

export function isNodeOnlyPlace(path: string): boolean {
  return NODE_ONLY_PLACES.some((place) => place.test(path))
}

function isBuiltin(specifier: string): boolean {
  return specifier.startsWith('node:') || BUILTINS.has(specifier.split('/')[0] ?? specifier)
}

/** `@scope/name/sub` → `@scope/name`; `name/sub` → `name`. */
export function packageName(specifier: string): string {
  const parts = specifier.split('/')
  return (specifier.startsWith('@') ? parts.slice(0, 2) : parts.slice(0, 1)).join('/')
}

function topFolder(path: string): string {
  return path.split('/')[0] ?? path
}

/** Checks every import of every file against DESIGN.md §1 and returns what breaks the rules. */
export function checkImports(files: readonly SourceFile[], manifest: PackageManifest): Violation[] {
  const violations: Violation[] = []
  for (const file of files) {
    const folder = topFolder(file.path)
    const allowed = LAYERS[folder]
    if (allowed === undefined) {
      violations.push({ file: file.path, specifier: '', reason: `folder ${folder}/ is not in DESIGN.md §1` })
      continue
    }
    for (const specifier of importSpecifiers(file.text)) {
      const reason = specifier.startsWith('.')
        ? checkRelative(file.path, specifier, allowed)
        : isBuiltin(specifier)
          ? checkBuiltin(file.path)
          : checkPackage(file.path, packageName(specifier), manifest)
      if (reason !== undefined) violations.push({ file: file.path, specifier, reason })
    }
  }
  return violations
}

function checkRelative(
  from: string,
  specifier: string,
  allowed: readonly string[] | 'everything',
): string | undefined {
  const target = posix.normalize(posix.join(posix.dirname(from), specifier))
  if (target.startsWith('../')) return 'relative import leaves the repository'
  const folder = topFolder(from)
  const targetFolder = topFolder(target)
  if (targetFolder === 'test') return 'source code may not import test support'
  if (targetFolder !== folder && allowed !== 'everything' && !allowed.includes(targetFolder)) {
    return `${folder}/ may not import ${targetFolder}/ (allowed: ${allowed.join(', ') || 'nothing'})`
  }
  // Node-only files are reached only from other Node-only files, or the browser face would pull them in.
  const targetFile = target.replace(/\.js$/, '.ts')
  if (isNodeOnlyPlace(targetFile) && !isNodeOnlyPlace(from)) {
    return `platform-neutral code may not import the Node-only ${targetFile}`
  }
  return undefined
}

function checkBuiltin(from: string): string | undefined {
  return isNodeOnlyPlace(from) ? undefined : 'Node builtins only in Node-only places (DESIGN.md §1)'
}

function checkPackage(from: string, name: string, manifest: PackageManifest): string | undefined {
  const folder = topFolder(from)
  const sole = SOLE_IMPORTERS[name]
  if (sole !== undefined && from !== sole) return `only ${sole} may import ${name}`
  const allowlist = PACKAGE_ALLOWLIST[folder]
  if (allowlist !== undefined && !allowlist.includes(name)) {
    return `${folder}/ may import only ${allowlist.join(', ') || 'no packages'}`
  }
  if (NODE_ONLY_PACKAGES.includes(name) && !isNodeOnlyPlace(from)) {
    return `${name} is Node-only; import it only from Node-only places`
  }
  const declared =
    manifest.dependencies?.[name] !== undefined ||
    (DEV_FOLDERS.has(folder) && manifest.devDependencies?.[name] !== undefined)
  if (!declared) {
    return DEV_FOLDERS.has(folder)
      ? `${name} is not declared in package.json`
      : `${name} is not in package.json "dependencies"`
  }
  return undefined
}

const SKIPPED_DIRS: ReadonlySet<string> = new Set(['node_modules', 'dist', 'coverage', 'test'])

/** Every non-test `.ts` file under the repository's top-level folders (not node_modules, dist, test). */
export function listSourceFiles(root: string): SourceFile[] {
  const files: SourceFile[] = []
  const walk = (relative: string): void => {
    for (const entry of readdirSync(join(root, relative), { withFileTypes: true })) {
      const path = relative === '' ? entry.name : `${relative}/${entry.name}`
      if (entry.isDirectory()) {
        if (!entry.name.startsWith('.') && !SKIPPED_DIRS.has(entry.name)) walk(path)
      } else if (relative !== '' && entry.name.endsWith('.ts') && !entry.name.endsWith('.test.ts')) {
        files.push({ path, text: readFileSync(join(root, path), 'utf8') })
      }
    }
  }
  walk('')
  return files
}

/**
 * Entry points that must bundle for the browser. An explicit list, so a missing file fails the test
 * rather than shrinking it. `sdk/browser.ts` joins when it exists.
 */
export const BROWSER_ENTRIES: readonly string[] = ['protocol/index.ts']

/** Packages that must never reach a browser bundle (DESIGN.md §1, `sdk/browser.ts`). */
export const BROWSER_FORBIDDEN_PACKAGES: readonly string[] = [
  'ws',
  'node-datachannel',
  'fastify',
  'postgres',
  'better-sqlite3',
  'pino',
]

/**
 * Minified browser bundle budget, ~25% above what we measured: every protocol module re-exported (a
 * stand-in for protocol/index.ts) came to 517,809 bytes (506 KiB) in Nov 2026, ~430 KiB of it
 * libsodium with its wasm inlined. Raise it deliberately, not to make a red test green.
 */
export const BROWSER_BUDGET_BYTES = 632 * 1024

export interface BundleReport {
  bytes: number
  inputs: string[]
  violations: string[]
}

/** Judges an esbuild metafile: forbidden packages among the inputs, `node:` or builtin imports, size. */
export function judgeBundle(metafile: Metafile, budget: number): BundleReport {
  const inputs = Object.keys(metafile.inputs)
  const bytes = Object.values(metafile.outputs).reduce((sum, output) => sum + output.bytes, 0)
  const violations: string[] = []
  for (const input of inputs) {
    const pkg = /(?:^|\/)node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(input)?.[1]
    if (pkg !== undefined && BROWSER_FORBIDDEN_PACKAGES.includes(pkg)) {
      violations.push(`bundle includes ${pkg} (${input})`)
    }
    for (const imported of metafile.inputs[input]?.imports ?? []) {
      if (imported.path.startsWith('node:') || (imported.external === true && isBuiltin(imported.path))) {
        violations.push(`${input} imports the Node builtin ${imported.path}`)
      }
    }
  }
  if (bytes > budget) violations.push(`bundle is ${bytes} bytes, over the ${budget}-byte budget`)
  return { bytes, inputs, violations }
}

/** Bundles `entry` as a browser ESM module in memory and judges the result. */
export async function bundleForBrowser(root: string, entry: string, budget: number): Promise<BundleReport> {
  if (!existsSync(join(root, entry))) throw new Error(`browser entry ${entry} does not exist`)
  const result = await build({
    absWorkingDir: root,
    entryPoints: [entry],
    bundle: true,
    platform: 'browser',
    format: 'esm',
    target: 'es2022',
    minify: true,
    write: false,
    metafile: true,
    outfile: 'browser-bundle.js',
    logLevel: 'silent',
  })
  return judgeBundle(result.metafile, budget)
}
