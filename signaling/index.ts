/**
 * `signaling/`: the offer / answer / candidate exchange and its state machine, shared by both ends of a
 * P2P session (DESIGN.md §5). Platform-neutral; imports only `protocol/`.
 * @packageDocumentation
 */
export * from './channel.js'
export * from './coordinator.js'
export * from './handshake.js'
export * from './memory.js'
export * from './signaler.js'
