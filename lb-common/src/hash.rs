//! The pass-through filter's bit hash, shared so the agent sets the bits the
//! kernel tests. (The flow hash that picks Maglev slots is keyed: see
//! [`crate::siphash`].)

/// Seed of [`filter_bit`] for frontends (destination address and port).
pub const FILTER_SEED_FRONTEND: u64 = 0x3c6e_f372_fe94_f82b;
/// Seed of [`filter_bit`] for backends (source address and port of replies).
pub const FILTER_SEED_BACKEND: u64 = 0xa54f_f53a_5f1d_36f1;

/// Seed of [`filter_bit6`] for IPv6 frontends.
pub const FILTER_SEED_FRONTEND6: u64 = 0x510e_527f_ade6_82d1;
/// Seed of [`filter_bit6`] for IPv6 backends.
pub const FILTER_SEED_BACKEND6: u64 = 0x9b05_688c_2b3e_6c1f;

/// Multiplier of [`filter_bit`]: 2^64 over the golden ratio, odd.
const FIBONACCI: u64 = 0x9e37_79b9_7f4a_7c15;

/// The bit of the pass-through filter (`FILTER`) that an address, port and
/// protocol (raw network-order words) set: a frontend with
/// [`FILTER_SEED_FRONTEND`], a backend with [`FILTER_SEED_BACKEND`].
///
/// One multiply (Fibonacci hashing, the product's top bits): the per-packet
/// cost is its latency, so a cheap hash is what makes the filter pay.
#[inline(always)]
#[must_use]
pub const fn filter_bit(seed: u64, addr: u32, port: u16, proto: u8) -> u32 {
    // The address in host order, so that consecutive addresses differ in
    // low bits, whose changes reach every bit of the product's top.
    let x = ((u32::from_be(addr) as u64) << 32) | ((port as u64) << 8) | proto as u64;
    // The top FILTER_BITS_LOG2 bits of a u64 fit a u32.
    #[allow(clippy::cast_possible_truncation)]
    let bit = ((x ^ seed).wrapping_mul(FIBONACCI) >> (64 - crate::maps::FILTER_BITS_LOG2)) as u32;
    bit
}

/// The filter bit of an IPv6 address (words as `maps6::ipv6_words` stores
/// them), port and protocol: [`filter_bit`] over the address's four words
/// folded by XOR, with the IPv6 seeds, so the kernel pays three XORs more
/// than for IPv4. Folding loses no spread for Service addresses, which
/// differ in their last words.
#[inline(always)]
#[must_use]
pub const fn filter_bit6(seed: u64, addr: [u32; 4], port: u16, proto: u8) -> u32 {
    filter_bit(seed, addr[0] ^ addr[1] ^ addr[2] ^ addr[3], port, proto)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_bits_of_consecutive_service_addresses_spread() {
        // 4,096 frontends 10.96.0.1.. on port 80 over 2^21 bits: few share a bit.
        let mut bits: [u32; 4096] = [0; 4096];
        for (i, bit) in (0u32..).zip(bits.iter_mut()) {
            *bit = filter_bit(
                FILTER_SEED_FRONTEND,
                (0x0a60_0001 + i).to_be(),
                80u16.to_be(),
                6,
            );
        }
        bits.sort_unstable();
        let mut distinct = 1;
        for pair in bits.windows(2) {
            if pair[0] != pair[1] {
                distinct += 1;
            }
        }
        assert!(distinct > 4080, "only {distinct} distinct bits");
        // The same frontend seen as a backend lands elsewhere.
        let a = filter_bit(FILTER_SEED_FRONTEND, 0x0a60_0001, 80, 6);
        let b = filter_bit(FILTER_SEED_BACKEND, 0x0a60_0001, 80, 6);
        assert_ne!(a, b);
        assert!(a < crate::maps::FILTER_BITS && b < crate::maps::FILTER_BITS);
    }

    #[test]
    fn filter_bits6_of_consecutive_service_addresses_spread() {
        // 4,096 frontends fd00:96::1.. on port 80: few share a bit, and
        // the same words as an IPv4-only fold land elsewhere than IPv4's.
        let mut bits: [u32; 4096] = [0; 4096];
        for (i, bit) in (0u32..).zip(bits.iter_mut()) {
            let addr = [0xfd00_0096u32.to_be(), 0, 0, (1 + i).to_be()];
            *bit = filter_bit6(FILTER_SEED_FRONTEND6, addr, 80u16.to_be(), 6);
        }
        bits.sort_unstable();
        let distinct = 1 + bits.windows(2).filter(|p| p[0] != p[1]).count();
        assert!(distinct > 4080, "only {distinct} distinct bits");
        let v4 = filter_bit(FILTER_SEED_FRONTEND, 0x0a60_0001, 80, 6);
        let v6 = filter_bit6(FILTER_SEED_FRONTEND6, [0x0a60_0001, 0, 0, 0], 80, 6);
        assert_ne!(v4, v6);
    }
}
