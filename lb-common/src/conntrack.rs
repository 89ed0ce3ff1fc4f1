//! Connection-tracking semantics shared by the kernel programs and the agent:
//! the states of a flow, the packets that move it between them, how long an
//! idle flow of each state lives, and which flows may give way to new ones.
//!
//! The kernel drives the state machine per packet ([`tcp_next`]); the agent's
//! garbage collection and `lb-agent conntrack` read the same states and
//! timeouts ([`timeout_s`], [`expired`]), so both agree on what is alive.
//!
//! Design (see the README's "Connection tracking"):
//! - Every timeout is an *idle* timeout: it counts from the flow's last packet
//!   in either direction. A FIN or RST never ends a flow by itself; it only
//!   shortens how long the flow may stay silent. A flow that keeps exchanging
//!   data after a FIN (half-close) or a spoofed RST keeps its state and its
//!   SNAT port; the cost is no per-packet sequence tracking.
//! - A TCP flow that has not seen a packet from its backend lives only as long
//!   as a SYN ([`T_SYN`]), whatever its state.
//! - Who sent the first FIN decides the hold after both FINs: the backend's
//!   first FIN leaves it in `TIME_WAIT` for this tuple ([`CtState::TimeWait`]),
//!   the client's first FIN lets the backend close passively ([`CtState::Closed`]).

/// TCP flag FIN.
pub const TCP_FIN: u8 = 0x01;
/// TCP flag SYN.
pub const TCP_SYN: u8 = 0x02;
/// TCP flag RST.
pub const TCP_RST: u8 = 0x04;
/// TCP flag ACK.
pub const TCP_ACK: u8 = 0x10;

/// State of a tracked flow (`CtEntry::state`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CtState {
    /// A UDP (or other non-TCP) flow: no handshake, lives by its timeouts.
    Datagram = 0,
    /// The client's SYN was seen.
    SynSent = 1,
    /// The backend's SYN-ACK was seen.
    SynRecv = 2,
    /// The handshake completed (or a flow was picked up mid-stream).
    Established = 3,
    /// The client sent the first FIN; the backend may still send (half-close).
    FinClient = 4,
    /// The backend sent the first FIN; the client may still send (half-close).
    FinBackend = 5,
    /// Both sent FIN, the client first: the backend closed passively.
    Closed = 6,
    /// Both sent FIN, the backend first: it holds `TIME_WAIT` for this tuple.
    TimeWait = 7,
    /// Either side sent RST.
    Reset = 8,
}

/// Number of [`CtState`] values.
pub const CT_STATE_COUNT: usize = 9;

impl CtState {
    /// Every state, in value order.
    pub const ALL: [CtState; CT_STATE_COUNT] = [
        CtState::Datagram,
        CtState::SynSent,
        CtState::SynRecv,
        CtState::Established,
        CtState::FinClient,
        CtState::FinBackend,
        CtState::Closed,
        CtState::TimeWait,
        CtState::Reset,
    ];

    /// The state stored as `value` (an unknown value reads as `Reset`, the
    /// shortest-lived TCP state).
    #[inline(always)]
    #[must_use]
    pub const fn from_u8(value: u8) -> CtState {
        match value {
            0 => CtState::Datagram,
            1 => CtState::SynSent,
            2 => CtState::SynRecv,
            3 => CtState::Established,
            4 => CtState::FinClient,
            5 => CtState::FinBackend,
            6 => CtState::Closed,
            7 => CtState::TimeWait,
            _ => CtState::Reset,
        }
    }

    /// Lower-case name for `lb-agent conntrack` and metrics.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            CtState::Datagram => "datagram",
            CtState::SynSent => "syn_sent",
            CtState::SynRecv => "syn_recv",
            CtState::Established => "established",
            CtState::FinClient => "fin_client",
            CtState::FinBackend => "fin_backend",
            CtState::Closed => "closed",
            CtState::TimeWait => "time_wait",
            CtState::Reset => "reset",
        }
    }
}

