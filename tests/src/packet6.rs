//! IPv6 frames built with from-scratch checksums for `BPF_PROG_TEST_RUN`
//! tests: TCP, UDP, `ICMPv6` or an opaque upper layer behind an optional chain
//! of extension headers, and a checker of their upper-layer checksums.

use std::net::Ipv6Addr;

pub use lb_common::{
    maps6::{
        IPPROTO_ICMPV6 as NEXTHDR_ICMPV6, NEXTHDR_DEST, NEXTHDR_FRAGMENT, NEXTHDR_HOP,
        NEXTHDR_ROUTING,
    },
    IPPROTO_TCP as NEXTHDR_TCP, IPPROTO_UDP as NEXTHDR_UDP,
};

use crate::packet::{checksum, TCP_ACK, TCP_SYN};

/// Offset of the IPv6 fixed header in a frame (after Ethernet).
pub const IP6_OFF: usize = 14;
/// Offset of what follows the 40-byte fixed header (extension headers or the upper layer).
pub const IP6_PAYLOAD_OFF: usize = IP6_OFF + 40;
/// Next header: encapsulating security payload.
pub const NEXTHDR_ESP: u8 = 50;
/// Next header: authentication header.
pub const NEXTHDR_AUTH: u8 = 51;
/// Next header: no next header.
pub const NEXTHDR_NONE: u8 = 59;

/// One extension header of a chain; the builder fills in its next-header field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ext {
    /// Hop-by-hop options of `(len8 + 1) * 8` bytes, padding options only.
    HopByHop { len8: u8 },
    /// Destination options of `(len8 + 1) * 8` bytes, padding options only.
    DestOpts { len8: u8 },
    /// A segment routing header (type 4) listing the destination
    /// `segments_left + 1` times (below 128): `24 + 16 * segments_left` bytes.
    Routing { segments_left: u8 },
    /// A fragment header: `offset` in 8-byte units, the more-fragments flag, the identification.
    Fragment { offset: u16, more: bool, id: u32 },
    /// Any header named `next_header_value`: `bytes` (the whole header) as they are but
    /// the first, which the chain sets to the next header (where all but ESP have it).
    Raw {
        next_header_value: u8,
        bytes: Vec<u8>,
    },
}

impl Ext {
    /// The value naming this header in the previous header's next-header field.
    #[must_use]
    pub fn next_header_value(&self) -> u8 {
        match self {
            Ext::HopByHop { .. } => NEXTHDR_HOP,
            Ext::DestOpts { .. } => NEXTHDR_DEST,
            Ext::Routing { .. } => NEXTHDR_ROUTING,
            Ext::Fragment { .. } => NEXTHDR_FRAGMENT,
            Ext::Raw {
                next_header_value, ..
            } => *next_header_value,
        }
    }

    /// An options header (hop-by-hop or destination) holding `options`,
    /// padded with `Pad1`/`PadN` to a multiple of 8 bytes.
    #[must_use]
    pub fn options(next_header_value: u8, options: &[u8]) -> Ext {
        let mut bytes = vec![0, 0];
        bytes.extend_from_slice(options);
        let total = bytes.len().div_ceil(8) * 8;
        bytes.extend(padding(total - bytes.len()));
        bytes[1] = u8::try_from(total / 8 - 1).expect("options of at most 2 KiB");
        Ext::Raw {
            next_header_value,
            bytes,
        }
    }

    /// A hop-by-hop header with a router alert option (MLD, value 0), as MLD messages carry.
    #[must_use]
    pub fn router_alert() -> Ext {
        Ext::options(NEXTHDR_HOP, &[0x05, 0x02, 0, 0])
    }

    /// A hop-by-hop header with a jumbo payload option of length `len`.
    #[must_use]
    pub fn jumbo(len: u32) -> Ext {
        let mut option = vec![0xc2, 4];
        option.extend_from_slice(&len.to_be_bytes());
        Ext::options(NEXTHDR_HOP, &option)
    }

