//! Frames built with from-scratch checksums, and a loaded data path to run them
//! through with `BPF_PROG_TEST_RUN` (packet tests and benchmarks).

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions, TestRunResult, Xdp, XdpMode};
use lb_common::Verdict;
use lb_userspace::{
    datapath::{
        socket_lb::SocketLbScope, uplink::xdp_metadata_supported, Datapath, DatapathConfig,
        UplinkHook, EGRESS_TC_PROGRAM, TC_PROGRAM, UPLINK_HANDOFF_TC_PROGRAM, UPLINK_TC_PROGRAM,
        XDP_PROGRAM,
    },
    flows::FlowSettings,
};

/// The flow-hash key packet tests load, so they can predict Maglev's picks.
pub const TEST_HASH_KEY: lb_common::HashKey = [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210];

/// Flow settings of packet tests: the default pool and timeouts, the test
/// key, and no reverse-path check (`BPF_PROG_TEST_RUN` runs on loopback).
#[must_use]
pub fn test_flows() -> FlowSettings {
    FlowSettings {
        hash_key: Some(TEST_HASH_KEY),
        reply_path_check: false,
        ..FlowSettings::default()
    }
}

/// The backend Maglev picks for a flow: its slot in a table of `size` slots.
#[must_use]
pub fn maglev_slot(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    proto: u8,
    size: u32,
) -> usize {
    let hash = lb_common::flow_hash(
        &TEST_HASH_KEY,
        u32::from_ne_bytes(src.octets()),
        u32::from_ne_bytes(dst.octets()),
        sport.to_be(),
        dport.to_be(),
        proto,
    );
    (hash % size) as usize
}

/// `XDP_DROP`.
pub const XDP_DROP: u32 = 1;
/// `XDP_PASS`.
pub const XDP_PASS: u32 = 2;
/// `XDP_TX`: back out of the interface the frame arrived on.
pub const XDP_TX: u32 = 3;
/// `TC_ACT_OK`.
pub const TC_ACT_OK: u32 = 0;
/// `TC_ACT_SHOT`.
pub const TC_ACT_SHOT: u32 = 2;
/// `TC_ACT_REDIRECT` (where `bpf_redirect` said).
pub const TC_ACT_REDIRECT: u32 = 7;

const TCP_FIN: u8 = 0x01;
/// TCP flag SYN.
pub const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
/// TCP flag ACK.
pub const TCP_ACK: u8 = 0x10;

/// A TCP or UDP over IPv4 frame to build.
#[derive(Clone)]
pub struct Packet {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    udp: bool,
    tcp_flags: u8,
    zero_udp_checksum: bool,
    ip_options: bool,
    frag: u16,
    ip_id: u16,
    payload: Vec<u8>,
}

impl Packet {
    /// A TCP segment (flags set by `syn`/`ack`/`synack`).
    #[must_use]
    pub fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Self {
        Self {
            src,
            dst,
            sport,
            dport,
            udp: false,
            tcp_flags: TCP_ACK,
            zero_udp_checksum: false,
            ip_options: false,
            frag: 0x4000, // DF
            ip_id: 0x1c46,
            payload: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        }
    }

    /// A UDP datagram.
    #[must_use]
    pub fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Self {
        Self {
            udp: true,
            payload: b"\x12\x34 query".to_vec(),
            ..Self::tcp(src, sport, dst, dport)
        }
    }

    /// Makes it a SYN without payload.
    #[must_use]
    pub fn syn(mut self) -> Self {
        self.tcp_flags = TCP_SYN;
        self.payload.clear();
        self
    }

    /// Makes it a SYN-ACK without payload.
    #[must_use]
    pub fn synack(mut self) -> Self {
        self.tcp_flags = TCP_SYN | TCP_ACK;
        self.payload.clear();
        self
    }

    /// Makes it a FIN (with ACK, as a closing peer sends it).
    #[must_use]
    pub fn fin(mut self) -> Self {
        self.tcp_flags = TCP_FIN | TCP_ACK;
        self.payload.clear();
        self
    }

    /// Makes it an RST.
    #[must_use]
    pub fn rst(mut self) -> Self {
        self.tcp_flags = TCP_RST;
        self.payload.clear();
        self
    }

    /// Makes it an ACK carrying the payload.
    #[must_use]
    pub fn ack(mut self) -> Self {
        self.tcp_flags = TCP_ACK;
        self
    }

    /// Replaces the payload (a segment or datagram of this size).
    #[must_use]
    pub fn with_payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// Sends the UDP datagram without a checksum (zero).
    #[must_use]
    pub fn zero_udp_checksum(mut self) -> Self {
        self.zero_udp_checksum = true;
        self
    }

    /// Adds 4 bytes of IPv4 options (IHL 6).
    #[must_use]
    pub fn with_ip_options(mut self) -> Self {
        self.ip_options = true;
        self
    }

    /// Marks the packet as a fragment (more-fragments flag, offset in 8-byte units).
    #[must_use]
    pub fn fragment(mut self, more: bool, offset: u16) -> Self {
        self.frag = if more { 0x2000 } else { 0 } | offset;
        self
    }

    /// Sets the IPv4 identification field (what ties a datagram's fragments together).
    #[must_use]
    pub fn with_ip_id(mut self, id: u16) -> Self {
        self.ip_id = id;
        self
    }

