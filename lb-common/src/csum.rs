//! Incremental Internet checksum updates (RFC 1624), shared by the XDP program
//! and the tests. Values are the raw 16/32-bit words as loaded from the packet;
//! ones'-complement sums do not depend on byte order as long as it is consistent.

/// Folds a 32-bit ones'-complement accumulator into 16 bits.
#[inline(always)]
#[must_use]
pub const fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    // Two folds leave at most 16 significant bits: the cast is exact.
    #[allow(clippy::cast_possible_truncation)]
    let folded = sum as u16;
    folded
}

/// New checksum after a 16-bit word of the covered data changed from `old` to `new`.
#[inline(always)]
#[must_use]
pub const fn replace16(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check) as u32 + (!old) as u32 + new as u32;
    !fold(sum)
}

/// New checksum after a 32-bit word of the covered data changed from `old` to `new`.
#[inline(always)]
#[must_use]
pub const fn replace32(check: u16, old: u32, new: u32) -> u16 {
    let old = !old;
    let sum = (!check) as u32 + (old & 0xffff) + (old >> 16) + (new & 0xffff) + (new >> 16);
    !fold(sum)
}

/// UDP flavour of [`replace16`]: a zero checksum means "none" and stays zero,
/// and a computed zero is sent as `0xffff` (RFC 768).
#[inline(always)]
#[must_use]
pub const fn udp_replace16(check: u16, old: u16, new: u16) -> u16 {
    if check == 0 {
        return 0;
    }
    nonzero(replace16(check, old, new))
}

/// UDP flavour of [`replace32`]; see [`udp_replace16`].
#[inline(always)]
#[must_use]
pub const fn udp_replace32(check: u16, old: u32, new: u32) -> u16 {
    if check == 0 {
        return 0;
    }
    nonzero(replace32(check, old, new))
}

/// New checksum after a 128-bit field of the covered data (an IPv6
/// address, as `maps6::ipv6_words` stores it) changed from `old` to `new`:
/// the IPv6 pseudo-header's share of a rewrite, IPv6 having no header
/// checksum of its own.
#[inline(always)]
#[must_use]
pub const fn replace128(check: u16, old: &[u32; 4], new: &[u32; 4]) -> u16 {
    let mut sum = (!check) as u32;
    let mut i = 0;
    while i < 4 {
        let o = !old[i];
        // Eight 16-bit halves at most 0xffff each, plus the check: no overflow.
        sum += (o & 0xffff) + (o >> 16) + (new[i] & 0xffff) + (new[i] >> 16);
        i += 1;
    }
    !fold(sum)
}

/// UDP over IPv6 flavour of [`replace128`]: a computed zero is sent as
/// `0xffff`. (An IPv6 UDP checksum of 0 is invalid, not "none": the
/// programs never translate such a datagram, so there is no zero to keep.)
#[inline(always)]
#[must_use]
pub const fn udp6_replace128(check: u16, old: &[u32; 4], new: &[u32; 4]) -> u16 {
    nonzero(replace128(check, old, new))
}

/// UDP over IPv6 flavour of [`replace16`]; see [`udp6_replace128`].
#[inline(always)]
#[must_use]
pub const fn udp6_replace16(check: u16, old: u16, new: u16) -> u16 {
    nonzero(replace16(check, old, new))
}

