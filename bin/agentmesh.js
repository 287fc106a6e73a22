#!/usr/bin/env node
// Thin launcher: the CLI itself is bundled into dist/ by `npm run build` (also run on `npm install`).
// No top-level await: a command that waits must hold the process open itself (cli/commands/long-running.ts
// holds a ref'd handle), and one that lets the event loop run dry before it settled is a bug that says so
// and exits 70, instead of Node's silent 13 ("unsettled top-level await").
import { existsSync } from 'node:fs'

const bundle = new URL('../dist/cli.js', import.meta.url)
if (!existsSync(bundle)) {
  console.error('agentmesh: dist/cli.js is missing; run `npm run build` in the agentmesh package first')
  process.exit(1)
}
let settled = false
process.on('beforeExit', () => {
  if (settled) return
  settled = true
  console.error('agentmesh: internal error: the command stopped waiting before it finished')
  process.exitCode = 70
})
import(bundle.href)
  .then(({ runCli }) => runCli(process.argv.slice(2)))
  .then(
    (code) => {
      if (settled) return
      settled = true
      process.exitCode = code
    },
    (err) => {
      settled = true
      console.error(err)
      process.exitCode = 1
    },
  )
