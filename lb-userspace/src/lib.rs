//! The agent's library: everything `lb-agent` does, split into pure deciding
//! code (manifests, model, selection, Maglev, plans) and thin I/O layers.

pub mod agent;
pub mod applied;
pub mod claims;
pub mod conntrack;
pub mod datapath;
pub mod desired;
pub mod filter;
pub mod flows;
pub mod gone;
pub mod health;
pub mod ident;
pub mod maglev;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod netlink;
pub mod node_ports;
pub mod plan;
pub mod preflight;
pub mod problem;
pub mod reconcile;
pub mod report;
pub mod select;
pub mod slab;
pub mod source;
pub mod source_ranges;
pub mod status;
