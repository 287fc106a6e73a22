/** The coordinator: `buildCoordinator`, its options, and the store it runs on. */
export { buildCoordinator, type Coordinator } from './build.js'
export {
  DEFAULT_LIMITS,
  type CoordinatorLimits,
  type CoordinatorOptions,
  type RateLimits,
} from './options.js'
export type { Store } from './store/types.js'
