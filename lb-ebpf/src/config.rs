//! The node configuration the agent writes (`CONFIG`, index 0): the node
//! address, the SNAT pool, the flow-hash key and the conntrack timeouts.

use lb_common::NodeConfig;

use crate::maps::CONFIG;

/// The node configuration (an array slot: always present once loaded).
#[inline(always)]
pub fn get() -> Option<&'static NodeConfig> {
    CONFIG.get(0)
}

/// Whether `port` (network order) is in the configured SNAT pool.
#[inline(always)]
pub fn in_snat_pool(cfg: &NodeConfig, port: u16) -> bool {
    let port = u16::from_be(port);
    port >= cfg.snat_port_min && port <= cfg.snat_port_max
}
