//! SipHash-1-3 of a flow's 5-tuple under a secret 128-bit key: the flow hash
//! that picks a Maglev slot. A sender who does not know the key cannot choose
//! source ports that land on a backend of its choosing, while every node of a
//! cluster that shares the key (`--hash-seed`) picks the same backend.
//!
//! The 13 message bytes are the tuple as it sits in a [`crate::FlowKey`]
//! (addresses and ports in network byte order, then the protocol), hashed as
//! the SipHash paper specifies (little-endian words, length in the last byte).

/// The secret key of the flow hash: two 64-bit words.
pub type HashKey = [u64; 2];

/// Bytes hashed per flow: source and destination address, ports, protocol.
const MESSAGE_LEN: u64 = 13;
/// Bytes hashed per IPv6 flow: the same fields, addresses of 16 bytes.
const MESSAGE6_LEN: u64 = 37;

#[inline(always)]
const fn round(v: [u64; 4]) -> [u64; 4] {
    let [mut v0, mut v1, mut v2, mut v3] = v;
    v0 = v0.wrapping_add(v1);
    v1 = v1.rotate_left(13);
    v1 ^= v0;
    v0 = v0.rotate_left(32);
    v2 = v2.wrapping_add(v3);
    v3 = v3.rotate_left(16);
    v3 ^= v2;
    v0 = v0.wrapping_add(v3);
    v3 = v3.rotate_left(21);
    v3 ^= v0;
    v2 = v2.wrapping_add(v1);
    v1 = v1.rotate_left(17);
    v1 ^= v2;
    v2 = v2.rotate_left(32);
    [v0, v1, v2, v3]
}

/// One compression step of SipHash-1-3: absorb the word `m`.
#[inline(always)]
const fn absorb(v: [u64; 4], m: u64) -> [u64; 4] {
    let [v0, v1, v2, v3] = v;
    let [v0, v1, v2, v3] = round([v0, v1, v2, v3 ^ m]);
    [v0 ^ m, v1, v2, v3]
}

/// SipHash's initial state under `key`.
#[inline(always)]
const fn init(key: &HashKey) -> [u64; 4] {
    [
        key[0] ^ 0x736f_6d65_7073_6575,
        key[1] ^ 0x646f_7261_6e64_6f6d,
        key[0] ^ 0x6c79_6765_6e65_7261,
        key[1] ^ 0x7465_6462_7974_6573,
    ]
}

