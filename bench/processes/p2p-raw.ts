/**
 * The `p2p` scenario's baseline channel: a bare node-datachannel peer connection and data channel on the
 * native API (no W3C polyfill, no session, no copy), with the adapter's channel options (one ordered,
 * reliable channel, no ICE servers) and its flow control (refuse at the high-water mark, resume on
 * `bufferedAmountLow`). Descriptions and candidates go over the bench's IPC (how the channel is
 * introduced is not what the figure measures): the offer without its candidates, the answer with the
 * answerer's, and the offerer's candidates to the answerer only once the offerer holds the answer.
 * libdatachannel fails a connection now and then when the answerer's checks (and DTLS hello) reach an
 * offerer that has not applied the answer yet (docs/ARCHITECTURE.md, departure 16); an offer carrying
 * its candidates, or candidates sent beside the answer, made that happen here in a few attempts in ten.
 */
import nodeDataChannel, { type DataChannel, type PeerConnection } from 'node-datachannel'
import { retainNodeDataChannel } from '../../transports/webrtc/node.js'

/** What one side hands the other: its description, and its candidates when they are not in it. */
export interface RawDescription {
  sdp: string
  type: 'offer' | 'answer'
  candidates: { candidate: string; mid: string }[]
}

/** One end of the raw channel. */
export class RawChannel {
  readonly #pc: PeerConnection
  #dc: DataChannel | undefined
  #opened!: () => void
  #failed!: (err: Error) => void
  /** Resolves when the data channel is open; rejects when the connection fails or closes first. */
  readonly opened = new Promise<void>((resolve, reject) => {
    this.#opened = resolve
    this.#failed = reject
  })
  #markClosed!: () => void
  /** Resolves once libdatachannel reported the connection closed (its callbacks are done then). */
  readonly #closed = new Promise<void>((resolve) => (this.#markClosed = resolve))
  #onMessage: (bytes: Buffer) => void = () => {}
  #onDrain: () => void = () => {}
  #wantDrain = false
  readonly #highWaterMark: number
  readonly #lowWaterMark: number

  private constructor(name: string, marks: { highWaterMark: number; lowWaterMark: number }) {
    this.#pc = new nodeDataChannel.PeerConnection(name, { iceServers: [] })
    // The adapter's cleanup() must not run while this connection is alive or closing (it can crash).
    const release = retainNodeDataChannel()
    void this.#closed.then(release)
    this.#highWaterMark = marks.highWaterMark
    this.#lowWaterMark = marks.lowWaterMark
    this.#pc.onDataChannel((dc) => this.#attach(dc))
    this.#pc.onStateChange((state) => {
      if (state !== 'failed' && state !== 'closed') return
      this.#failed(new Error(`raw peer connection ${state}`))
      if (state === 'closed') this.#markClosed()
    })
    void this.opened.catch(() => {}) // a failure is read by whoever awaits `opened`
  }

  /** The offering side: creates the channel and returns the offer, its candidates beside the SDP. */
  static async offer(marks: {
    highWaterMark: number
    lowWaterMark: number
  }): Promise<{ channel: RawChannel; offer: RawDescription }> {
    const channel = new RawChannel('raw-offerer', marks)
    const gathered = channel.#gathered()
    channel.#attach(channel.#pc.createDataChannel('agentmesh', { unordered: false }))
    const offer = await gathered
    const lines = offer.sdp.split('\r\n')
    const withoutCandidates = lines.filter(
      (l) => !l.startsWith('a=candidate:') && l !== 'a=end-of-candidates',
    )
    const mid = lines.find((l) => l.startsWith('a=mid:'))?.slice('a=mid:'.length) ?? '0'
    const candidates = lines
      .filter((l) => l.startsWith('a=candidate:'))
      .map((l) => ({ candidate: l.slice('a='.length), mid }))
    return { channel, offer: { ...offer, sdp: withoutCandidates.join('\r\n'), candidates } }
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

  /** The offerer takes the answer (its candidates are in the SDP); `opened` follows the answerer's candidates. */
  accept(answer: RawDescription): void {
    this.#pc.setRemoteDescription(answer.sdp, answer.type)
  }

  /** The answerer takes the offerer's candidates, once its answer went out. */
  addCandidates(candidates: RawDescription['candidates']): void {
    for (const c of candidates) this.#pc.addRemoteCandidate(c.candidate, c.mid)
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

  /**
   * Closes the channel and the connection; resolves once the connection reported `closed` (at most 2 s).
   * node-datachannel's process-wide `cleanup()`, which the adapter runs after its own last close, can
   * deadlock on a connection whose close is still in flight, so the peer awaits this first.
   */
  async close(): Promise<void> {
    this.#dc?.close()
    this.#pc.close()
    let timer: NodeJS.Timeout | undefined
    await Promise.race([this.#closed, new Promise((resolve) => (timer = setTimeout(resolve, 2_000)))])
    clearTimeout(timer)
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
        if (d !== null && (d.type === 'offer' || d.type === 'answer')) {
          resolve({ sdp: d.sdp, type: d.type, candidates: [] })
        }
      }
      this.#pc.onGatheringStateChange((state) => {
        if (state === 'complete') done()
      })
    })
  }
}
