//! Header parsing: Ethernet + IPv4 + TCP/UDP, bounds-checked against `data_end`.
//! A fragment of a TCP/UDP datagram parses too: the first (it carries the L4
//! header) like a whole packet, a later one without ports, which
//! [`crate::frag`] fills in from its datagram's first fragment.

use lb_common::{IPPROTO_TCP, IPPROTO_UDP};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
    tcp::TcpHdr,
    udp::UdpHdr,
};

/// Offset of the IPv4 header (directly after Ethernet; VLAN tags are not ours).
pub const L3_OFF: usize = EthHdr::LEN;
/// Offset of the IPv4 header checksum within the packet.
pub const IP_CSUM_OFF: usize = L3_OFF + 10;
/// Offset of the source address within the packet.
pub const IP_SRC_OFF: usize = L3_OFF + 12;
/// Offset of the destination address within the packet.
pub const IP_DST_OFF: usize = L3_OFF + 16;
/// Offset of the TCP checksum within the TCP header.
pub const TCP_CSUM_OFF: usize = 16;
/// Offset of the UDP checksum within the UDP header.
pub const UDP_CSUM_OFF: usize = 6;
/// Bytes a parse needs in the linear area at most (Ethernet, IPv4 with options, TCP).
pub const MAX_HEADERS_LEN: usize = EthHdr::LEN + 60 + TcpHdr::LEN;

/// IPv4 "more fragments" flag of `frags`.
const IP_MF: u16 = 0x2000;
/// IPv4 fragment offset bits of `frags` (in 8-byte units).
const IP_OFFSET: u16 = 0x1fff;

/// Whether the IPv4 packet is a fragment (first or later) of a datagram.
#[inline(always)]
pub fn is_fragment(ip: &Ipv4Hdr) -> bool {
    u16::from_be_bytes(ip.frags) & (IP_MF | IP_OFFSET) != 0
}

/// Where a packet stands in its IPv4 datagram.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// Not fragmented: the whole datagram.
    Whole,
    /// The first fragment (more fragments follow, offset 0): it carries the
    /// L4 header, whose checksum covers the whole datagram.
    First,
    /// A later fragment (offset above 0): payload only, no L4 header; its
    /// ports are its datagram's, remembered from the first fragment.
    Later,
}

/// A TCP or UDP packet over IPv4. Addresses and ports are raw network-order words.
#[derive(Clone, Copy)]
pub struct Flow {
    /// Source address.
    pub src: u32,
    /// Destination address.
    pub dst: u32,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// IP protocol (6 or 17).
    pub proto: u8,
    /// Offset of the L4 header from the start of the packet.
    pub l4_off: usize,
    /// Length of the whole packet (linear and paged), Ethernet included.
    pub len: u32,
    /// TCP flags (`lb_common::conntrack::TCP_*`), 0 for UDP and for a
    /// later fragment.
    pub tcp_flags: u8,
    /// Where the packet stands in its datagram.
    pub fragment: Fragment,
    /// IPv4 identification (raw network-order), which with the addresses
    /// and protocol names a fragment's datagram.
    pub ip_id: u16,
}

/// Offset of the flags byte in the TCP header.
const TCP_FLAGS_OFF: usize = 13;

impl Flow {
    /// Offset of the L4 checksum from the start of the packet.
    #[inline(always)]
    pub fn l4_csum_off(&self) -> usize {
        if self.proto == IPPROTO_TCP {
            self.l4_off + TCP_CSUM_OFF
        } else {
            self.l4_off + UDP_CSUM_OFF
        }
    }
}

/// The IPv4 header of the frame in `[data, data_end)` (any protocol,
/// fragments too), if the frame is IPv4 with a complete fixed header.
#[inline(always)]
pub fn ipv4<'a>(data: usize, data_end: usize) -> Option<&'a Ipv4Hdr> {
    if data + EthHdr::LEN + Ipv4Hdr::LEN > data_end {
        return None;
    }
    // SAFETY: bounds checked above; the headers are byte arrays (alignment 1).
    let eth = unsafe { &*(data as *const EthHdr) };
    if eth.ether_type != EtherType::Ipv4 as u16 {
        return None;
    }
    // SAFETY: as above; the frame outlives the program's run.
    Some(unsafe { &*((data + L3_OFF) as *const Ipv4Hdr) })
}

/// The Ethernet source address of the frame whose IPv4 header [`ipv4`] found.
#[inline(always)]
pub fn source_mac(data: usize, data_end: usize) -> [u8; 6] {
    if data + EthHdr::LEN > data_end {
        return [0; 6];
    }
    // SAFETY: the Ethernet header is within bounds (checked above).
    unsafe { (*(data as *const EthHdr)).src_addr }
}

/// The source address of an IPv4 header, raw network-order word.
#[inline(always)]
pub fn source(ip: &Ipv4Hdr) -> u32 {
    u32::from_ne_bytes(ip.src_addr)
}