    /// The frame's bytes, checksums computed from scratch.
    #[must_use]
    pub fn build(&self) -> Vec<u8> {
        self.frame(self.frag, &self.l4())
    }

    /// The datagram as a sender fragments it: its IP payload (the L4 header,
    /// whose checksum covers the whole datagram, and the payload) cut into
    /// pieces of `size` bytes (a multiple of 8; the last piece holds the
    /// rest), each behind the datagram's IPv4 header (same identification,
    /// no DF) with its own total length, more-fragments flag, offset and
    /// header checksum, computed from scratch.
    #[must_use]
    pub fn fragments(&self, size: usize) -> Vec<Vec<u8>> {
        assert!(
            size > 0 && size.is_multiple_of(8),
            "fragment payloads are multiples of 8 bytes"
        );
        let l4 = self.l4();
        let pieces: Vec<&[u8]> = l4.chunks(size).collect();
        pieces
            .iter()
            .enumerate()
            .map(|(i, piece)| {
                let more = if i + 1 < pieces.len() { 0x2000 } else { 0 };
                let offset = u16::try_from(i * size / 8).expect("an offset of 13 bits");
                self.frame(more | offset, piece)
            })
            .collect()
    }

    /// The L4 header and payload, the checksum over the whole datagram.
    fn l4(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        l4.extend_from_slice(&self.sport.to_be_bytes());
        l4.extend_from_slice(&self.dport.to_be_bytes());
        if self.udp {
            l4.extend_from_slice(&u16::try_from(8 + self.payload.len()).unwrap().to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
        } else {
            l4.extend_from_slice(&0x0102_0304u32.to_be_bytes()); // seq
            l4.extend_from_slice(
                &(if self.tcp_flags & TCP_ACK != 0 {
                    0x0a0b_0c0du32
                } else {
                    0
                })
                .to_be_bytes(),
            );
            l4.push(5 << 4);
            l4.push(self.tcp_flags);
            l4.extend_from_slice(&64240u16.to_be_bytes());
            l4.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
        }
        l4.extend_from_slice(&self.payload);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&self.src.octets());
        pseudo.extend_from_slice(&self.dst.octets());
        pseudo.extend_from_slice(&[0, self.proto()]);
        pseudo.extend_from_slice(&u16::try_from(l4.len()).unwrap().to_be_bytes());
        pseudo.extend_from_slice(&l4);
        let csum_at = if self.udp { 6 } else { 16 };
        if !(self.udp && self.zero_udp_checksum) {
            let mut c = checksum(&pseudo);
            if self.udp && c == 0 {
                c = 0xffff;
            }
            l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
        }
        l4
    }

    fn proto(&self) -> u8 {
        if self.udp {
            17
        } else {
            6
        }
    }

    /// An Ethernet frame carrying `ip_payload` behind this packet's IPv4
    /// header with fragment field `frag`.
    fn frame(&self, frag: u16, ip_payload: &[u8]) -> Vec<u8> {
        let options: &[u8] = if self.ip_options { &[1, 1, 1, 0] } else { &[] };
        let ihl = 20 + options.len();
        let mut ip = vec![0x40 | u8::try_from(ihl / 4).unwrap(), 0];
        ip.extend_from_slice(&u16::try_from(ihl + ip_payload.len()).unwrap().to_be_bytes());
        ip.extend_from_slice(&self.ip_id.to_be_bytes());
        ip.extend_from_slice(&frag.to_be_bytes());
        ip.extend_from_slice(&[64, self.proto(), 0, 0]);
        ip.extend_from_slice(&self.src.octets());
        ip.extend_from_slice(&self.dst.octets());
        ip.extend_from_slice(options);
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());

        let mut frame = ethernet(0x0800);
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(ip_payload);
        frame
    }
}

fn ethernet(ether_type: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    f.extend_from_slice(&ether_type.to_be_bytes());
    f
}

/// Internet checksum of `data`, from scratch.
#[must_use]
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap()
}

/// Whether the IPv4 and TCP/UDP checksums of an IPv4 frame (20-byte header) verify.
#[must_use]
pub fn checksums_valid(frame: &[u8]) -> bool {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let ip = &frame[14..14 + ihl];
    let l4 = &frame[14 + ihl..];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, ip[9]]);
    pseudo.extend_from_slice(&u16::try_from(l4.len()).unwrap().to_be_bytes());
    pseudo.extend_from_slice(l4);
    checksum(ip) == 0 && checksum(&pseudo) == 0
}

/// Destination address and port of an IPv4 frame with a 20-byte header.
#[must_use]
pub fn dst_of(frame: &[u8]) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33]),
        u16::from_be_bytes([frame[36], frame[37]]),
    )
}

/// Source address and port of an IPv4 frame with a 20-byte header.
#[must_use]
pub fn src_of(frame: &[u8]) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29]),
        u16::from_be_bytes([frame[34], frame[35]]),
    )
}

/// `frame` with one byte replaced.
#[must_use]
pub fn with_byte(frame: &[u8], at: usize, value: u8) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[at] = value;
    f
}

/// `frame` with a big-endian u16 replaced.
#[must_use]
pub fn with_u16(frame: &[u8], at: usize, value: u16) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[at..at + 2].copy_from_slice(&value.to_be_bytes());
    f
}

