import { chmod, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { initCrypto } from '../crypto.js'
import { toHex } from '../encoding.js'
import { createIdentity } from '../keys.js'
import { loadOrCreateKeyFile, readKeyFile, writeKeyFile } from './keyfile.js'
import { rejectionCode } from '../../test/support/rejection.js'

let dir: string
beforeAll(() => initCrypto())
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'agentmesh-keys-'))
})
afterEach(() => rm(dir, { recursive: true, force: true }))

describe('key files', () => {
  it('are written 0600 in a 0700 folder and read back as the same identity', async () => {
    const path = join(dir, 'meshes', 'demo', 'member.key')
    const identity = createIdentity('member')
    await writeKeyFile(path, identity, { mesh: 'demo' })
    expect((await stat(path)).mode & 0o777).toBe(0o600)
    expect((await stat(join(dir, 'meshes', 'demo'))).mode & 0o777).toBe(0o700)
    const back = await readKeyFile(path, 'member')
    expect(toHex(back.identity.publicKey)).toBe(toHex(identity.publicKey))
    expect(toHex(back.identity.boxSecretKey)).toBe(toHex(identity.boxSecretKey))
    expect(back.labels).toEqual({ mesh: 'demo' })
  })

  it('refuses a file others can read, of another kind, or whose seed does not match its key', async () => {
    const path = join(dir, 'session.key')
    await writeKeyFile(path, createIdentity('session'))
    expect(await rejectionCode(readKeyFile(path, 'member'))).toBe('MESH_ERR_KEY_FILE')
    await chmod(path, 0o644)
    expect(await rejectionCode(readKeyFile(path))).toBe('MESH_ERR_KEY_FILE')
    await chmod(path, 0o600)
    const contents = JSON.parse(await readFile(path, 'utf8')) as { publicKey: string }
    contents.publicKey = toHex(createIdentity('session').publicKey)
    await writeFile(path, JSON.stringify(contents), { mode: 0o600 })
    expect(await rejectionCode(readKeyFile(path))).toBe('MESH_ERR_KEY_FILE')
    await writeFile(path, 'not json', { mode: 0o600 })
    expect(await rejectionCode(readKeyFile(path))).toBe('MESH_ERR_KEY_FILE')
  })

  it('load-or-create keeps one key: a relaunch and concurrent creators all get the same one', async () => {
    const path = join(dir, 'sessions', 'demo', 's-1.key')
    const created = await Promise.all(
      Array.from({ length: 8 }, () => loadOrCreateKeyFile(path, 'session', () => createIdentity('session'))),
    )
    const keys = new Set(created.map((i) => toHex(i.publicKey)))
    expect(keys.size).toBe(1)
    const relaunched = await loadOrCreateKeyFile(path, 'session', () => createIdentity('session'))
    expect(toHex(relaunched.publicKey)).toBe([...keys][0])
  })
})