/// Index in [`CtTimeouts`]: a UDP flow, unreplied or a single exchange.
pub const T_DATAGRAM: usize = 0;
/// Index: a TCP flow before the backend answered (any state).
pub const T_SYN: usize = 1;
/// Index: an established TCP flow.
pub const T_ESTABLISHED: usize = 2;
/// Index: a half-closed TCP flow (one FIN).
pub const T_HALF_CLOSED: usize = 3;
/// Index: both FINs, the client's first.
pub const T_CLOSED: usize = 4;
/// Index: both FINs, the backend's first (its `TIME_WAIT`).
pub const T_TIME_WAIT: usize = 5;
/// Index: after an RST.
pub const T_RESET: usize = 6;
/// Index: a UDP flow with replies, still active 2 s after it began.
pub const T_DATAGRAM_STREAM: usize = 7;
/// Number of timeouts.
pub const CT_TIMEOUT_COUNT: usize = 8;

/// Idle timeouts in seconds, by `T_*` index (written by the agent into the
/// node configuration; configurable so that tests run in seconds).
pub type CtTimeouts = [u32; CT_TIMEOUT_COUNT];

/// Default idle timeouts, seconds. TCP follows kube-proxy's conntrack
/// settings where it sets them (established 24 h, half-closed 1 h as its
/// `CLOSE_WAIT`); SYN 60 s and RST 10 s follow Cilium; `TIME_WAIT` is
/// Linux's own 60 s (`TCP_TIMEWAIT_LEN`, the backends being Linux pods);
/// UDP follows `nf_conntrack` (30 s, 120 s for a stream).
pub const DEFAULT_TIMEOUTS: CtTimeouts = [30, 60, 86_400, 3_600, 10, 60, 10, 120];

/// Names of the timeouts, by index, for flags and output.
pub const TIMEOUT_NAMES: [&str; CT_TIMEOUT_COUNT] = [
    "udp",
    "tcp-syn",
    "tcp-established",
    "tcp-half-closed",
    "tcp-closed",
    "tcp-time-wait",
    "tcp-reset",
    "udp-stream",
];

/// Conntrack flag: the flow's source was rewritten (to the node address, or
/// to another port of the client's own address after a reply-tuple clash).
pub const CT_F_SNAT: u16 = 1;
/// Conntrack flag: the flow's frontend had session affinity when it began,
/// so its packets refresh the client's affinity entry.
pub const CT_F_AFFINITY: u16 = 2;
/// Conntrack flag: a packet from the backend was seen.
pub const CT_F_REPLIED: u16 = 4;
/// Conntrack flag (UDP): replied and still active 2 s after it began.
pub const CT_F_STREAM: u16 = 8;

/// Seconds after its start from which a replied UDP flow counts as a stream.
pub const DATAGRAM_STREAM_AFTER_S: u32 = 2;
/// Seconds (as the coarse clock counts them: at least one real second) a
/// flow that is not assured must have been idle before a new flow may take
/// its SNAT port when the pool is full (early drop).
pub const EARLY_DROP_IDLE_S: u32 = 2;

/// The state after a TCP packet with `flags`, from the client when
/// `from_client`, on a flow in `state`.
#[inline(always)]
#[must_use]
pub const fn tcp_next(state: CtState, flags: u8, from_client: bool) -> CtState {
    if flags & TCP_RST != 0 {
        return CtState::Reset;
    }
    if flags & TCP_SYN != 0 {
        if flags & TCP_ACK != 0 {
            // SYN-ACK: the backend answers the handshake.
            return match state {
                CtState::SynSent if !from_client => CtState::SynRecv,
                s => s,
            };
        }
        // A client's SYN reopens a closed tuple (the client reused its port).
        return match state {
            CtState::Closed | CtState::TimeWait | CtState::Reset if from_client => CtState::SynSent,
            s => s,
        };
    }
    if flags & TCP_FIN != 0 {
        return match state {
            CtState::SynSent | CtState::SynRecv | CtState::Established => {
                if from_client {
                    CtState::FinClient
                } else {
                    CtState::FinBackend
                }
            }
            CtState::FinClient if !from_client => CtState::Closed,
            CtState::FinBackend if from_client => CtState::TimeWait,
            s => s,
        };
    }
    match state {
        // The client's ACK of the SYN-ACK completes the handshake.
        CtState::SynRecv if from_client => CtState::Established,
        s => s,
    }
}

