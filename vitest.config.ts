import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['**/*.test.ts'],
    exclude: ['**/node_modules/**', '**/dist/**'],
    // Native addons (better-sqlite3, node-datachannel) are safest in child processes, not worker threads.
    pool: 'forks',
    // Vitest's default on 2 cores is one fork (cores - 1), but most test time is waiting on sockets,
    // child processes and timers: two forks cut the wall time without starving either.
    maxWorkers: 2,
    // Bounds for hangs, not speed targets: the first PGlite of a test process compiles its WASM, which
    // takes several seconds on a loaded 2-core machine.
    testTimeout: 60_000,
    hookTimeout: 60_000,
    globalSetup: ['test/global-setup.ts'],
  },
})
