/**
 * Keeps the runtime's verified mesh view in its store, so a restart resumes from it and asks the
 * coordinator only for what changed (`mesh_events{since: version}`). Loading falls back to a full replay
 * (the view stays at genesis) when nothing was saved or the saved bytes are unreadable or belong to
 * another mesh, owner or coordinator key. Saves are batched: a catch-up saves once when it ends
 * (`flush`), live changes at most once per `delayMs` (`changed`), and `close` saves what is left.
 */
import type { Clock, ClockTimer } from '../protocol/clock.js'
import type { MeshView } from './mesh-view.js'
import type { RuntimeStore } from './store/types.js'

/** How long live changes wait to be saved together (a burst of group edits is one write). */
export const MESH_VIEW_SAVE_DELAY_MS = 1_000

/** What `load` found. */
export type MeshViewLoad =
  | { kind: 'restored'; version: number }
  | { kind: 'none' }
  /** Saved, but not usable (unreadable, another mesh, owner or coordinator, a refused roster record). */
  | { kind: 'refused'; error: unknown }

export class MeshViewSaver {
  readonly #view: MeshView
  readonly #store: RuntimeStore
  readonly #clock: Clock
  readonly #delayMs: number
  readonly #onError: (err: unknown) => void
  #dirty = false
  #timer: ClockTimer | undefined
  #saving: Promise<void> = Promise.resolve()
  #saves = 0

  constructor(o: {
    view: MeshView
    store: RuntimeStore
    clock: Clock
    delayMs?: number
    onError: (err: unknown) => void
  }) {
    this.#view = o.view
    this.#store = o.store
    this.#clock = o.clock
    this.#delayMs = o.delayMs ?? MESH_VIEW_SAVE_DELAY_MS
    this.#onError = o.onError
  }

  /** How many snapshots this saver wrote. */
  get saves(): number {
    return this.#saves
  }

  /** Restores the saved view, if there is a usable one. A store that fails to read is a full replay too. */
  async load(): Promise<MeshViewLoad> {
    let saved
    try {
      saved = await this.#store.loadMeshView(this.#view.mesh)
    } catch (error) {
      this.#onError(error)
      return { kind: 'refused', error }
    }
    if (saved === undefined) return { kind: 'none' }
    try {
      this.#view.restore(saved.snapshot)
    } catch (error) {
      // Replayed from genesis instead; the next save replaces what was there.
      return { kind: 'refused', error }
    }
    return { kind: 'restored', version: this.#view.version }
  }

  /** The view changed: save it within `delayMs`, with whatever else changes meanwhile. */
  changed(): void {
    this.#dirty = true
    this.#timer ??= this.#clock.setTimeout(() => {
      this.#timer = undefined
      void this.flush()
    }, this.#delayMs)
  }

  /** Saves now if anything changed since the last save; resolves when it is written (errors are reported). */
  flush(): Promise<void> {
    this.#timer?.cancel()
    this.#timer = undefined
    this.#saving = this.#saving.then(async () => {
      if (!this.#dirty) return
      this.#dirty = false
      const view = this.#view
      try {
        await this.#store.saveMeshView({
          mesh: view.mesh,
          version: view.version,
          snapshot: view.snapshot(),
          savedAt: this.#clock.now(),
        })
        this.#saves++
      } catch (err) {
        this.#dirty = true
        this.#onError(err)
      }
    })
    return this.#saving
  }
}
