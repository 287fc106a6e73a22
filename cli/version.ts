// Replaced at build time by esbuild's `define` (scripts/build.mjs) with package.json's version.
declare const AGENTMESH_VERSION: string

/** The agentmesh version; `0.0.0-dev` when run from source (tsx, vitest), where no define applies. */
export const version: string = typeof AGENTMESH_VERSION === 'string' ? AGENTMESH_VERSION : '0.0.0-dev'
