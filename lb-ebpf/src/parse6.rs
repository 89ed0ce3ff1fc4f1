//! IPv6 header parsing: Ethernet + IPv6 + a bounded walk of the extension
//! headers + TCP/UDP, bounds-checked against `data_end`. The IPv6 twin of
//! [`crate::parse`]; what is malformed is told apart from what is merely not
//! ours, so the first can be counted (`Event::Ipv6HeadersSkipped`).
//!
//! The walk follows RFC 8200: hop-by-hop options only first, then at most
//! [`IPV6_MAX_EXT_HEADERS`] headers in all and [`IPV6_MAX_EXT_BYTES`] bytes.
//! A routing header with segments left names a hop, not the destination: not
//! ours. AH, ESP and "no next header" are not ours either. A fragment header
//! at offset 0 starts the datagram (its first fragment must carry the whole
//! L4 header, RFC 7112); at a later offset it ends the walk without ports.

use lb_common::{
    maps6::{
        ETH_P_IPV6, IPV6_MAX_EXT_BYTES, IPV6_MAX_EXT_HEADERS, NEXTHDR_DEST, NEXTHDR_FRAGMENT,
        NEXTHDR_HOP, NEXTHDR_ROUTING,
    },
    IPPROTO_TCP, IPPROTO_UDP,
};
use network_types::{eth::EthHdr, ip::Ipv6Hdr, tcp::TcpHdr, udp::UdpHdr};

use crate::parse::{opaque, Fragment, L3_OFF};

/// Offsets within an IPv6 header (the frame's, or one quoted in an
/// `ICMPv6` error): payload length, next header, source and destination.
pub const IP6_PAYLOAD_LEN: usize = 4;
/// See [`IP6_PAYLOAD_LEN`].
pub const IP6_NEXT: usize = 6;
/// See [`IP6_PAYLOAD_LEN`].
pub const IP6_SRC: usize = 8;
/// See [`IP6_PAYLOAD_LEN`].
pub const IP6_DST: usize = 24;
/// Offset of the source address within the frame.
pub const IP6_SRC_OFF: usize = L3_OFF + IP6_SRC;
/// Offset of the destination address within the frame.
pub const IP6_DST_OFF: usize = L3_OFF + IP6_DST;
/// Offset of the first byte after the fixed IPv6 header.
pub const EXT_OFF: usize = L3_OFF + Ipv6Hdr::LEN;
/// Bytes a parse needs in the linear area at most (Ethernet, IPv6, the
/// extension headers it walks, TCP with options).
pub const MAX_HEADERS_LEN6: usize = EXT_OFF + IPV6_MAX_EXT_BYTES + 60;
/// The largest L4 offset the walk yields ([`Flow6::l4_off`]).
pub const MAX_L4_OFF6: usize = EXT_OFF + IPV6_MAX_EXT_BYTES;

/// Bytes of a fragment header.
const FRAG_HDR_LEN: usize = 8;
/// Offset bits (in 8-byte units, shifted left 3) of a fragment header's
/// offset field.
const FRAG_OFFSET_MASK: u16 = 0xfff8;
/// "More fragments" bit of a fragment header's offset field.
const FRAG_MORE: u16 = 1;
/// Offset of the flags byte in the TCP header.
const TCP_FLAGS_OFF: usize = 13;
/// Offset of the checksum in the UDP header.
const UDP_CSUM_OFF: usize = 6;

/// A TCP or UDP packet over IPv6. Addresses are raw network-order words,
/// ports raw network-order halves, as [`crate::parse::Flow`] holds them.
#[derive(Clone, Copy)]
pub struct Flow6 {
    /// Source address.
    pub src: [u32; 4],
    /// Destination address.
    pub dst: [u32; 4],
    /// Source port (0 for a later fragment).
    pub sport: u16,
    /// Destination port (0 for a later fragment).
    pub dport: u16,
    /// Upper-layer protocol (6 or 17).
    pub proto: u8,
    /// Offset of the L4 header from the start of the packet (of the
    /// payload, for a later fragment).
    pub l4_off: usize,
    /// Length of the whole packet (linear and paged), Ethernet included.
    pub len: u32,
    /// TCP flags, 0 for UDP and for a later fragment.
    pub tcp_flags: u8,
    /// Where the packet stands in its datagram.
    pub fragment: Fragment,
    /// The fragment header's identification (raw network order), 0 without one.
    pub frag_id: u32,
}