/// SipHash-1-3's finalization: three rounds, the state folded.
#[inline(always)]
const fn finish(mut v: [u64; 4]) -> u64 {
    v[2] ^= 0xff;
    v = round(round(round(v)));
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// SipHash-1-3 of the 13-byte tuple under `key`.
///
/// `src_addr`, `dst_addr`, `src_port` and `dst_port` are raw network-order
/// words as loaded from the packet; they are hashed as their memory bytes.
#[inline(always)]
#[must_use]
pub const fn siphash13_tuple(
    key: &HashKey,
    src_addr: u32,
    dst_addr: u32,
    src_port: u16,
    dst_port: u16,
    proto: u8,
) -> u64 {
    // Memory bytes of the raw words, read as little-endian, are the words
    // themselves on a little-endian machine (BPF and x86-64 both are).
    let m0 = (src_addr as u64) | ((dst_addr as u64) << 32);
    let m1 = (src_port as u64)
        | ((dst_port as u64) << 16)
        | ((proto as u64) << 32)
        | (MESSAGE_LEN << 56);
    let mut v = init(key);
    v = absorb(v, m0);
    v = absorb(v, m1);
    finish(v)
}

/// A 64-bit hash folded into the 32 bits a Maglev slot is picked by.
#[inline(always)]
const fn fold(h: u64) -> u32 {
    // Both halves fold into the 32 bits used.
    #[allow(clippy::cast_possible_truncation)]
    let folded = (h ^ (h >> 32)) as u32;
    folded
}

/// The flow hash of a 5-tuple under `key`: what picks a Maglev slot.
#[inline(always)]
#[must_use]
pub const fn flow_hash(
    key: &HashKey,
    src_addr: u32,
    dst_addr: u32,
    src_port: u16,
    dst_port: u16,
    proto: u8,
) -> u32 {
    fold(siphash13_tuple(
        key, src_addr, dst_addr, src_port, dst_port, proto,
    ))
}

/// SipHash-1-3 of the 37-byte IPv6 tuple under `key` (addresses as
/// `maps6::ipv6_words` stores them), hashed as [`siphash13_tuple`] hashes
/// IPv4's: the tuple's memory bytes, in order.
#[inline(always)]
#[must_use]
pub const fn siphash13_tuple6(
    key: &HashKey,
    src_addr: &[u32; 4],
    dst_addr: &[u32; 4],
    src_port: u16,
    dst_port: u16,
    proto: u8,
) -> u64 {
    let mut v = init(key);
    // Four full words of addresses (little-endian memory, as above).
    v = absorb(v, (src_addr[0] as u64) | ((src_addr[1] as u64) << 32));
    v = absorb(v, (src_addr[2] as u64) | ((src_addr[3] as u64) << 32));
    v = absorb(v, (dst_addr[0] as u64) | ((dst_addr[1] as u64) << 32));
    v = absorb(v, (dst_addr[2] as u64) | ((dst_addr[3] as u64) << 32));
    let last = (src_port as u64)
        | ((dst_port as u64) << 16)
        | ((proto as u64) << 32)
        | (MESSAGE6_LEN << 56);
    v = absorb(v, last);
    finish(v)
}

/// The flow hash of an IPv6 5-tuple under `key`: what picks a Maglev slot
/// of an IPv6 frontend's table.
#[inline(always)]
#[must_use]
pub const fn flow_hash6(
    key: &HashKey,
    src_addr: &[u32; 4],
    dst_addr: &[u32; 4],
    src_port: u16,
    dst_port: u16,
    proto: u8,
) -> u32 {
    fold(siphash13_tuple6(
        key, src_addr, dst_addr, src_port, dst_port, proto,
    ))
}

#[cfg(test)]
mod tests {
    extern crate std;

    use core::hash::Hasher;

    use super::*;

    fn reference(key: &HashKey, bytes: &[u8]) -> u64 {
        #[allow(deprecated)]
        let mut h = siphasher::sip::SipHasher13::new_with_keys(key[0], key[1]);
        h.write(bytes);
        h.finish()
    }

    #[test]
    fn matches_the_reference_siphash13_on_the_tuple_bytes() {
        let keys: [HashKey; 3] = [
            [0, 0],
            [0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908],
            [0xdead_beef_0123_4567, 0x89ab_cdef_fedc_ba98],
        ];
        for key in &keys {
            for (src, dst, sport, dport, proto) in [
                (0x0a00_0001u32, 0x0a60_000au32, 40000u16, 80u16, 6u8),
                (0xc0a8_320a, 0x0a60_000a, 1, 53, 17),
                (u32::MAX, 0, u16::MAX, 0, 255),
            ] {
                let (src, dst, sport, dport) =
                    (src.to_be(), dst.to_be(), sport.to_be(), dport.to_be());
                let mut bytes = std::vec::Vec::new();
                bytes.extend_from_slice(&src.to_ne_bytes());
                bytes.extend_from_slice(&dst.to_ne_bytes());
                bytes.extend_from_slice(&sport.to_ne_bytes());
                bytes.extend_from_slice(&dport.to_ne_bytes());
                bytes.push(proto);
                assert_eq!(
                    siphash13_tuple(key, src, dst, sport, dport, proto),
                    reference(key, &bytes)
                );
            }
        }
    }

    #[test]
    fn another_key_moves_flows() {
        let a = [1, 2];
        let b = [1, 3];
        let moved = (0..1000u16)
            .filter(|&p| flow_hash(&a, 1, 2, p, 80, 6) % 7 != flow_hash(&b, 1, 2, p, 80, 6) % 7)
            .count();
        assert!(moved > 700, "only {moved} of 1000 flows hash elsewhere");
    }

    #[test]
    fn spreads_ports_evenly() {
        let key = [0x1234, 0x5678];
        let mut buckets = [0u32; 16];
        for port in 0..16_000u16 {
            buckets[(flow_hash(&key, 0x0a00_0001, 0x0a60_000a, port, 80, 6) % 16) as usize] += 1;
        }
        for b in buckets {
            assert!((900..1100).contains(&b), "bucket {b} is far from 1000");
        }
    }

    #[test]
    fn the_ipv6_hash_matches_the_reference_siphash13_on_the_tuple_bytes() {
        let keys: [HashKey; 2] = [[0, 0], [0xdead_beef_0123_4567, 0x89ab_cdef_fedc_ba98]];
        let addrs: [[u32; 4]; 3] = [
            [0xfd00_0050u32.to_be(), 0, 0, 0x10u32.to_be()],
            [0xfd00_0096u32.to_be(), 0, 0, 0x0a00_0001u32.to_be()],
            [u32::MAX, 1, 2, 3],
        ];
        for key in &keys {
            for (src, dst) in [(addrs[0], addrs[1]), (addrs[2], addrs[0])] {
                for (sport, dport, proto) in [(40000u16, 80u16, 6u8), (u16::MAX, 0, 255)] {
                    let (sport, dport) = (sport.to_be(), dport.to_be());
                    let mut bytes = std::vec::Vec::new();
                    for w in src.iter().chain(&dst) {
                        bytes.extend_from_slice(&w.to_ne_bytes());
                    }
                    bytes.extend_from_slice(&sport.to_ne_bytes());
                    bytes.extend_from_slice(&dport.to_ne_bytes());
                    bytes.push(proto);
                    assert_eq!(
                        siphash13_tuple6(key, &src, &dst, sport, dport, proto),
                        reference(key, &bytes)
                    );
                }
            }
        }
    }

    #[test]
    fn the_ipv6_hash_spreads_ports_evenly() {
        let key = [0x1234, 0x5678];
        let (src, dst) = ([1, 2, 3, 4], [5, 6, 7, 8]);
        let mut buckets = [0u32; 16];
        for port in 0..16_000u16 {
            buckets[(flow_hash6(&key, &src, &dst, port, 80, 6) % 16) as usize] += 1;
        }
        for b in buckets {
            assert!((900..1100).contains(&b), "bucket {b} is far from 1000");
        }
    }
}
