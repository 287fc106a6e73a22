/**
 * Scale-out wake-ups: when a node queues a delivery for a key that is not connected to it, it sends
 * `NOTIFY agentmesh_wake, '<mesh> <hex key>…'` after the commit; every node listens and drains the
 * keys it holds. Payloads carry only routing keys (never an envelope) and stay under Postgres's 8,000
 * byte cap. A node that misses a notification still delivers at the recipient's next drain (ack,
 * reconnect or claim sweep).
 */
import type { Store } from '../store/types.js'

export const WAKE_CHANNEL = 'agentmesh_wake'
/** `<mesh> <sender hex> <clientMessageId> <recipient hex> <status>` lines: receipts for another node's sender. */
export const RECEIPT_CHANNEL = 'agentmesh_receipt'
const MAX_PAYLOAD = 7_900

/** A receipt for a sender whose connection is on another node. */
export interface RemoteReceipt {
  mesh: string
  senderHex: string
  clientMessageId: string
  recipientHex: string
  status: string
}

export class Waker {
  readonly #store: Store
  readonly #pending = new Set<string>()
  readonly #receipts: string[] = []
  #scheduled = false
  readonly #onError: (err: unknown) => void

  constructor(store: Store, onError: (err: unknown) => void) {
    this.#store = store
    this.#onError = onError
  }

  /** Asks every node to drain `hex` of `mesh`; notifications of one event-loop turn are batched. */
  wake(mesh: string, hex: string): void {
    this.#pending.add(`${mesh} ${hex}`)
    this.#schedule()
  }

  /**
   * Hands a receipt to whichever node holds the sender's connection (this node has none for it); the
   * receipts of one event-loop turn go in one notification.
   */
  receipt(r: RemoteReceipt): void {
    this.#receipts.push(`${r.mesh} ${r.senderHex} ${r.clientMessageId} ${r.recipientHex} ${r.status}`)
    this.#schedule()
  }

  #schedule(): void {
    if (this.#scheduled) return
    this.#scheduled = true
    setImmediate(() => {
      this.#scheduled = false
      void this.#flush().catch(this.#onError)
    })
  }

  async #flush(): Promise<void> {
    const entries = [...this.#pending]
    this.#pending.clear()
    await this.#send(WAKE_CHANNEL, entries)
    await this.#send(RECEIPT_CHANNEL, this.#receipts.splice(0))
  }

  async #send(channel: string, entries: readonly string[]): Promise<void> {
    let payload = ''
    for (const entry of entries) {
      if (payload.length + entry.length + 1 > MAX_PAYLOAD) {
        await this.#store.notify(channel, payload)
        payload = ''
      }
      payload = payload === '' ? entry : `${payload}\n${entry}`
    }
    if (payload !== '') await this.#store.notify(channel, payload)
  }

  /** Calls `onReceipt` for every receipt a node handed on (this one's too). */
  static async listenReceipts(
    store: Store,
    onReceipt: (r: RemoteReceipt) => void,
  ): Promise<() => Promise<void>> {
    return store.listen(RECEIPT_CHANNEL, (payload) => {
      for (const line of payload.split('\n')) {
        const [mesh, senderHex, clientMessageId, recipientHex, status] = line.split(' ')
        if (status !== undefined)
          onReceipt({
            mesh: mesh!,
            senderHex: senderHex!,
            clientMessageId: clientMessageId!,
            recipientHex: recipientHex!,
            status,
          })
      }
    })
  }

  /** Calls `onWake(mesh, hex)` for every key another node (or this one) woke. */
  static async listen(
    store: Store,
    onWake: (mesh: string, hex: string) => void,
  ): Promise<() => Promise<void>> {
    return store.listen(WAKE_CHANNEL, (payload) => {
      for (const line of payload.split('\n')) {
        const [mesh, hex] = line.split(' ')
        if (mesh !== undefined && hex !== undefined) onWake(mesh, hex)
      }
    })
  }
}
