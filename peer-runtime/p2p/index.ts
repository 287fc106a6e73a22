/**
 * `peer-runtime/p2p/`: the P2P session manager. The runtime makes one `P2PManager` per mesh presence and
 * hands it every sealed direct envelope (`dm`, `rpc`, `stream`); it answers how each went.
 */
export {
  DEFAULT_P2P_TIMINGS,
  P2PManager,
  type AckStatus,
  type Delivery,
  type LossReason,
  type P2PCounters,
  type P2PManagerEvents,
  type P2PManagerInit,
  type P2PTimings,
} from './manager.js'