/// How long a flow in `state` with conntrack `flags` may stay idle.
#[inline(always)]
#[must_use]
pub const fn timeout_s(state: CtState, flags: u16, timeouts: &CtTimeouts) -> u32 {
    let index = match state {
        CtState::Datagram => {
            if flags & CT_F_STREAM != 0 {
                T_DATAGRAM_STREAM
            } else {
                T_DATAGRAM
            }
        }
        CtState::Closed => T_CLOSED,
        CtState::TimeWait => T_TIME_WAIT,
        CtState::Reset => T_RESET,
        // Nothing from the backend yet: as long as a SYN, at most.
        _ if flags & CT_F_REPLIED == 0 => T_SYN,
        CtState::SynSent | CtState::SynRecv => T_SYN,
        CtState::Established => T_ESTABLISHED,
        CtState::FinClient | CtState::FinBackend => T_HALF_CLOSED,
    };
    let own = timeouts[index];
    if flags & CT_F_REPLIED == 0 && own > timeouts[T_SYN] {
        timeouts[T_SYN]
    } else {
        own
    }
}

/// Whether a flow last seen at `last_seen_s` (monotonic seconds) with idle
/// timeout `timeout` is gone at `now_s`.
#[inline(always)]
#[must_use]
pub const fn expired(now_s: u32, last_seen_s: u32, timeout: u32) -> bool {
    now_s > last_seen_s && now_s - last_seen_s >= timeout
}

/// Whether a flow has proven itself (TCP: answered and past the handshake;
/// UDP: a stream), so that it never gives its SNAT port to a new flow
/// before it expires. Others may give way when the pool is full.
#[inline(always)]
#[must_use]
pub const fn assured(state: CtState, flags: u16) -> bool {
    if flags & CT_F_REPLIED == 0 {
        return false;
    }
    match state {
        CtState::Datagram => flags & CT_F_STREAM != 0,
        CtState::Established | CtState::FinClient | CtState::FinBackend | CtState::TimeWait => true,
        CtState::SynSent | CtState::SynRecv | CtState::Closed | CtState::Reset => false,
    }
}