/// `frame` (Ethernet, IPv4) as a router forwards it: TTL one less, the
/// IPv4 checksum updated (the Ethernet addresses as they were).
#[must_use]
pub fn forwarded(frame: &[u8]) -> Vec<u8> {
    with_ip_checksum(&with_byte(frame, 22, frame[22] - 1))
}

/// The frame XDP handed to the uplink's TC program (`out` of an XDP run
/// whose metadata is [`lb_common::HANDOFF_MARK`]), if it did. On a kernel
/// that refuses `bpf_xdp_adjust_meta` to XDP ([`xdp_metadata_supported`]) the
/// hand-off falls back to the stack: the frame passes translated and
/// unmarked, so `out` is the frame (and must not start with a mark).
#[must_use]
pub fn handed_over(out: &[u8]) -> Option<&[u8]> {
    let marked = out.strip_prefix(&lb_common::HANDOFF_MARK.to_ne_bytes());
    if xdp_metadata_supported() {
        marked
    } else {
        marked.is_none().then_some(out)
    }
}

/// `frame` with Ethernet destination `dst` and source `src`.
#[must_use]
pub fn with_macs(frame: &[u8], dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f
}

/// `frame` (Ethernet, IPv4) with its IPv4 header checksum computed anew
/// (after a test changed a header field).
#[must_use]
pub fn with_ip_checksum(frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    let ihl = usize::from(f[14] & 0x0f) * 4;
    f[24..26].copy_from_slice(&[0, 0]);
    let c = checksum(&f[14..14 + ihl]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

/// A program of the data path a test frame goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `lb_xdp`, on the uplink.
    Xdp,
    /// `lb_tc_uplink`, on the uplink at TC.
    TcUplink,
    /// `lb_tc`, on a pod interface (ingress).
    Pod,
    /// `lb_tc_egress`, at the egress of the uplink or a pod interface, as a
    /// packet the node originated (no ingress interface).
    Egress,
}

impl Hook {
    /// Every program where packets enter the node.
    pub const ALL: [Hook; 3] = [Hook::Xdp, Hook::TcUplink, Hook::Pod];
    /// The uplink's programs.
    pub const UPLINKS: [Hook; 2] = [Hook::Xdp, Hook::TcUplink];

    /// Runs `frame` through the program once: (return code, frame after).
    #[must_use]
    pub fn run(self, dp: &TestDatapath, frame: &[u8]) -> (u32, Vec<u8>) {
        match self {
            Hook::Xdp => dp.run_xdp(frame),
            Hook::TcUplink => dp.run_tc_uplink(frame),
            Hook::Pod => dp.run_tc(frame),
            Hook::Egress => dp.run_tc_egress(frame),
        }
    }

    /// The return code of a frame handed on.
    #[must_use]
    pub fn passed(self) -> u32 {
        match self {
            Hook::Xdp => XDP_PASS,
            Hook::TcUplink | Hook::Pod | Hook::Egress => TC_ACT_OK,
        }
    }

    /// The return code of a drop.
    #[must_use]
    pub fn dropped(self) -> u32 {
        match self {
            Hook::Xdp => XDP_DROP,
            Hook::TcUplink | Hook::Pod | Hook::Egress => TC_ACT_SHOT,
        }
    }

    /// The return code of a reply sent back where the frame came from.
    #[must_use]
    pub fn bounced(self) -> u32 {
        match self {
            Hook::Xdp => XDP_TX,
            Hook::TcUplink | Hook::Pod | Hook::Egress => TC_ACT_REDIRECT,
        }
    }

    /// Runs `frame` through the program, asserts it is handed on, and
    /// returns the frame after.
    ///
    /// # Panics
    /// When the program does anything else with it.
    #[must_use]
    pub fn pass(self, dp: &TestDatapath, frame: &[u8]) -> Vec<u8> {
        let (ret, out) = self.run(dp, frame);
        assert_eq!(ret, self.passed(), "{self:?}: the frame passes");
        out
    }
}

/// An ICMP echo request.
#[must_use]
pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    icmp_frame(
        src,
        dst,
        [0, 0, 1, 0x40, 0, 64],
        vec![8, 0, 0, 0, 0, 1, 0, 1],
    )
}

/// An ICMP error frame from `src` to `dst`: an IPv4 header (no options, not
/// a fragment), the ICMP header (`rest` is bytes 4-7: unused, the MTU of a
/// fragmentation-needed, the pointer of a parameter problem) and `quoted`
/// (the offending packet's IPv4 header and first bytes, see [`quote`]); the
/// IPv4 and ICMP checksums computed from scratch.
#[must_use]
pub fn icmp_error(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    icmp_type: u8,
    code: u8,
    rest: [u8; 4],
    quoted: &[u8],
) -> Vec<u8> {
    let mut icmp = vec![icmp_type, code, 0, 0];
    icmp.extend_from_slice(&rest);
    icmp.extend_from_slice(quoted);
    icmp_frame(src, dst, [0xc0, 0x4d, 0x2e, 0, 0, 61], icmp)
}