    /// An authentication header (24 bytes: SPI, sequence number, a 12-byte ICV).
    #[must_use]
    pub fn auth() -> Ext {
        let mut bytes = vec![0, 4, 0, 0, 0, 0, 0x01, 0, 0, 0, 0, 1];
        bytes.extend_from_slice(&[0xaa; 12]);
        Ext::Raw {
            next_header_value: NEXTHDR_AUTH,
            bytes,
        }
    }

    /// Its bytes followed by a header of type `next`, in a packet to `dst`.
    fn bytes(&self, next: u8, dst: Ipv6Addr) -> Vec<u8> {
        match self {
            Ext::HopByHop { len8 } | Ext::DestOpts { len8 } => {
                let mut b = vec![next, *len8];
                b.extend(padding(usize::from(*len8) * 8 + 6));
                b
            }
            Ext::Routing { segments_left } => {
                assert!(*segments_left < 127, "at most 127 segments");
                let n = segments_left + 1;
                let mut b = vec![next, 2 * n, 4, *segments_left, *segments_left, 0, 0, 0];
                for _ in 0..n {
                    b.extend_from_slice(&dst.octets());
                }
                b
            }
            Ext::Fragment { offset, more, id } => {
                assert!(*offset < 1 << 13, "a 13-bit fragment offset");
                let mut b = vec![next, 0];
                b.extend_from_slice(&(offset << 3 | u16::from(*more)).to_be_bytes());
                b.extend_from_slice(&id.to_be_bytes());
                b
            }
            Ext::Raw { bytes, .. } => {
                let mut b = bytes.clone();
                if let Some(first) = b.first_mut() {
                    *first = next;
                }
                b
            }
        }
    }
}

/// `n` bytes of padding options: Pad1 for a single byte, `PadN` otherwise.
fn padding(mut n: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(n);
    while n > 0 {
        if n == 1 {
            b.push(0);
            break;
        }
        // A PadN covers 2 to 257 bytes; leave no single byte behind.
        let mut take = n.min(257);
        if n - take == 1 {
            take -= 1;
        }
        b.push(1);
        b.push(u8::try_from(take - 2).unwrap());
        b.extend(std::iter::repeat_n(0, take - 2));
        n -= take;
    }
    b
}

#[derive(Clone, Debug)]
enum Upper {
    Tcp { flags: u8 },
    Udp { zero_checksum: bool },
    Icmp6 { ty: u8, code: u8 },
    Opaque { next_header: u8 },
}

/// An IPv6 frame to build: fixed header, extension headers, upper layer.
#[derive(Clone, Debug)]
pub struct Packet6 {
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    upper: Upper,
    payload: Vec<u8>,
    exts: Vec<Ext>,
    hop_limit: u8,
    traffic_class: u8,
    flow_label: u32,
}