/// What a frame of ethertype IPv6 is to the programs.
pub enum Parsed6 {
    /// A TCP/UDP packet (or fragment) between unicast global addresses.
    Flow(Flow6),
    /// Well formed, and not ours: another protocol, a link-local,
    /// multicast, loopback or unspecified address, a hop still to route.
    NotOurs,
    /// Malformed, or beyond what the walk accepts: passed untouched, counted.
    Malformed,
}

/// Whether the frame in `[data, data_end)` is IPv6 by its ethertype.
#[inline(always)]
pub fn is_ipv6(data: usize, data_end: usize) -> bool {
    if data + EthHdr::LEN > data_end {
        return false;
    }
    // SAFETY: bounds checked above; the header is bytes (alignment 1).
    let eth = unsafe { &*(data as *const EthHdr) };
    eth.ether_type == ETH_P_IPV6.to_be()
}

/// Whether an address (first word, raw network order; all four words) is
/// one the programs never balance: unspecified, loopback, link-local
/// (`fe80::/10`) or multicast (`ff00::/8`).
#[inline(always)]
fn special(addr: &[u8; 16]) -> bool {
    let first = u16::from_be_bytes([addr[0], addr[1]]);
    if first & 0xff00 == 0xff00 || first & 0xffc0 == 0xfe80 {
        return true;
    }
    let words: [u32; 4] = words(addr);
    words[0] == 0 && words[1] == 0 && words[2] == 0 && u32::from_be(words[3]) <= 1
}

/// An address as four raw network-order words.
#[inline(always)]
pub fn words(addr: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]),
        u32::from_ne_bytes([addr[4], addr[5], addr[6], addr[7]]),
        u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]),
        u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]),
    ]
}

/// Parses the IPv6 frame in `[data, data_end)` (ethertype checked by the
/// caller), whose whole length (linear and paged data) is `len`.
#[inline(always)]
pub fn parse(data: usize, data_end: usize, len: usize) -> Parsed6 {
    if data + EXT_OFF > data_end {
        return Parsed6::Malformed;
    }
    // SAFETY: bounds checked above; the header is bytes (alignment 1).
    let ip = unsafe { &*((data + L3_OFF) as *const Ipv6Hdr) };
    if ip.version() != 6 {
        return Parsed6::Malformed;
    }
    let payload_len = usize::from(u16::from_be_bytes(ip.payload_len));
    // A jumbogram (length 0, the real one in a hop-by-hop option) is not
    // walked; a length past the frame is a truncated packet.
    if payload_len == 0 || EXT_OFF + payload_len > len {
        return Parsed6::Malformed;
    }
    if special(&ip.src_addr) || special(&ip.dst_addr) {
        return Parsed6::NotOurs;
    }
    let Some((proto, ext_len, fragment, frag_id)) = walk(data, data_end, ip.next_hdr) else {
        return Parsed6::Malformed;
    };
    let proto = match proto {
        Some(p) if p == IPPROTO_TCP || p == IPPROTO_UDP => p,
        _ => return Parsed6::NotOurs,
    };
    if ext_len > payload_len {
        return Parsed6::Malformed;
    }
    let l4_off = EXT_OFF + ext_len;
    let mut flow = Flow6 {
        src: words(&ip.src_addr),
        dst: words(&ip.dst_addr),
        sport: 0,
        dport: 0,
        proto,
        l4_off,
        // A packet is shorter than 4 GiB.
        #[allow(clippy::cast_possible_truncation)]
        len: len as u32,
        tcp_flags: 0,
        fragment,
        frag_id,
    };
    if fragment == Fragment::Later {
        return if ext_len < payload_len {
            Parsed6::Flow(flow)
        } else {
            Parsed6::Malformed
        };
    }
    // What follows the extension headers: the L4 header and payload.
    let l4_len = payload_len - ext_len;
    let l4 = opaque(data + l4_off);
    if proto == IPPROTO_TCP {
        if l4_len < TcpHdr::LEN || l4 + TcpHdr::LEN > data_end {
            return Parsed6::Malformed;
        }
        // SAFETY: l4 + TcpHdr::LEN <= data_end checked above.
        let tcp = unsafe { &*(l4 as *const TcpHdr) };
        let doff = usize::from(tcp.doff()) * 4;
        if doff < TcpHdr::LEN || doff > l4_len {
            return Parsed6::Malformed;
        }
        // SAFETY: the flags byte lies inside the TCP header checked above.
        flow.tcp_flags = unsafe { *((l4 + TCP_FLAGS_OFF) as *const u8) };
    } else {
        if l4_len < UdpHdr::LEN || l4 + UdpHdr::LEN > data_end {
            return Parsed6::Malformed;
        }
        // SAFETY: l4 + UdpHdr::LEN <= data_end checked above.
        let udp = unsafe { &*(l4 as *const UdpHdr) };
        let udp_len = usize::from(u16::from_be_bytes(udp.len));
        // SAFETY: the checksum lies inside the UDP header checked above.
        let csum = unsafe { *((l4 + UDP_CSUM_OFF) as *const u16) };
        // IPv6 makes the UDP checksum mandatory (RFC 8200 8.1).
        if udp_len < UdpHdr::LEN || (fragment == Fragment::Whole && udp_len > l4_len) || csum == 0 {
            return Parsed6::Malformed;
        }
    }
    if l4 + 4 > data_end {
        return Parsed6::Malformed;
    }
    // SAFETY: ports are the first 4 bytes of both TCP and UDP headers, in bounds.
    let ports = unsafe { *(l4 as *const [u8; 4]) };
    flow.sport = u16::from_ne_bytes([ports[0], ports[1]]);
    flow.dport = u16::from_ne_bytes([ports[2], ports[3]]);
    Parsed6::Flow(flow)
}