/// An ICMP message `icmp` (its checksum field zero) in an IPv4 header
/// without options from `src` to `dst`; `tos_id_frag_ttl` are the header's
/// TOS, identification, fragment field and TTL bytes. Both checksums are
/// computed from scratch.
fn icmp_frame(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    tos_id_frag_ttl: [u8; 6],
    mut icmp: Vec<u8>,
) -> Vec<u8> {
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let [tos, id @ .., ttl] = tos_id_frag_ttl;
    let mut ip = vec![0x45, tos];
    ip.extend_from_slice(&u16::try_from(20 + icmp.len()).unwrap().to_be_bytes());
    ip.extend_from_slice(&id);
    ip.extend_from_slice(&[ttl, 1, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = ethernet(0x0800);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}

/// What an ICMP error quotes of `frame` (Ethernet, 20-byte IPv4 header): its
/// IPv4 header and the first `l4_bytes` after it (at most what there is).
#[must_use]
pub fn quote(frame: &[u8], l4_bytes: usize) -> Vec<u8> {
    frame[14..frame.len().min(34 + l4_bytes)].to_vec()
}

/// A quote (see [`quote`]) with its addresses and ports replaced and its
/// IPv4 header checksum computed from scratch; the L4 checksum and every
/// other byte stay as they were.
#[must_use]
pub fn quote_as(quoted: &[u8], src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
    let mut q = quoted.to_vec();
    q[12..16].copy_from_slice(&src.0.octets());
    q[16..20].copy_from_slice(&dst.0.octets());
    q[20..22].copy_from_slice(&src.1.to_be_bytes());
    q[22..24].copy_from_slice(&dst.1.to_be_bytes());
    q[10..12].copy_from_slice(&[0, 0]);
    let c = checksum(&q[..20]);
    q[10..12].copy_from_slice(&c.to_be_bytes());
    q
}

/// An IPv6 TCP SYN (to port 80).
#[must_use]
pub fn ipv6_tcp() -> Vec<u8> {
    let mut f = ethernet(ETH_P_IPV6);
    f.extend_from_slice(&[0x60, 0, 0, 0, 0, 20, 6, 64]);
    f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    f.extend_from_slice(&[
        0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xfa, 0xf0, 0, 0, 0, 0,
    ]);
    f
}

/// An ARP request.
#[must_use]
pub fn arp() -> Vec<u8> {
    let mut f = ethernet(0x0806);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 2, 192, 168, 50, 10]);
    f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 96, 0, 10]);
    f
}

/// A pin directory under /sys/fs/bpf no other test uses.
#[must_use]
pub fn unique_pin_dir(name: &str) -> PathBuf {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    PathBuf::from(format!("/sys/fs/bpf/lbt{}x{n}-{name}", std::process::id()))
}

/// A data path loaded for packet tests: no interface attached, maps pinned in a unique dir.
pub struct TestDatapath {
    datapath: Option<Datapath>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    slab_slots: u32,
    pin_dir: PathBuf,
    /// Whether IPv6's programs are loaded ([`TestDatapath::with_ipv6`]).
    ipv6: bool,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl TestDatapath {
    /// Loads the programs (root needed) with `node` as the SNAT address.
    #[must_use]
    pub fn load(name: &str, node: Ipv4Addr) -> Self {
        Self::load_with(name, node, 1 << 16)
    }

    /// Like [`TestDatapath::load`] with a Maglev slab of `slab_slots`.
    #[must_use]
    pub fn load_with(name: &str, node: Ipv4Addr, slab_slots: u32) -> Self {
        Self::load_at(&unique_pin_dir(name), node, slab_slots, true)
    }

    /// Loads with pins under `pin_dir`; unless `detach_on_exit`, they stay
    /// after drop, for a next load to adopt or hand over.
    #[must_use]
    pub fn load_at(pin_dir: &Path, node: Ipv4Addr, slab_slots: u32, detach_on_exit: bool) -> Self {
        Self::load_at_with_flows(pin_dir, node, slab_slots, detach_on_exit, test_flows())
    }

    /// Like [`TestDatapath::load_at`] with these flow settings (an agent
    /// with its own SNAT pool, say).
    #[must_use]
    pub fn load_at_with_flows(
        pin_dir: &Path,
        node: Ipv4Addr,
        slab_slots: u32,
        detach_on_exit: bool,
        flows: FlowSettings,
    ) -> Self {
        Self::load_config(DatapathConfig {
            slab_slots,
            detach_on_exit,
            flows,
            ..Self::config(pin_dir, node)
        })
    }

    /// Like [`TestDatapath::load`], counting only service ids below
    /// `stats_array_len` in the per-CPU array (the rest in the hash).
    #[must_use]
    pub fn load_with_stats_array(name: &str, node: Ipv4Addr, stats_array_len: u32) -> Self {
        Self::load_config(DatapathConfig {
            stats_array_len: Some(stats_array_len),
            ..Self::config(&unique_pin_dir(name), node)
        })
    }

    /// Like [`TestDatapath::load`] with socket-level balancing of this
    /// process's network namespace, its programs attached to `cgroup` (a
    /// test's own, see [`crate::cgroup::TestCgroup`]).
    #[must_use]
    pub fn load_with_socket_lb(name: &str, node: Ipv4Addr, cgroup: &Path) -> Self {
        Self::load_with_socket_lb_scope(name, node, cgroup, SocketLbScope::Host)
    }

    /// [`TestDatapath::load_with_socket_lb`] serving the sockets `scope` says.
    #[must_use]
    pub fn load_with_socket_lb_scope(
        name: &str,
        node: Ipv4Addr,
        cgroup: &Path,
        scope: SocketLbScope,
    ) -> Self {
        Self::load_config(DatapathConfig {
            socket_lb_cgroup: Some(cgroup.to_path_buf()),
            socket_lb_scope: scope,
            socket_lb_netns_dirs: vec![],
            ipv6: true,
            ..Self::config(&unique_pin_dir(name), node)
        })
    }

    /// [`TestDatapath::load_with_socket_lb`] with IPv6 off (`--ipv6 off`):
    /// IPv4's socket programs only.
    #[must_use]
    pub fn load_with_socket_lb_ipv4_only(name: &str, node: Ipv4Addr, cgroup: &Path) -> Self {
        Self::load_config(DatapathConfig {
            socket_lb_cgroup: Some(cgroup.to_path_buf()),
            ipv6: false,
            ..Self::config(&unique_pin_dir(name), node)
        })
    }

    /// Like [`TestDatapath::load_with_flows`], with `node6` as the IPv6
    /// SNAT address.
    #[must_use]
    pub fn load_with_node6(
        name: &str,
        node: Ipv4Addr,
        node6: std::net::Ipv6Addr,
        flows: FlowSettings,
    ) -> Self {
        Self::load_config(DatapathConfig {
            node_addr6: Some(node6),
            flows,
            ..Self::config(&unique_pin_dir(name), node)
        })
    }

    /// The IPv6 SNAT exhaustion counts (`SNAT_EXHAUSTED6`) of `backend`:`port`/`proto`.
    #[must_use]
    pub fn exhausted6(&self, backend: std::net::Ipv6Addr, port: u16, proto: u8) -> u64 {
        let path = lb_userspace::datapath::pins_dir(&self.pin_dir)
            .join(lb_common::maps6::MAP_SNAT_EXHAUSTED6);
        let data = aya::maps::MapData::from_pin(&path).expect("opening SNAT_EXHAUSTED6");
        let map: aya::maps::HashMap<_, lb_common::maps6::BackendKey6, lb_common::SnatExhaustion> =
            aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).expect("a hash map");
        let key = lb_common::maps6::BackendKey6 {
            addr: lb_common::maps6::ipv6_words(backend.octets()),
            port: port.to_be(),
            proto,
            pad: 0,
        };
        map.get(&key, 0).map_or(0, |e| e.count)
    }