impl Packet6 {
    /// A TCP segment (an ACK with a payload until `syn`).
    #[must_use]
    pub fn tcp(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Self {
        Self {
            src,
            dst,
            sport,
            dport,
            upper: Upper::Tcp { flags: TCP_ACK },
            payload: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            exts: vec![],
            hop_limit: 64,
            traffic_class: 0,
            flow_label: 0,
        }
    }

    /// A UDP datagram.
    #[must_use]
    pub fn udp(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Self {
        Self {
            upper: Upper::Udp {
                zero_checksum: false,
            },
            payload: b"\x12\x34 query".to_vec(),
            ..Self::tcp(src, sport, dst, dport)
        }
    }

    /// An `ICMPv6` message: type, code, checksum, then `body`. Hop limit 255
    /// for neighbor discovery (133-137), 1 for MLD (130-132, 143), else 64.
    #[must_use]
    pub fn icmp6(src: Ipv6Addr, dst: Ipv6Addr, ty: u8, code: u8, body: &[u8]) -> Self {
        Self {
            upper: Upper::Icmp6 { ty, code },
            payload: body.to_vec(),
            hop_limit: match ty {
                133..=137 => 255,
                130..=132 | 143 => 1,
                _ => 64,
            },
            ..Self::tcp(src, 0, dst, 0)
        }
    }

    /// An upper layer the builder does not know (ESP, no next header...): `bytes` as they are.
    #[must_use]
    pub fn opaque(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, bytes: &[u8]) -> Self {
        Self {
            upper: Upper::Opaque { next_header },
            payload: bytes.to_vec(),
            ..Self::tcp(src, 0, dst, 0)
        }
    }

    /// Makes it a TCP SYN without payload.
    #[must_use]
    pub fn syn(mut self) -> Self {
        self.tcp_flags(TCP_SYN);
        self.payload.clear();
        self
    }

    /// Makes it a TCP SYN-ACK without payload (a backend's answer).
    #[must_use]
    pub fn synack(mut self) -> Self {
        self.tcp_flags(TCP_SYN | TCP_ACK);
        self.payload.clear();
        self
    }

    /// Makes it a TCP ACK carrying the payload.
    #[must_use]
    pub fn ack(mut self) -> Self {
        self.tcp_flags(TCP_ACK);
        self
    }

    fn tcp_flags(&mut self, value: u8) {
        let Upper::Tcp { flags } = &mut self.upper else {
            panic!("TCP flags of a packet that is not TCP");
        };
        *flags = value;
    }

    /// Replaces the payload (the TCP or UDP data, the `ICMPv6` body, the opaque bytes).
    #[must_use]
    pub fn with_payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// Sends the UDP datagram with a checksum of 0 (invalid in IPv6).
    #[must_use]
    pub fn zero_udp_checksum(mut self) -> Self {
        let Upper::Udp { zero_checksum } = &mut self.upper else {
            panic!("a UDP checksum of a packet that is not UDP");
        };
        *zero_checksum = true;
        self
    }

    /// Appends an extension header to the chain (the first one follows the fixed header).
    #[must_use]
    pub fn ext(mut self, ext: Ext) -> Self {
        self.exts.push(ext);
        self
    }

    /// Sets the traffic class (DSCP and ECN).
    #[must_use]
    pub fn traffic_class(mut self, traffic_class: u8) -> Self {
        self.traffic_class = traffic_class;
        self
    }

    /// Sets the hop limit.
    #[must_use]
    pub fn hop_limit(mut self, hop_limit: u8) -> Self {
        self.hop_limit = hop_limit;
        self
    }

    /// Sets the flow label (20 bits).
    #[must_use]
    pub fn flow_label(mut self, flow_label: u32) -> Self {
        assert!(flow_label < 1 << 20, "a 20-bit flow label");
        self.flow_label = flow_label;
        self
    }

    /// The upper layer's next-header value.
    #[must_use]
    pub fn upper_next_header(&self) -> u8 {
        match self.upper {
            Upper::Tcp { .. } => NEXTHDR_TCP,
            Upper::Udp { .. } => NEXTHDR_UDP,
            Upper::Icmp6 { .. } => NEXTHDR_ICMPV6,
            Upper::Opaque { next_header } => next_header,
        }
    }

    /// The frame's bytes: Ethernet, the fixed header, the chain, the upper
    /// layer with its checksum over the pseudo-header. Behind a fragment
    /// header the checksum covers the upper-layer bytes present (the whole
    /// datagram, as this builder makes no other fragments).
    #[must_use]
    pub fn build(&self) -> Vec<u8> {
        self.frame(&self.exts, &self.upper_bytes())
    }

    /// The datagram cut as its sender would cut it into fragments of `size`
    /// upper-layer bytes (a multiple of 8; the last may be shorter): each
    /// frame is the chain given with the builder (the unfragmentable part),
    /// a fragment header of identification `id`, and its piece of the upper
    /// layer, whose checksum covers the whole datagram.
    #[must_use]
    pub fn fragments(&self, size: usize, id: u32) -> Vec<Vec<u8>> {
        assert!(
            size > 0 && size.is_multiple_of(8),
            "fragment payloads are multiples of 8 bytes"
        );
        let upper = self.upper_bytes();
        let pieces: Vec<&[u8]> = upper.chunks(size).collect();
        pieces
            .iter()
            .enumerate()
            .map(|(i, piece)| {
                let mut exts = self.exts.clone();
                exts.push(Ext::Fragment {
                    offset: u16::try_from(i * size / 8).expect("a 13-bit offset"),
                    more: i + 1 < pieces.len(),
                    id,
                });
                self.frame(&exts, piece)
            })
            .collect()
    }

    /// A frame of this packet's addresses carrying `exts` then `upper` (the
    /// upper layer's bytes, or a fragment's piece of them).
    fn frame(&self, exts: &[Ext], upper: &[u8]) -> Vec<u8> {
        let mut chain = Vec::new();
        for (i, ext) in exts.iter().enumerate() {
            let next = exts
                .get(i + 1)
                .map_or(self.upper_next_header(), Ext::next_header_value);
            chain.extend(ext.bytes(next, self.dst));
        }
        let first = exts
            .first()
            .map_or(self.upper_next_header(), Ext::next_header_value);
        let payload_len = u16::try_from(chain.len() + upper.len()).expect("not a jumbogram");
        let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x86, 0xdd];
        let word = 6 << 28 | u32::from(self.traffic_class) << 20 | self.flow_label;
        f.extend_from_slice(&word.to_be_bytes());
        f.extend_from_slice(&payload_len.to_be_bytes());
        f.extend_from_slice(&[first, self.hop_limit]);
        f.extend_from_slice(&self.src.octets());
        f.extend_from_slice(&self.dst.octets());
        f.extend(chain);
        f.extend(upper);
        f
    }

    /// The upper layer's header and payload, its checksum computed.
    fn upper_bytes(&self) -> Vec<u8> {
        let (mut l4, csum_at) = match self.upper {
            Upper::Tcp { flags } => {
                let ack: u32 = if flags & TCP_ACK == 0 { 0 } else { 0x0a0b_0c0d };
                let mut l4 = [self.sport.to_be_bytes(), self.dport.to_be_bytes()].concat();
                l4.extend(
                    0x0102_0304u32
                        .to_be_bytes()
                        .into_iter()
                        .chain(ack.to_be_bytes()),
                );
                // Data offset 5, flags, window 64240, checksum, urgent pointer.
                l4.extend([5 << 4, flags, 0xfa, 0xf0, 0, 0, 0, 0]);
                (l4, Some(16))
            }
            Upper::Udp { zero_checksum } => {
                let len = u16::try_from(8 + self.payload.len()).expect("a UDP length");
                let ports = [self.sport.to_be_bytes(), self.dport.to_be_bytes()];
                let l4 = [ports[0], ports[1], len.to_be_bytes(), [0, 0]].concat();
                (l4, (!zero_checksum).then_some(6))
            }
            Upper::Icmp6 { ty, code } => (vec![ty, code, 0, 0], Some(2)),
            Upper::Opaque { .. } => (vec![], None),
        };
        l4.extend_from_slice(&self.payload);
        if let Some(at) = csum_at {
            let mut c = upper_checksum(self.src, self.dst, self.upper_next_header(), &l4);
            if matches!(self.upper, Upper::Udp { .. }) && c == 0 {
                c = 0xffff;
            }
            l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        l4
    }
}

/// An `ICMPv6` frame (see [`Packet6::icmp6`]); add a chain with the builder.
#[must_use]
pub fn icmp6(src: Ipv6Addr, dst: Ipv6Addr, ty: u8, code: u8, body: &[u8]) -> Vec<u8> {
    Packet6::icmp6(src, dst, ty, code, body).build()
}

/// The Internet checksum of `l4` behind the IPv6 pseudo-header (0 when `l4` holds a valid one).
fn upper_checksum(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, l4: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40 + l4.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&u32::try_from(l4.len()).unwrap().to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, next_header]);
    pseudo.extend_from_slice(l4);
    checksum(&pseudo)
}

