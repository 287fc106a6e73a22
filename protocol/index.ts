/**
 * `protocol/`: the only place that knows bytes, keys and signatures. Platform-neutral (browsers and
 * Node alike); the Node-only key-file helpers are in `protocol/node/`.
 *
 * @example
 * ```ts
 * await initCrypto()
 * const alice = createIdentity('session'), bob = createIdentity('session')
 * const nextId = ulidFactory()
 * const env = sealDirect({ mesh: 'demo', channel: 'dm', from: alice, to: bob.publicKey, clientMessageId: nextId(), payload: 'hi' })
 * const opened = openEnvelope(decodeEnvelope(encodeEnvelope(env)), bob)
 * ```
 * @packageDocumentation
 */
export * from './admin.js'
export * from './attestation.js'
export * from './box-key-cache.js'
export * from './clock.js'
export * from './codec.js'
export * from './crypto.js'
export * from './encoding.js'
export * from './envelope.js'
export * from './errors.js'
export * from './fingerprint.js'
export * from './frames.js'
export * from './hello.js'
export * from './ids.js'
export * from './invite.js'
export * from './keys.js'
export * from './limits.js'
export * from './mesh-state.js'
export * from './p2p-signature.js'
export * from './roster.js'
export * from './schema.js'
export * from './seal.js'
export * from './signing.js'
export * from './system-event.js'
export * from './ulid.js'
export * from './version.js'