    /// Like [`TestDatapath::load`] with these flow settings.
    #[must_use]
    pub fn load_with_flows(name: &str, node: Ipv4Addr, flows: FlowSettings) -> Self {
        Self::load_config(DatapathConfig {
            flows,
            ..Self::config(&unique_pin_dir(name), node)
        })
    }

    /// No interfaces, a 2^16-slot slab, pins removed on drop.
    fn config(pin_dir: &Path, node: Ipv4Addr) -> DatapathConfig {
        DatapathConfig {
            xdp_ifaces: vec![],
            uplink: UplinkHook::Xdp(XdpMode::Driver),
            tc_patterns: vec![],
            node_addr: node,
            node_addr6: None,
            pin_dir: pin_dir.to_path_buf(),
            slab_slots: 1 << 16,
            backend_slots: lb_common::MAX_BACKENDS,
            service_slots: lb_common::MAX_SERVICES,
            stats_array_len: None,
            detach_on_exit: true,
            flows: test_flows(),
            socket_lb_cgroup: None,
            socket_lb_scope: SocketLbScope::Host,
            socket_lb_netns_dirs: vec![],
            // IPv6's programs come with `with_ipv6`.
            ipv6: false,
        }
    }

    fn load_config(config: DatapathConfig) -> Self {
        crate::require_root();
        crate::require_bpffs();
        let slab_slots = config.slab_slots;
        let pin_dir = config.pin_dir.clone();
        let ipv6 = config.ipv6;
        let mut datapath = Datapath::load(config).unwrap_or_else(|e| {
            panic!("loading the data path (the verifier must accept its programs): {e:?}")
        });
        // Tests run either uplink hook's program and the baselines; IPv6's
        // programs only when asked (`with_ipv6`, or a configuration with
        // IPv6 on): verifying them would double every IPv4 test's load.
        datapath
            .load_programs_of(lb_common::Family::Ipv4)
            .unwrap_or_else(|e| panic!("loading the other programs: {e:?}"));
        let dp = Self {
            datapath: Some(datapath),
            logger: None,
            slab_slots,
            pin_dir,
            ipv6: false,
        };
        if ipv6 {
            dp.with_ipv6()
        } else {
            dp
        }
    }

    /// The same data path with IPv6's programs loaded too, in their
    /// prog-array slots: for a test that sends IPv6 frames (the run
    /// methods refuse one without them, which the IPv4 entry points
    /// would pass untouched for want of a program in the slot).
    #[must_use]
    pub fn with_ipv6(mut self) -> Self {
        if self.ipv6 {
            return self;
        }
        self.datapath_mut()
            .load_programs_of(lb_common::Family::Ipv6)
            .unwrap_or_else(|e| panic!("loading the IPv6 programs: {e:?}"));
        self.ipv6 = true;
        self
    }

    /// The pin directory (`--pin-dir`) it was loaded with.
    #[must_use]
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Both flow maps and the timeouts, read now.
    #[must_use]
    pub fn snapshot(&self) -> lb_userspace::conntrack::Snapshot {
        lb_userspace::conntrack::Snapshot::read(&self.pin_dir).expect("reading the flow maps")
    }