/// The upper layer of an IPv6 frame: (next-header value, offset in the
/// frame) after the hop-by-hop, routing, fragment, destination-options and
/// authentication headers; `None` if it is not IPv6 or ends inside a header.
#[must_use]
pub fn upper_layer(frame: &[u8]) -> Option<(u8, usize)> {
    if frame.len() < IP6_PAYLOAD_OFF || frame[12..14] != [0x86, 0xdd] || frame[IP6_OFF] >> 4 != 6 {
        return None;
    }
    let mut next = frame[IP6_OFF + 6];
    let mut off = IP6_PAYLOAD_OFF;
    loop {
        let len = match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                (usize::from(*frame.get(off + 1)?) + 1) * 8
            }
            NEXTHDR_FRAGMENT => 8,
            NEXTHDR_AUTH => (usize::from(*frame.get(off + 1)?) + 2) * 4,
            _ => return Some((next, off)),
        };
        if off + len > frame.len() {
            return None;
        }
        next = frame[off];
        off += len;
    }
}

/// Whether an IPv6 frame's TCP, UDP or `ICMPv6` checksum verifies over the
/// pseudo-header, the upper layer ending where `payload_len` says (a UDP
/// checksum of 0 does not: it is invalid in IPv6). False for any other
/// upper layer, or a frame shorter than its headers.
#[must_use]
pub fn checksums6_valid(frame: &[u8]) -> bool {
    let Some((next, off)) = upper_layer(frame) else {
        return false;
    };
    let end = IP6_PAYLOAD_OFF + usize::from(u16::from_be_bytes([frame[18], frame[19]]));
    let csum_at = match next {
        NEXTHDR_TCP => 16,
        NEXTHDR_UDP => 6,
        NEXTHDR_ICMPV6 => 2,
        _ => return false,
    };
    if end > frame.len() || off + csum_at + 2 > end {
        return false;
    }
    let l4 = &frame[off..end];
    if next == NEXTHDR_UDP && l4[6..8] == [0, 0] {
        return false;
    }
    upper_checksum(addr_at(frame, 22), addr_at(frame, 38), next, l4) == 0
}

