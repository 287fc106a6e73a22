/** The text identifiers of the protocol and their schemas. */
import { ULID_RE } from './ulid.js'
import { bin, str, type Schema } from './schema.js'

/** A mesh id: lowercase letters, digits, `-` and `_`, 1–64 characters, starting with a letter or digit. */
export const MESH_ID_RE = /^[a-z0-9][a-z0-9_-]{0,63}$/
/** A session, service or instance id: 1–128 printable ASCII characters without spaces. */
export const LOCAL_ID_RE = /^[\x21-\x7e]{1,128}$/
/** A group name (`@name` as a target) or topic name (`#name`): 1–64 of `[A-Za-z0-9_.-]`. */
export const NAME_RE = /^[A-Za-z0-9_.-]{1,64}$/

export const meshIdSchema: Schema<string> = str({ pattern: MESH_ID_RE, max: 64 })
export const localIdSchema: Schema<string> = str({ pattern: LOCAL_ID_RE, max: 128 })
export const nameSchema: Schema<string> = str({ pattern: NAME_RE, max: 64 })
/** An Ed25519 public key on the wire: 32 bytes (point validity is checked where the key is used). */
export const keySchema: Schema<Uint8Array> = bin({ len: 32 })
/** A 24-byte nonce. */
export const nonceSchema: Schema<Uint8Array> = bin({ len: 24 })
/** A ULID (`clientMessageId`, `correlationId`, `replyTo`). */
export const ulidSchema: Schema<string> = str({ pattern: ULID_RE, min: 26, max: 26 })