/// Monotonic seconds of a `bpf_ktime_get_coarse_ns` / `CLOCK_MONOTONIC`
/// reading, at least 1 (0 means "never" in the maps).
#[inline(always)]
#[must_use]
pub const fn seconds_of(ns: u64) -> u32 {
    // Monotonic seconds fit u32 for 136 years of uptime.
    #[allow(clippy::cast_possible_truncation)]
    let s = (ns / 1_000_000_000) as u32;
    if s == 0 {
        1
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u8 = TCP_ACK;
    const S: u8 = TCP_SYN;
    const F: u8 = TCP_FIN | TCP_ACK;
    const R: u8 = TCP_RST;
    const SA: u8 = TCP_SYN | TCP_ACK;

    /// Runs packets (flags, from the client?) from `start`, returning every state after each.
    fn run(start: CtState, packets: &[(u8, bool)]) -> std::vec::Vec<CtState> {
        extern crate std;
        let mut s = start;
        packets
            .iter()
            .map(|&(f, c)| {
                s = tcp_next(s, f, c);
                s
            })
            .collect()
    }

    extern crate std;

    #[test]
    fn a_handshake_and_a_close_by_the_client() {
        assert_eq!(
            run(
                CtState::SynSent,
                &[
                    (SA, false),
                    (A, true),
                    (A, true),
                    (A, false),
                    (F, true),
                    (A, false),
                    (F, false),
                    (A, true)
                ]
            ),
            [
                CtState::SynRecv,
                CtState::Established,
                CtState::Established,
                CtState::Established,
                CtState::FinClient,
                CtState::FinClient,
                CtState::Closed,
                CtState::Closed
            ]
        );
    }

    #[test]
    fn the_backends_syn_ack_is_not_a_fin() {
        // The bug of layout v3: a SYN-ACK marked the flow closed by the backend.
        let after = tcp_next(CtState::SynSent, SA, false);
        assert_eq!(after, CtState::SynRecv);
        assert!(timeout_s(after, CT_F_REPLIED, &DEFAULT_TIMEOUTS) == DEFAULT_TIMEOUTS[T_SYN]);
        assert_eq!(tcp_next(after, A, true), CtState::Established);
    }

    #[test]
    fn a_close_by_the_backend_holds_time_wait() {
        assert_eq!(
            run(
                CtState::Established,
                &[(F, false), (A, true), (A, true), (F, true)]
            ),
            [
                CtState::FinBackend,
                CtState::FinBackend,
                CtState::FinBackend,
                CtState::TimeWait
            ]
        );
        let flags = CT_F_REPLIED;
        assert_eq!(timeout_s(CtState::TimeWait, flags, &DEFAULT_TIMEOUTS), 60);
        assert!(
            assured(CtState::TimeWait, flags),
            "TIME_WAIT is never dropped early"
        );
    }

    #[test]
    fn half_close_keeps_the_flow_as_long_as_it_is_idle_less_than_an_hour() {
        let s = tcp_next(CtState::Established, F, true);
        assert_eq!(s, CtState::FinClient);
        // The backend streams on: data does not change the state...
        assert_eq!(tcp_next(s, A, false), CtState::FinClient);
        // ...and the idle timeout is the half-closed one, counted from each packet.
        assert_eq!(timeout_s(s, CT_F_REPLIED, &DEFAULT_TIMEOUTS), 3_600);
        assert!(!expired(10_000, 10_000 - 3_599, 3_600));
        assert!(expired(10_000, 10_000 - 3_600, 3_600));
    }

    #[test]
    fn rst_shortens_the_idle_timeout_and_a_new_syn_reopens() {
        for state in [
            CtState::SynSent,
            CtState::Established,
            CtState::FinBackend,
            CtState::TimeWait,
        ] {
            assert_eq!(tcp_next(state, R, false), CtState::Reset);
            assert_eq!(tcp_next(state, R | A, true), CtState::Reset);
        }
        assert_eq!(
            timeout_s(CtState::Reset, CT_F_REPLIED, &DEFAULT_TIMEOUTS),
            10
        );
        // Data after an RST keeps the flow alive (idle timer), but in Reset.
        assert_eq!(tcp_next(CtState::Reset, A, true), CtState::Reset);
        for closed in [CtState::Reset, CtState::Closed, CtState::TimeWait] {
            assert_eq!(tcp_next(closed, S, true), CtState::SynSent);
            assert_eq!(
                tcp_next(closed, S, false),
                closed,
                "only the client reopens"
            );
        }
        // A SYN in the middle of a live flow changes nothing.
        assert_eq!(
            tcp_next(CtState::Established, S, true),
            CtState::Established
        );
    }

    #[test]
    fn an_unanswered_flow_lives_as_long_as_a_syn() {
        for state in [CtState::SynSent, CtState::Established, CtState::FinClient] {
            assert_eq!(timeout_s(state, 0, &DEFAULT_TIMEOUTS), 60, "{state:?}");
            assert!(!assured(state, 0));
        }
        assert_eq!(timeout_s(CtState::Reset, 0, &DEFAULT_TIMEOUTS), 10);
        assert_eq!(
            timeout_s(CtState::Established, CT_F_REPLIED, &DEFAULT_TIMEOUTS),
            86_400
        );
    }

    #[test]
    fn udp_flows_are_assured_only_as_streams() {
        assert_eq!(timeout_s(CtState::Datagram, 0, &DEFAULT_TIMEOUTS), 30);
        assert_eq!(
            timeout_s(CtState::Datagram, CT_F_REPLIED, &DEFAULT_TIMEOUTS),
            30
        );
        let stream = CT_F_REPLIED | CT_F_STREAM;
        assert_eq!(timeout_s(CtState::Datagram, stream, &DEFAULT_TIMEOUTS), 120);
        assert!(!assured(CtState::Datagram, CT_F_REPLIED));
        assert!(assured(CtState::Datagram, stream));
    }

    #[test]
    fn every_state_round_trips_and_has_a_name() {
        for s in CtState::ALL {
            assert_eq!(CtState::from_u8(s as u8), s);
            assert!(!s.name().is_empty());
        }
        assert_eq!(CtState::from_u8(200), CtState::Reset);
    }

    #[test]
    fn seconds_are_never_zero() {
        assert_eq!(seconds_of(0), 1);
        assert_eq!(seconds_of(2_500_000_000), 2);
    }
}
