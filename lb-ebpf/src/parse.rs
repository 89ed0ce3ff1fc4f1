//! Header parsing: Ethernet + IPv4 + TCP/UDP, bounds-checked against `data_end`.

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

/// IPv4 "more fragments" flag and fragment offset bits of `frags`.
const IP_MF_OR_OFFSET: u16 = 0x3fff;

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
    /// TCP flags (`lb_common::conntrack::TCP_*`), 0 for UDP.
    pub tcp_flags: u8,
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

/// The source address of an IPv4 header, raw network-order word.
#[inline(always)]
pub fn source(ip: &Ipv4Hdr) -> u32 {
    u32::from_ne_bytes(ip.src_addr)
}

/// Parses the packet whose headers are in `[data, data_end)`, whose IPv4
/// header [`ipv4`] found as `ip`, and whose whole length (linear and paged
/// data) is `len`. Returns `None` for anything that is not a complete,
/// unfragmented IPv4 TCP/UDP packet: those are not ours.
#[inline(always)]
pub fn parse(data: usize, data_end: usize, len: usize, ip: &Ipv4Hdr) -> Option<Flow> {
    if ip.vihl >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(ip.vihl & 0x0f) * 4;
    if ihl < Ipv4Hdr::LEN {
        return None;
    }
    if u16::from_be_bytes(ip.frags) & IP_MF_OR_OFFSET != 0 {
        // Fragments: only the first carries ports, translating it alone would
        // break the datagram, so every fragment is left to the stack.
        return None;
    }
    let proto = ip.proto;
    let tot_len = usize::from(u16::from_be_bytes(ip.tot_len));
    if L3_OFF + tot_len > len {
        // Truncated: never rewrite it.
        return None;
    }
    let l4_off = L3_OFF + ihl;
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
            if udp_len < UdpHdr::LEN || ihl + udp_len > tot_len {
                // Shorter than its header, or longer than the IP payload
                // (shorter is padding, which the stack trims): malformed.
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
    })
}

/// Returns `value` through a volatile stack slot, so the compiler cannot fold a
/// variable packet offset into the bounds check: the verifier must see the
/// check and the accesses on the same pointer.
#[inline(always)]
pub fn opaque(value: usize) -> usize {
    // SAFETY: reads a local that is initialised and in scope.
    unsafe { core::ptr::read_volatile(&raw const value) }
}
