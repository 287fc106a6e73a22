/**
 * The `p2p` scenario's baseline channel: a bare node-datachannel peer connection and data channel on the
 * native API (no W3C polyfill, no session, no copy), with the adapter's channel options (one ordered,
 * reliable channel, no ICE servers) and its flow control (refuse at the high-water mark, resume on
 * `bufferedAmountLow`). The description goes over the bench's IPC, ICE candidates inside it (gathering
 * completes before it is handed over): how the channel is introduced is not what the figure measures.
 */
import nodeDataChannel, { type DataChannel, type PeerConnection } from 'node-datachannel'

/** What one side hands the other: its description, candidates included. */
export interface RawDescription {
  sdp: string
  type: 'offer' | 'answer'
}

/** One end of the raw channel. */
export class RawChannel {
  readonly #pc: PeerConnection
  #dc: DataChannel | undefined
  #opened!: () => void
  /** Settles when the data channel is open. */
  readonly opened = new Promise<void>((resolve) => (this.#opened = resolve))
  #onMessage: (bytes: Buffer) => void = () => {}
  #onDrain: () => void = () => {}
  #wantDrain = false
  readonly #highWaterMark: number
  readonly #lowWaterMark: number

  private constructor(name: string, marks: { highWaterMark: number; lowWaterMark: number }) {
    this.#pc = new nodeDataChannel.PeerConnection(name, { iceServers: [] })
    this.#highWaterMark = marks.highWaterMark
    this.#lowWaterMark = marks.lowWaterMark
    this.#pc.onDataChannel((dc) => this.#attach(dc))
  }

  /** The offering side: creates the channel and returns the offer once ICE gathering completed. */
  static async offer(marks: {
    highWaterMark: number
    lowWaterMark: number
  }): Promise<{ channel: RawChannel; offer: RawDescription }> {
    const channel = new RawChannel('raw-offerer', marks)
    const gathered = channel.#gathered()
    channel.#attach(channel.#pc.createDataChannel('agentmesh', { unordered: false }))
    return { channel, offer: await gathered }
  }

  /** The answering side: takes the offer and returns the answer once ICE gathering completed. */
  static async answer(
    offer: RawDescription,
    marks: { highWaterMark: number; lowWaterMark: number },
  ): Promise<{ channel: RawChannel; answer: RawDescription }> {
    const channel = new RawChannel('raw-answerer', marks)
    const gathered = channel.#gathered()
    channel.#pc.setRemoteDescription(offer.sdp, offer.type)
    return { channel, answer: await gathered }
  }

  /** The offerer takes the answer; `opened` follows. */
  accept(answer: RawDescription): void {
    this.#pc.setRemoteDescription(answer.sdp, answer.type)
  }

  /** Sends one binary message, or returns false at the high-water mark (a `drain` follows). */
  send(bytes: Uint8Array): boolean {
    const dc = this.#dc!
    if (dc.bufferedAmount() >= this.#highWaterMark) {
      this.#wantDrain = true
      return false
    }
    dc.sendMessageBinary(bytes)
    return true
  }

  onMessage(listener: (bytes: Buffer) => void): void {
    this.#onMessage = listener
  }

  onDrain(listener: () => void): void {
    this.#onDrain = listener
  }

  close(): void {
    this.#dc?.close()
    this.#pc.close()
  }

  #attach(dc: DataChannel): void {
    if (this.#dc !== undefined) return
    this.#dc = dc
    dc.setBufferedAmountLowThreshold(this.#lowWaterMark)
    dc.onOpen(() => this.#opened())
    if (dc.isOpen()) this.#opened()
    dc.onMessage((msg) => {
      if (typeof msg !== 'string') this.#onMessage(msg as Buffer)
    })
    dc.onBufferedAmountLow(() => {
      if (!this.#wantDrain) return
      this.#wantDrain = false
      this.#onDrain()
    })
  }

  /** The local description once gathering completed (its SDP then lists every host candidate). */
  #gathered(): Promise<RawDescription> {
    return new Promise((resolve) => {
      const done = (): void => {
        const d = this.#pc.localDescription()
        if (d !== null && (d.type === 'offer' || d.type === 'answer')) resolve({ sdp: d.sdp, type: d.type })
      }
      this.#pc.onGatheringStateChange((state) => {
        if (state === 'complete') done()
      })
    })
  }
}