fn addr_at(frame: &[u8], at: usize) -> Ipv6Addr {
    Ipv6Addr::from(<[u8; 16]>::try_from(&frame[at..at + 16]).unwrap())
}

/// The destination address and port of an IPv6 TCP or UDP frame.
#[must_use]
pub fn dst6_of(frame: &[u8]) -> (Ipv6Addr, u16) {
    let (_, off) = upper_layer(frame).expect("an IPv6 frame");
    (
        addr_at(frame, 38),
        u16::from_be_bytes([frame[off + 2], frame[off + 3]]),
    )
}

/// The source address and port of an IPv6 TCP or UDP frame.
#[must_use]
pub fn src6_of(frame: &[u8]) -> (Ipv6Addr, u16) {
    let (_, off) = upper_layer(frame).expect("an IPv6 frame");
    (
        addr_at(frame, 22),
        u16::from_be_bytes([frame[off], frame[off + 1]]),
    )
}

/// The slot Maglev picks for an IPv6 flow in a table of `size` slots,
/// under the packet tests' hash key (`packet::TEST_HASH_KEY`).
#[must_use]
pub fn maglev_slot6(
    src: Ipv6Addr,
    sport: u16,
    dst: Ipv6Addr,
    dport: u16,
    proto: u8,
    size: u32,
) -> usize {
    let hash = lb_common::flow_hash6(
        &crate::packet::TEST_HASH_KEY,
        &lb_common::maps6::ipv6_words(src.octets()),
        &lb_common::maps6::ipv6_words(dst.octets()),
        sport.to_be(),
        dport.to_be(),
        proto,
    );
    (hash % size) as usize
}

/// The first `len` bytes of an IPv6 frame, its `payload_len` made to match
/// (the frame cut short consistently, not a length past the frame).
#[must_use]
pub fn truncated6(frame: &[u8], len: usize) -> Vec<u8> {
    assert!(len >= IP6_PAYLOAD_OFF, "the fixed header stays whole");
    with_payload_len(&frame[..len], len - IP6_PAYLOAD_OFF)
}