    fn flow_map<V: aya::Pod>(
        &self,
        name: &str,
    ) -> aya::maps::HashMap<aya::maps::MapData, lb_common::FlowKey, V> {
        let path = lb_userspace::datapath::pins_dir(&self.pin_dir).join(name);
        let data = aya::maps::MapData::from_pin(&path).expect("opening a pinned flow map");
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(data)).expect("a flow map")
    }

    /// The conntrack entry of a client flow, if any.
    #[must_use]
    pub fn conntrack(&self, key: &lb_common::FlowKey) -> Option<lb_common::CtEntry> {
        self.flow_map(lb_common::MAP_CONNTRACK).get(key, 0).ok()
    }

    /// The reverse-NAT entry of a reply tuple, if any.
    #[must_use]
    pub fn reverse(&self, key: &lb_common::FlowKey) -> Option<lb_common::RevNatEntry> {
        self.flow_map(lb_common::MAP_REVNAT).get(key, 0).ok()
    }

    /// Writes a conntrack entry (a state the programs would have made).
    pub fn insert_conntrack(&self, key: &lb_common::FlowKey, entry: &lb_common::CtEntry) {
        let mut map = self.flow_map::<lb_common::CtEntry>(lb_common::MAP_CONNTRACK);
        map.insert(key, entry, 0)
            .expect("writing a conntrack entry");
    }

    /// Writes a reverse-NAT entry (a state the programs would have made).
    pub fn insert_reverse(&self, key: &lb_common::FlowKey, entry: &lb_common::RevNatEntry) {
        let mut map = self.flow_map::<lb_common::RevNatEntry>(lb_common::MAP_REVNAT);
        map.insert(key, entry, 0)
            .expect("writing a reverse-NAT entry");
    }

    /// Deletes the conntrack entry of a client flow (as the collector deletes a gone flow's).
    pub fn remove_conntrack(&self, key: &lb_common::FlowKey) {
        let mut map = self.flow_map::<lb_common::CtEntry>(lb_common::MAP_CONNTRACK);
        map.remove(key).expect("deleting a conntrack entry");
    }

    /// Deletes the reverse-NAT entry of a reply tuple (as the collector deletes a gone flow's).
    pub fn remove_reverse(&self, key: &lb_common::FlowKey) {
        let mut map = self.flow_map::<lb_common::RevNatEntry>(lb_common::MAP_REVNAT);
        map.remove(key).expect("deleting a reverse-NAT entry");
    }

    /// The client flows `CONNTRACK6` tracks now.
    #[must_use]
    pub fn flows6(&self) -> Vec<lb_common::maps6::FlowKey6> {
        let path =
            lb_userspace::datapath::pins_dir(&self.pin_dir).join(lb_common::maps6::MAP_CONNTRACK6);
        let data = aya::maps::MapData::from_pin(&path).expect("opening CONNTRACK6");
        let map: aya::maps::HashMap<_, lb_common::maps6::FlowKey6, lb_common::maps6::CtEntry6> =
            aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(data)).expect("a flow map");
        map.keys().map(|k| k.expect("a CONNTRACK6 key")).collect()
    }

    /// The conntrack entry of an IPv6 client flow, if any.
    #[must_use]
    pub fn conntrack6(
        &self,
        key: &lb_common::maps6::FlowKey6,
    ) -> Option<lb_common::maps6::CtEntry6> {
        let path =
            lb_userspace::datapath::pins_dir(&self.pin_dir).join(lb_common::maps6::MAP_CONNTRACK6);
        let data = aya::maps::MapData::from_pin(&path).expect("opening CONNTRACK6");
        let map: aya::maps::HashMap<_, lb_common::maps6::FlowKey6, lb_common::maps6::CtEntry6> =
            aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(data)).expect("a flow map");
        map.get(key, 0).ok()
    }

    /// Deletes the conntrack entry of an IPv6 client flow (as the collector
    /// deletes a gone flow's).
    pub fn remove_flow6(&self, key: &lb_common::maps6::FlowKey6) {
        let path =
            lb_userspace::datapath::pins_dir(&self.pin_dir).join(lb_common::maps6::MAP_CONNTRACK6);
        let data = aya::maps::MapData::from_pin(&path).expect("opening CONNTRACK6");
        let mut map: aya::maps::HashMap<_, lb_common::maps6::FlowKey6, lb_common::maps6::CtEntry6> =
            aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(data)).expect("a flow map");
        map.remove(key).expect("deleting a CONNTRACK6 entry");
    }

    /// Datagrams the fragment map remembers now. The map is not pinned: it
    /// is found among the XDP program's maps (0 when the programs have none).
    #[must_use]
    pub fn fragments_remembered(&self) -> usize {
        self.unpinned_entries::<lb_common::FragKey, lb_common::FragPorts>(
            XDP_PROGRAM,
            lb_common::MAP_FRAGMENTS,
        )
    }

    /// IPv6 datagrams the IPv6 fragment map remembers now (found among
    /// `lb_xdp6`'s maps, as [`Self::fragments_remembered`]).
    #[must_use]
    pub fn fragments6_remembered(&self) -> usize {
        self.unpinned_entries::<lb_common::maps6::FragKey6, lb_common::FragPorts>(
            lb_common::maps6::XDP6_PROGRAM,
            lb_common::maps6::MAP_FRAGMENTS6,
        )
    }

    /// Entries of the unpinned LRU hash map `map` of program `program` (0
    /// when the program has no such map).
    fn unpinned_entries<K: aya::Pod, V: aya::Pod>(&self, program: &str, map: &str) -> usize {
        let info = self.program(program).info().expect("the program's info");
        let ids = info.map_ids().expect("the program's maps");
        for id in ids.unwrap_or_default() {
            let info = aya::maps::MapInfo::from_id(id).expect("a map of the program");
            if info.name_as_str() != Some(map) {
                continue;
            }
            let data = aya::maps::MapData::from_id(id).expect("opening the map");
            let entries: aya::maps::HashMap<_, K, V> =
                aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(data))
                    .expect("an LRU hash map");
            return entries.keys().flatten().count();
        }
        0
    }

    /// The summed count of a data-path event (both families).
    #[must_use]
    pub fn event(&self, event: lb_common::Event) -> u64 {
        self.datapath().maps.event_total(event).unwrap()
    }

    /// The summed count of a data-path event in `family`'s slots.
    #[must_use]
    pub fn event_of(&self, family: lb_common::Family, event: lb_common::Event) -> u64 {
        self.datapath().maps.event_count(family, event).unwrap()
    }

    /// Slots of the Maglev slab it was loaded with.
    #[must_use]
    pub fn slab_slots(&self) -> u32 {
        self.slab_slots
    }

    #[must_use]
    /// The data path, to apply plans.
    pub fn datapath_mut(&mut self) -> &mut Datapath {
        self.datapath.as_mut().unwrap()
    }

    fn datapath(&self) -> &Datapath {
        self.datapath.as_ref().unwrap()
    }

    /// A loaded program by name.
    ///
    /// # Panics
    /// For an IPv6 program of a data path loaded without
    /// [`TestDatapath::with_ipv6`].
    #[must_use]
    pub fn program(&self, name: &str) -> &aya::programs::Program {
        assert!(
            self.ipv6 || !lb_userspace::datapath::is_ipv6_program(name),
            "{name} is an IPv6 program: load the test's data path `.with_ipv6()`"
        );
        self.datapath().program(name)
    }

    /// The program `name`, to run on `frame`.
    ///
    /// # Panics
    /// When `frame` is IPv6 and IPv6's programs are not loaded: the IPv4
    /// entry points would pass it untouched, and the test prove nothing.
    fn entry(&self, name: &str, frame: &[u8]) -> &aya::programs::Program {
        assert!(
            self.ipv6 || !is_ipv6_frame(frame),
            "an IPv6 frame for {name}: load the test's data path `.with_ipv6()`"
        );
        self.program(name)
    }

    /// Runs the XDP program once on `frame`: (return code, frame after).
    #[must_use]
    pub fn run_xdp(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog: &Xdp = self.entry(XDP_PROGRAM, frame).try_into().unwrap();
        run(prog, frame)
    }

    /// Runs the XDP program once on `frame` as if it arrived on interface
    /// `ifindex` (of the calling thread's network namespace).
    #[must_use]
    pub fn run_xdp_on(&self, ifindex: u32, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog: &Xdp = self.entry(XDP_PROGRAM, frame).try_into().unwrap();
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex; the kernel wants data_end to be
        // the frame's length.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&u32::try_from(frame.len()).unwrap().to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        run_with_ctx(prog, frame, Some(&ctx))
    }

    /// Runs the TC program once on `frame` as if it arrived on interface
    /// `ifindex` (of the calling thread's network namespace).
    #[must_use]
    pub fn run_tc_on(&self, ifindex: u32, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog: &SchedClassifier = self.entry(TC_PROGRAM, frame).try_into().unwrap();
        run_with_ctx(prog, frame, Some(&skb_ctx(ifindex)))
    }

    /// Runs the TC program once on `frame`: (return code, frame after).
    #[must_use]
    pub fn run_tc(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog: &SchedClassifier = self.entry(TC_PROGRAM, frame).try_into().unwrap();
        run(prog, frame)
    }

    /// Runs the egress TC program (out of the node or into a pod) once on
    /// `frame`, as a packet the node itself originated (no ingress
    /// interface): (return code, frame after).
    #[must_use]
    pub fn run_tc_egress(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog: &SchedClassifier = self.entry(EGRESS_TC_PROGRAM, frame).try_into().unwrap();
        run(prog, frame)
    }

    /// Runs the egress TC program once on `frame` leaving by interface
    /// `ifindex` after it entered the node by `ingress_ifindex` (both of
    /// the calling thread's network namespace).
    #[must_use]
    pub fn run_tc_egress_on(
        &self,
        ifindex: u32,
        ingress_ifindex: u32,
        frame: &[u8],
    ) -> (u32, Vec<u8>) {
        let prog: &SchedClassifier = self.entry(EGRESS_TC_PROGRAM, frame).try_into().unwrap();
        let mut ctx = skb_ctx(ifindex);
        // struct __sk_buff: ingress_ifindex at offset 36.
        ctx[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        run_with_ctx(prog, frame, Some(&ctx))
    }

    /// Tells the programs the node's overlay device is `ifindex` (0: none),
    /// as the agent does when it finds one.
    pub fn set_overlay_ifindex(&mut self, ifindex: u32) {
        let config = &mut self.datapath_mut().maps.config;
        let mut value = config.get(&0, 0).unwrap();
        value.overlay_ifindex = ifindex;
        config.set(0, value, 0).unwrap();
    }

    /// Runs the uplink TC program (`--uplink-hook tc`) on one frame: (return code, frame out).
    #[must_use]
    pub fn run_tc_uplink(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog: &SchedClassifier = self.entry(UPLINK_TC_PROGRAM, frame).try_into().unwrap();
        run(prog, frame)
    }

    /// Runs the uplink TC program once on `frame` as if it arrived on
    /// interface `ifindex` (of the calling thread's network namespace).
    #[must_use]
    pub fn run_tc_uplink_on(&self, ifindex: u32, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog: &SchedClassifier = self.entry(UPLINK_TC_PROGRAM, frame).try_into().unwrap();
        run_with_ctx(prog, frame, Some(&skb_ctx(ifindex)))
    }

    /// Runs the uplink's TC hand-off program (`lb_tc_uplink_handoff`) once
    /// on `frame` as if it arrived on interface `ifindex` (test runs carry
    /// no XDP metadata: the frame is unmarked).
    #[must_use]
    pub fn run_tc_uplink_handoff_on(&self, ifindex: u32, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog: &SchedClassifier = self
            .entry(UPLINK_HANDOFF_TC_PROGRAM, frame)
            .try_into()
            .unwrap();
        run_with_ctx(prog, frame, Some(&skb_ctx(ifindex)))
    }

    /// The summed counter of `verdict` (both families).
    #[must_use]
    pub fn verdict(&self, verdict: Verdict) -> u64 {
        self.datapath().maps.verdict_totals().unwrap()[verdict as usize]
    }

    /// The summed counter of `verdict` in `family`'s slots.
    #[must_use]
    pub fn verdict_of(&self, family: lb_common::Family, verdict: Verdict) -> u64 {
        self.datapath().maps.verdict_count(family, verdict).unwrap()
    }

    /// Reads the kernel programs' log records (aya-log) into the `log` crate's logger.
    pub fn flush_kernel_logs(&mut self) {
        if self.logger.is_none() {
            self.logger = self.datapath.as_mut().unwrap().take_logger();
        }
        self.logger
            .as_mut()
            .expect("the object has an aya-log ring buffer")
            .flush();
    }

    /// Per-service packets and bytes, summed over CPUs.
    #[must_use]
    pub fn service_stats(&self) -> Vec<(u32, lb_common::ServiceStats)> {
        self.datapath().maps.service_totals().unwrap()
    }

    /// Slots of the Maglev slab.
    #[must_use]
    pub fn table(&self, offset: u32, len: u32) -> Vec<u32> {
        self.datapath().maps.slab.read(offset, len).unwrap()
    }
}