#[inline(always)]
const fn nonzero(check: u16) -> u16 {
    if check == 0 {
        0xffff
    } else {
        check
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    /// Full checksum over `data`, computed from scratch (big-endian words).
    fn full(data: &[u8]) -> u16 {
        let mut sum: u64 = 0;
        for chunk in data.chunks(2) {
            let hi = u64::from(chunk[0]) << 8;
            let lo = chunk.get(1).copied().map_or(0, u64::from);
            sum += hi | lo;
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(u16::try_from(sum).unwrap())
    }

    /// Deterministic pseudo-random bytes (xorshift), so the test needs no crate.
    fn bytes(seed: &mut u64, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                (*seed >> 24).to_le_bytes()[0]
            })
            .collect()
    }

    /// Stores a checksum (big-endian value) as the native-endian raw word used by the kernel.
    fn raw(check_be: u16) -> u16 {
        u16::from_ne_bytes(check_be.to_be_bytes())
    }

    #[test]
    fn incremental_matches_full_recomputation() {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        for round in 0..2000 {
            let len = 20 + (round % 40) * 2;
            let mut data = bytes(&mut seed, len);
            // Checksum field at bytes 10..12, zero while computing.
            data[10] = 0;
            data[11] = 0;
            let check = full(&data);
            data[10..12].copy_from_slice(&check.to_be_bytes());
            assert_eq!(full(&data), 0, "a valid checksum sums to zero");

            // Replace a 32-bit word at 12..16 and a 16-bit word at 16..18.
            let old32 = u32::from_ne_bytes(data[12..16].try_into().unwrap());
            let new32 = u32::from_ne_bytes(bytes(&mut seed, 4).try_into().unwrap());
            let old16 = u16::from_ne_bytes(data[16..18].try_into().unwrap());
            let new16 = u16::from_ne_bytes(bytes(&mut seed, 2).try_into().unwrap());
            let mut c = u16::from_ne_bytes(data[10..12].try_into().unwrap());
            c = replace32(c, old32, new32);
            c = replace16(c, old16, new16);
            data[12..16].copy_from_slice(&new32.to_ne_bytes());
            data[16..18].copy_from_slice(&new16.to_ne_bytes());
            data[10..12].copy_from_slice(&c.to_ne_bytes());

            let mut zeroed = data.clone();
            zeroed[10] = 0;
            zeroed[11] = 0;
            let expect = full(&zeroed);
            // 0x0000 and 0xffff are the same value in ones' complement.
            let got = u16::from_be_bytes(c.to_ne_bytes());
            assert!(
                got == expect || (got == 0xffff && expect == 0) || (got == 0 && expect == 0xffff),
                "round {round}: incremental {got:#06x} != full {expect:#06x}"
            );
            assert!(full(&data) == 0 || full(&data) == 0xffff);
        }
    }

    #[test]
    fn udp_zero_checksum_stays_zero() {
        assert_eq!(udp_replace32(0, 0x0102_0304, 0x0a0b_0c0d), 0);
        assert_eq!(udp_replace16(0, 80, 8080), 0);
    }

    #[test]
    fn udp_computed_zero_becomes_all_ones() {
        // Find an update whose ones'-complement result is 0x0000: UDP must send 0xffff.
        let check = raw(0x1234);
        let new = (0..=u16::MAX)
            .find(|&n| replace16(check, 0, n) == 0)
            .expect("some update folds to zero");
        assert_eq!(udp_replace16(check, 0, new), 0xffff);
        assert_eq!(udp_replace32(check, 0, u32::from(new)), 0xffff);
    }

    #[test]
    fn a_128_bit_replacement_matches_full_recomputation() {
        let mut seed = 0x2545_f491_4f6c_dd1d;
        for round in 0..2000 {
            // Checksum at 0..2, a 16-byte address at 8..24 (4-byte aligned).
            let mut data = bytes(&mut seed, 40 + (round % 20) * 2);
            data[0] = 0;
            data[1] = 0;
            let check = full(&data);
            data[0..2].copy_from_slice(&check.to_be_bytes());
            let word = |d: &[u8], i: usize| {
                u32::from_ne_bytes(d[8 + 4 * i..12 + 4 * i].try_into().unwrap())
            };
            let old: [u32; 4] = core::array::from_fn(|i| word(&data, i));
            let fresh = bytes(&mut seed, 16);
            let new: [u32; 4] = core::array::from_fn(|i| {
                u32::from_ne_bytes(fresh[4 * i..4 * i + 4].try_into().unwrap())
            });
            let c = replace128(u16::from_ne_bytes([data[0], data[1]]), &old, &new);
            data[8..24].copy_from_slice(&fresh);
            data[0..2].copy_from_slice(&c.to_ne_bytes());
            let sum = full(&data);
            assert!(sum == 0 || sum == 0xffff, "round {round}: {sum:#06x}");
            // Replacing an address by itself changes nothing (but ±0).
            let same = replace128(c, &new, &new);
            assert!(same == c || (same == 0xffff && c == 0) || (same == 0 && c == 0xffff));
        }
    }

    #[test]
    fn udp6_never_writes_zero() {
        let check = raw(0x1234);
        let new = (0..=u16::MAX)
            .find(|&n| replace16(check, 0, n) == 0)
            .expect("some update folds to zero");
        assert_eq!(udp6_replace16(check, 0, new), 0xffff);
        assert_eq!(
            udp6_replace128(check, &[0; 4], &[0, 0, 0, u32::from(new)]),
            0xffff
        );
    }
}
