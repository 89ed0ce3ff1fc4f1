//! `loadBalancerSourceRanges` for IPv6 frontends: [`crate::ranges`] over
//! `SOURCE_RANGES6`, keyed by (service id, client address).

use aya_ebpf::maps::lpm_trie::Key;
use lb_common::{
    maps6::{SourceRangeKey6, SOURCE_RANGE_KEY6_BITS},
    ServiceEntry, SERVICE_F_SOURCE_RANGES,
};

use crate::maps6::SOURCE_RANGES6;

/// Whether a new connection from `client` may use the frontend `svc`:
/// always, unless the frontend has source ranges and none holds the client.
#[inline(always)]
pub fn admits(svc: &ServiceEntry, client: [u32; 4]) -> bool {
    if svc.flags & SERVICE_F_SOURCE_RANGES == 0 {
        return true;
    }
    let key = Key::new(
        SOURCE_RANGE_KEY6_BITS,
        SourceRangeKey6 {
            service_id: svc.id.to_be(),
            client_addr: client,
        },
    );
    SOURCE_RANGES6.get(&key).is_some()
}