/// An IPv6 frame with its `payload_len` field set to `len`.
#[must_use]
pub fn with_payload_len(frame: &[u8], len: usize) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[18..20].copy_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
    f
}

/// `frame` (Ethernet, IPv6) as a router forwards it: hop limit one less
/// (no checksum covers it; the Ethernet addresses as they were).
#[must_use]
pub fn forwarded6(frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[21] -= 1;
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
    const B: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);

    /// Six headers of 16 + 8 + 24 + 8 + 24 + 24 = 104 bytes.
    fn with_chain(p: Packet6) -> Packet6 {
        let frag = Ext::Fragment {
            offset: 0,
            more: true,
            id: 7,
        };
        [
            Ext::HopByHop { len8: 1 },
            Ext::DestOpts { len8: 0 },
            Ext::Routing { segments_left: 0 },
        ]
        .into_iter()
        .chain([frag, Ext::auth(), Ext::DestOpts { len8: 2 }])
        .fold(p, Packet6::ext)
    }

    fn payload_len(f: &[u8]) -> usize {
        usize::from(u16::from_be_bytes([f[18], f[19]]))
    }

    #[test]
    fn tcp_udp_icmp6_checksums_verify_with_and_without_a_chain() {
        let packets = [
            Packet6::tcp(A, 40000, B, 80).syn(),
            Packet6::tcp(A, 40000, B, 80).ack().with_payload(b"odd"),
            Packet6::udp(A, 40000, B, 53),
            Packet6::icmp6(A, B, 128, 0, &[0x12, 0x34, 0, 1, b'p']),
        ];
        for p in packets {
            for p in [p.clone(), with_chain(p)] {
                let f = p.build();
                assert!(checksums6_valid(&f), "{p:?}");
                let (next, off) = upper_layer(&f).unwrap();
                assert_eq!(next, p.upper_next_header());
                let mut broken = f.clone();
                broken[off + 4] ^= 0x40;
                assert!(!checksums6_valid(&broken), "a flipped bit: {p:?}");
            }
        }
        let zero = Packet6::udp(A, 1, B, 2).zero_udp_checksum().build();
        assert_eq!(zero[60..62], [0, 0]);
        assert!(!checksums6_valid(&zero), "a UDP checksum of 0 is invalid");
        let esp = Packet6::opaque(A, B, NEXTHDR_ESP, &[1; 16]).build();
        assert!(!checksums6_valid(&esp), "not checkable");
    }

    #[test]
    fn fixed_header_fields_and_payload_len() {
        let p = Packet6::tcp(A, 40000, B, 80)
            .syn()
            .traffic_class(0xb8)
            .flow_label(0x1_2345);
        let f = p.build();
        assert_eq!(f.len(), 14 + 40 + 20);
        assert_eq!(f[12..14], [0x86, 0xdd]);
        assert_eq!(f[14..18], [0x6b, 0x81, 0x23, 0x45], "version, class, label");
        assert_eq!((payload_len(&f), f[20], f[21]), (20, NEXTHDR_TCP, 64));
        assert_eq!((addr_at(&f, 22), addr_at(&f, 38)), (A, B));
        let f = with_chain(p).build();
        assert_eq!(payload_len(&f), 104 + 20);
        assert_eq!(f.len(), IP6_PAYLOAD_OFF + payload_len(&f));
        assert_eq!(icmp6(A, B, 135, 0, &[0; 20])[21], 255, "NDP hop limit");
        assert_eq!(icmp6(A, B, 143, 0, &[0; 4])[21], 1, "MLD hop limit");
        let cut = truncated6(&f, IP6_PAYLOAD_OFF + 10);
        assert_eq!((cut.len(), payload_len(&cut)), (IP6_PAYLOAD_OFF + 10, 10));
        assert_eq!(payload_len(&with_payload_len(&f, 0)), 0);
    }

    #[test]
    fn chain_next_headers_link_in_order() {
        let f = with_chain(Packet6::udp(A, 1, B, 2)).build();
        assert_eq!(f[20], NEXTHDR_HOP, "the fixed header names the first");
        // (offset after the fixed header, the header's next-header field)
        let expected = [
            (0, NEXTHDR_DEST),
            (16, NEXTHDR_ROUTING),
            (24, NEXTHDR_FRAGMENT),
            (48, NEXTHDR_AUTH),
            (56, NEXTHDR_DEST),
            (80, NEXTHDR_UDP),
        ];
        for (at, next) in expected {
            assert_eq!(f[IP6_PAYLOAD_OFF + at], next, "the header at {at}");
        }
        assert_eq!(upper_layer(&f), Some((NEXTHDR_UDP, IP6_PAYLOAD_OFF + 104)));
        assert_eq!(
            f[102..110],
            [NEXTHDR_AUTH, 0, 0, 1, 0, 0, 0, 7],
            "offset 0, more, id 7"
        );
        assert_eq!(
            f[78..86],
            [NEXTHDR_FRAGMENT, 2, 4, 0, 0, 0, 0, 0],
            "routing"
        );
        assert_eq!(f[86..102], B.octets(), "the segment");
        let later = Packet6::tcp(A, 1, B, 2).ext(Ext::Fragment {
            offset: 185,
            more: false,
            id: 9,
        });
        assert_eq!(later.build()[20..22], [NEXTHDR_FRAGMENT, 64]);
        assert_eq!(
            later.build()[54..62],
            [NEXTHDR_TCP, 0, 0x05, 0xc8, 0, 0, 0, 9]
        );
        let none = Packet6::opaque(A, B, NEXTHDR_NONE, &[])
            .ext(Ext::DestOpts { len8: 0 })
            .build();
        assert_eq!(
            (none[20], none[54], payload_len(&none)),
            (NEXTHDR_DEST, NEXTHDR_NONE, 8)
        );
    }

    #[test]
    fn options_are_padded_to_their_length() {
        let f = Packet6::icmp6(A, B, 143, 0, &[0; 4])
            .ext(Ext::router_alert())
            .build();
        assert_eq!(f[54..62], [NEXTHDR_ICMPV6, 0, 5, 2, 0, 0, 1, 0]);
        assert!(checksums6_valid(&f));
        let f = Packet6::tcp(A, 1, B, 2).ext(Ext::jumbo(70_000)).build();
        assert_eq!(f[54..62], [NEXTHDR_TCP, 0, 0xc2, 4, 0, 1, 0x11, 0x70]);
        for len8 in [0, 1, 20, 31, 32, 200, 255] {
            let f = Packet6::tcp(A, 1, B, 2).ext(Ext::HopByHop { len8 }).build();
            let len = (usize::from(len8) + 1) * 8;
            assert_eq!(upper_layer(&f), Some((NEXTHDR_TCP, IP6_PAYLOAD_OFF + len)));
            // Pad1 and PadN options tile the header exactly.
            let mut at = 2;
            while at < len {
                let opt = &f[IP6_PAYLOAD_OFF + at..];
                assert!(opt[0] <= 1, "padding only (len8 {len8})");
                at += if opt[0] == 0 {
                    1
                } else {
                    usize::from(opt[1]) + 2
                };
            }
            assert_eq!(at, len, "len8 {len8}");
        }
    }

    /// Checksums computed independently (a few lines of Python).
    #[test]
    fn known_vectors() {
        let (a, b) = ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap());
        let f = Packet6::udp(a, 40000, b, 53).build();
        assert_eq!(f[60..62], [0x4e, 0xd0], "UDP");
        let f = Packet6::tcp(A, 40000, B, 80).syn().build();
        assert_eq!(f[70..72], [0xe8, 0xeb], "TCP SYN");
        let f = icmp6(A, B, 128, 0, b"\x12\x34\x00\x01ping");
        assert_eq!(f[56..58], [0x63, 0x43], "echo request");
    }
}