/// A `struct __sk_buff` for `BPF_PROG_TEST_RUN` whose `ifindex` is `ifindex`
/// (the kernel takes the device from it; every other field zero).
fn skb_ctx(ifindex: u32) -> Vec<u8> {
    // sizeof(struct __sk_buff) is 192; ifindex is at offset 40.
    let mut ctx = vec![0u8; 192];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// Ethernet's IPv6 ethertype.
const ETH_P_IPV6: u16 = 0x86dd;
/// Ethertypes of a VLAN tag (802.1Q, 802.1ad).
const ETH_P_VLAN: [u16; 2] = [0x8100, 0x88a8];

/// Whether `frame` carries IPv6 (behind one VLAN tag at most).
fn is_ipv6_frame(frame: &[u8]) -> bool {
    let ethertype = |at: usize| {
        frame
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    match ethertype(12) {
        Some(t) if ETH_P_VLAN.contains(&t) => ethertype(16) == Some(ETH_P_IPV6),
        t => t == Some(ETH_P_IPV6),
    }
}

/// One `BPF_PROG_TEST_RUN` of `prog` (XDP or TC) on `frame`: (return code, frame after).
#[must_use]
pub fn run<P>(prog: &P, frame: &[u8]) -> (u32, Vec<u8>)
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    run_with_ctx(prog, frame, None)
}

/// [`run`] with the program's context (`struct xdp_md` or `struct __sk_buff`) set to `ctx`.
#[must_use]
pub fn run_with_ctx<P>(prog: &P, frame: &[u8], ctx: Option<&[u8]>) -> (u32, Vec<u8>)
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    // repeat = 1: with more, the kernel would rerun on the already rewritten frame.
    let mut out = vec![0u8; frame.len() + 256];
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: ctx,
            repeat: 1,
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

impl Drop for TestDatapath {
    fn drop(&mut self) {
        if let Some(dp) = self.datapath.take() {
            dp.shutdown();
        }
    }
}

/// The conntrack key of a client flow, as the programs key it.
#[must_use]
pub fn flow_key(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    proto: u8,
) -> lb_common::FlowKey {
    lb_common::FlowKey {
        src_addr: u32::from_ne_bytes(src.octets()),
        dst_addr: u32::from_ne_bytes(dst.octets()),
        src_port: sport.to_be(),
        dst_port: dport.to_be(),
        proto,
        pad: [0; 3],
    }
}
