/**
 * The MeshError a promise rejects with, for asserting refusals: `expect(await rejectionCode(p)).toBe(…)`.
 * Fails the test if the promise resolves, or rejects with anything but a MeshError.
 */
import { isMeshError } from '../../protocol/index.js'

/** What a refusal carried: its code and its details (`{}` when it had none). */
export interface Rejection {
  code: string
  details: Record<string, unknown>
}

/** The code and details of the MeshError `p` rejects with; throws if it resolves or rejects otherwise. */
export async function rejection(p: Promise<unknown>): Promise<Rejection> {
  try {
    await p
  } catch (err) {
    if (isMeshError(err)) return { code: err.code, details: err.details ?? {} }
    throw err
  }
  throw new Error('expected a rejection')
}

/** The code of the MeshError `p` rejects with; throws if it resolves or rejects otherwise. */
export async function rejectionCode(p: Promise<unknown>): Promise<string> {
  return (await rejection(p)).code
}

/** The code of the MeshError `fn` throws, or `'no error'` when it returns (so `toBe(code)` fails clearly). */
export function thrownCode(fn: () => unknown): string {
  try {
    fn()
  } catch (err) {
    if (isMeshError(err)) return err.code
    throw err
  }
  return 'no error'
}
