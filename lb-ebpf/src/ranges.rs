//! `loadBalancerSourceRanges`: a load-balancer IP restricted to client
//! ranges (its entry flagged `SERVICE_F_SOURCE_RANGES`) accepts a new
//! connection only from a client address that matches one of its ranges in
//! `SOURCE_RANGES`, an LPM trie keyed by (service id, client address): one
//! lookup however many ranges a frontend has. kube-proxy's firewall chain
//! checks new connections only, so a tracked flow is never checked again
//! (its conntrack entry decides before the frontend is looked up).

use aya_ebpf::maps::lpm_trie::Key;
use lb_common::{ServiceEntry, SourceRangeKey, SERVICE_F_SOURCE_RANGES, SOURCE_RANGE_KEY_BITS};

use crate::maps::SOURCE_RANGES;

/// Whether a new connection from `client` (network byte order) may use the
/// frontend `svc`: always, unless the frontend has source ranges and none
/// of them holds the client.
#[inline(always)]
pub fn admits(svc: &ServiceEntry, client: u32) -> bool {
    if svc.flags & SERVICE_F_SOURCE_RANGES == 0 {
        return true;
    }
    let key = Key::new(
        SOURCE_RANGE_KEY_BITS,
        SourceRangeKey {
            service_id: svc.id.to_be(),
            client_addr: client,
        },
    );
    SOURCE_RANGES.get(&key).is_some()
}
