//! The flow hash that picks a Maglev slot, shared so tests can predict the kernel's choice.

/// Seed of the flow hash (any odd constant; fixed so every node hashes alike).
pub const FLOW_HASH_SEED: u32 = 0x9e37_79b1;

#[inline(always)]
const fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// Hash of a flow's 5-tuple (raw network-order words as loaded from the packet).
#[inline(always)]
#[must_use]
pub const fn flow_hash_of(
    src_addr: u32,
    dst_addr: u32,
    src_port: u16,
    dst_port: u16,
    proto: u8,
) -> u32 {
    let mut h = FLOW_HASH_SEED;
    h = mix(h ^ src_addr);
    h = mix(h ^ dst_addr);
    h = mix(h ^ (((src_port as u32) << 16) | dst_port as u32));
    mix(h ^ proto as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_spreads_ports_evenly() {
        let mut buckets = [0u32; 16];
        for port in 0..16_000u16 {
            let h = flow_hash_of(0x0a00_0001, 0x0a60_000a, port, 80, 6);
            buckets[(h % 16) as usize] += 1;
        }
        for b in buckets {
            assert!((900..1100).contains(&b), "bucket {b} is far from 1000");
        }
    }
}