/// Walks the extension headers after the fixed header, `next` being the
/// fixed header's next header. Returns the upper-layer protocol (`None`: a
/// header that ends what the programs read, such as a routing header with
/// segments left, AH, ESP or "no next header"), the extension headers'
/// length, where the packet stands in its datagram and the fragment id; or
/// `None` when the chain is malformed or longer than the walk accepts.
#[inline(always)]
fn walk(data: usize, data_end: usize, first: u8) -> Option<(Option<u8>, usize, Fragment, u32)> {
    let mut next = first;
    let mut ext_len = 0usize;
    let mut fragment = Fragment::Whole;
    let mut frag_id = 0u32;
    let mut headers = 0usize;
    loop {
        let hdr_len = match next {
            NEXTHDR_HOP | NEXTHDR_DEST | NEXTHDR_ROUTING | NEXTHDR_FRAGMENT => {
                if headers == IPV6_MAX_EXT_HEADERS || (next == NEXTHDR_HOP && headers > 0) {
                    return None;
                }
                let hdr = opaque(data + EXT_OFF + ext_len);
                if hdr + FRAG_HDR_LEN > data_end {
                    return None;
                }
                // SAFETY: the header's first 8 bytes are in bounds (above).
                let bytes = unsafe { *(hdr as *const [u8; FRAG_HDR_LEN]) };
                let following = bytes[0];
                if next == NEXTHDR_FRAGMENT {
                    let field = u16::from_be_bytes([bytes[2], bytes[3]]);
                    frag_id = u32::from_ne_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
                    if field & FRAG_OFFSET_MASK != 0 {
                        // Payload only follows: the walk ends here.
                        let ext_len = ext_len + FRAG_HDR_LEN;
                        return (ext_len <= IPV6_MAX_EXT_BYTES).then_some((
                            Some(following),
                            ext_len,
                            Fragment::Later,
                            frag_id,
                        ));
                    }
                    if field & FRAG_MORE != 0 {
                        fragment = Fragment::First;
                    }
                    next = following;
                    FRAG_HDR_LEN
                } else {
                    if next == NEXTHDR_ROUTING && bytes[3] != 0 {
                        return Some((None, ext_len, fragment, frag_id));
                    }
                    next = following;
                    (usize::from(bytes[1]) + 1) * 8
                }
            }
            IPPROTO_TCP | IPPROTO_UDP => return Some((Some(next), ext_len, fragment, frag_id)),
            _ => return Some((None, ext_len, fragment, frag_id)),
        };
        ext_len += hdr_len;
        headers += 1;
        if ext_len > IPV6_MAX_EXT_BYTES {
            return None;
        }
    }
}