/// Parses the packet whose headers are in `[data, data_end)`, whose IPv4
/// header [`ipv4`] found as `ip`, and whose whole length (linear and paged
/// data) is `len`. Returns `None` for anything that is not a complete IPv4
/// TCP/UDP packet or fragment of one: those are not ours. A later fragment
/// comes back with ports 0 (see [`Fragment::Later`]).
#[inline(always)]
pub fn parse(data: usize, data_end: usize, len: usize, ip: &Ipv4Hdr) -> Option<Flow> {
    if ip.vihl >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(ip.vihl & 0x0f) * 4;
    if ihl < Ipv4Hdr::LEN {
        return None;
    }
    let frags = u16::from_be_bytes(ip.frags);
    let fragment = if frags & IP_OFFSET != 0 {
        Fragment::Later
    } else if frags & IP_MF != 0 {
        Fragment::First
    } else {
        Fragment::Whole
    };
    let proto = ip.proto;
    let tot_len = usize::from(u16::from_be_bytes(ip.tot_len));
    if L3_OFF + tot_len > len {
        // Truncated: never rewrite it.
        return None;
    }
    let l4_off = L3_OFF + ihl;
    if fragment == Fragment::Later {
        // Payload only: nothing beyond the IPv4 header is read or written.
        if tot_len <= ihl || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
            return None;
        }
        return Some(Flow {
            src: source(ip),
            dst: u32::from_ne_bytes(ip.dst_addr),
            sport: 0,
            dport: 0,
            proto,
            l4_off,
            // A packet is shorter than 4 GiB.
            #[allow(clippy::cast_possible_truncation)]
            len: len as u32,
            tcp_flags: 0,
            fragment,
            ip_id: u16::from_ne_bytes(ip.id),
        });
    }
    let l4 = opaque(data + l4_off);
    let mut tcp_flags = 0;
    match proto {
        IPPROTO_TCP => {
            if tot_len < ihl + TcpHdr::LEN || l4 + TcpHdr::LEN > data_end {
                return None;
            }
            // SAFETY: l4 + TcpHdr::LEN <= data_end checked above.
            let tcp = unsafe { &*(l4 as *const TcpHdr) };
            let doff = usize::from(tcp.doff()) * 4;
            if doff < TcpHdr::LEN || ihl + doff > tot_len {
                // A header longer than the packet's payload: malformed, never rewritten.
                return None;
            }
            // SAFETY: the flags byte lies inside the TCP header checked above.
            tcp_flags = unsafe { *((l4 + TCP_FLAGS_OFF) as *const u8) };
        }
        IPPROTO_UDP => {
            if tot_len < ihl + UdpHdr::LEN || l4 + UdpHdr::LEN > data_end {
                return None;
            }
            // SAFETY: l4 + UdpHdr::LEN <= data_end checked above.
            let udp = unsafe { &*(l4 as *const UdpHdr) };
            let udp_len = usize::from(u16::from_be_bytes(udp.len));
            if udp_len < UdpHdr::LEN || (fragment == Fragment::Whole && ihl + udp_len > tot_len) {
                // Shorter than its header, or longer than the IP payload
                // (shorter is padding, which the stack trims): malformed. A
                // first fragment's datagram goes on beyond its payload.
                return None;
            }
        }
        _ => return None,
    }
    if l4 + 4 > data_end {
        return None;
    }
    // SAFETY: ports are the first 4 bytes of both TCP and UDP headers, in bounds.
    let ports = unsafe { *(l4 as *const [u8; 4]) };
    Some(Flow {
        src: source(ip),
        dst: u32::from_ne_bytes(ip.dst_addr),
        sport: u16::from_ne_bytes([ports[0], ports[1]]),
        dport: u16::from_ne_bytes([ports[2], ports[3]]),
        proto,
        l4_off,
        // A packet is shorter than 4 GiB.
        #[allow(clippy::cast_possible_truncation)]
        len: len as u32,
        tcp_flags,
        fragment,
        ip_id: u16::from_ne_bytes(ip.id),
    })
}

/// Reads an unaligned `T` at `data + off` of a frame (packet fields may be
/// unaligned).
///
/// # Safety
/// `data + off + size_of::<T>()` must not exceed the frame's end, as checked
/// against `data_end` by the caller.
#[inline(always)]
pub unsafe fn read_at<T: Copy>(data: usize, off: usize) -> T {
    // SAFETY: the caller's bounds.
    unsafe { ((data + off) as *const T).read_unaligned() }
}

/// Writes an unaligned `T` at `data + off` of a frame.
///
/// # Safety
/// As [`read_at`], in a writable frame (XDP, or TC's direct packet access).
#[inline(always)]
pub unsafe fn write_at<T: Copy>(data: usize, off: usize, value: T) {
    // SAFETY: the caller's bounds.
    unsafe { ((data + off) as *mut T).write_unaligned(value) }
}

/// Returns `value` through a volatile stack slot, so the compiler cannot fold a
/// variable packet offset into the bounds check: the verifier must see the
/// check and the accesses on the same pointer.
#[inline(always)]
pub fn opaque(value: usize) -> usize {
    // SAFETY: reads a local that is initialised and in scope.
    unsafe { core::ptr::read_volatile(&raw const value) }
}
