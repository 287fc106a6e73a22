#!/usr/bin/env node
// Thin launcher: the CLI itself is bundled into dist/ by `npm run build` (also run on `npm install`).
import { existsSync } from 'node:fs'

const bundle = new URL('../dist/cli.js', import.meta.url)
if (!existsSync(bundle)) {
  console.error('agentmesh: dist/cli.js is missing; run `npm run build` in the agentmesh package first')
  process.exit(1)
}
const { runCli } = await import(bundle.href)
process.exitCode = await runCli(process.argv.slice(2))
