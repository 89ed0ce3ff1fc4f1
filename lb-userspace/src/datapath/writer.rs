//! Applies a plan's map operations in order.

use anyhow::{Context, Result};
use aya::maps::lpm_trie::Key;
use lb_common::{
    maps6::{ipv6_octets, ipv6_words, Backend6, SourceRangeKey6},
    Backend, ServiceLabel, SourceRangeKey, SERVICE_LABEL_LEN, SOURCE_RANGE_ID_BITS,
};

use super::maps::Maps;
use crate::{
    desired::{SourceRange, SourceRangeV6},
    plan::MapOp,
};

impl Maps {
    /// Applies `ops` in order. Stops at the first failure, so a table is never
    /// published before its backends, nor a backend cleared before its table
    /// is unpublished.
    pub fn apply(&mut self, ops: &[MapOp]) -> Result<()> {
        for op in ops {
            match op {
                MapOp::SetBackend(id, backend) => self
                    .backends
                    .set(*id, backend, 0)
                    .with_context(|| format!("writing backend {id}"))?,
                MapOp::SetTable { offset, slots } => self.slab.write(*offset, slots)?,
                MapOp::SetService(key, entry) => self
                    .services
                    .insert(key, entry, 0)
                    .with_context(|| format!("writing service {key:?}"))?,
                MapOp::DeleteService(key) => self
                    .services
                    .remove(key)
                    .with_context(|| format!("deleting service {key:?}"))?,
                MapOp::ClearBackend(id) => self
                    .backends
                    .set(*id, Backend::default(), 0)
                    .with_context(|| format!("clearing backend {id}"))?,
                MapOp::SetLabel(id, label) => self
                    .labels
                    .insert(id, encode_label(label), 0)
                    .with_context(|| format!("writing the label of service {id}"))?,
                // A service id's label and counters end together (the id may
                // be reused later); a missing entry is fine.
                MapOp::SetFilterWord(index, bits) => self.filter.set(*index, *bits)?,
                MapOp::SetSourceRange(id, range) => self
                    .source_ranges
                    .insert(&source_range_key(*id, *range), 1, 0)
                    .with_context(|| format!("writing source range {range} of service {id}"))?,
                MapOp::DeleteSourceRange(id, range) => self
                    .source_ranges
                    .remove(&source_range_key(*id, *range))
                    .with_context(|| format!("deleting source range {range} of service {id}"))?,
                MapOp::SetInternalTable(id, table) => self
                    .internal_tables
                    .set(*id, table, 0)
                    .with_context(|| format!("writing the in-cluster table of service {id}"))?,
                MapOp::SetNodePortAddr(addr) => self
                    .node_port_addrs
                    .insert(u32::from_ne_bytes(addr.octets()), 1, 0)
                    .with_context(|| format!("adding node-port address {addr}"))?,
                MapOp::DeleteNodePortAddr(addr) => {
                    // Already gone is fine.
                    let _ = self
                        .node_port_addrs
                        .remove(&u32::from_ne_bytes(addr.octets()));
                }
                MapOp::SetBackend6(id, backend) => self
                    .backends6
                    .set(*id, backend, 0)
                    .with_context(|| format!("writing IPv6 backend {id}"))?,
                MapOp::SetService6(key, entry) => self
                    .services6
                    .insert(key, entry, 0)
                    .with_context(|| format!("writing IPv6 service {key:?}"))?,
                MapOp::DeleteService6(key) => self
                    .services6
                    .remove(key)
                    .with_context(|| format!("deleting IPv6 service {key:?}"))?,
                MapOp::ClearBackend6(id) => self
                    .backends6
                    .set(*id, Backend6::default(), 0)
                    .with_context(|| format!("clearing IPv6 backend {id}"))?,
                MapOp::SetNodePortAddr6(addr) => self
                    .node_port_addrs6
                    .insert(ipv6_words(addr.octets()), 1, 0)
                    .with_context(|| format!("adding node-port address {addr}"))?,
                MapOp::DeleteNodePortAddr6(addr) => {
                    // Already gone is fine.
                    let _ = self.node_port_addrs6.remove(&ipv6_words(addr.octets()));
                }
                MapOp::SetSourceRange6(id, range) => self
                    .source_ranges6
                    .insert(&source_range_key6(*id, *range), 1, 0)
                    .with_context(|| format!("writing source range {range} of service {id}"))?,
                MapOp::DeleteSourceRange6(id, range) => self
                    .source_ranges6
                    .remove(&source_range_key6(*id, *range))
                    .with_context(|| format!("deleting source range {range} of service {id}"))?,
                MapOp::DeleteLabel(id) => {
                    let _ = self.labels.remove(id);
                    self.clear_service_stats(*id)
                        .with_context(|| format!("clearing the counters of service {id}"))?;
                }
            }
        }
        Ok(())
    }
}

/// The `SOURCE_RANGES` key of `range` for service id `service_id`.
#[must_use]
pub fn source_range_key(service_id: u32, range: SourceRange) -> Key<SourceRangeKey> {
    Key::new(
        SOURCE_RANGE_ID_BITS + u32::from(range.prefix_len),
        SourceRangeKey {
            service_id: service_id.to_be(),
            client_addr: u32::from_ne_bytes(range.addr.octets()),
        },
    )
}

/// The service id and range of a `SOURCE_RANGES` key.
#[must_use]
pub fn source_range_of(key: &Key<SourceRangeKey>) -> (u32, SourceRange) {
    let data = key.data();
    let prefix_len = key
        .prefix_len()
        .saturating_sub(SOURCE_RANGE_ID_BITS)
        .min(32);
    (
        u32::from_be(data.service_id),
        SourceRange {
            addr: std::net::Ipv4Addr::from(data.client_addr.to_ne_bytes()),
            prefix_len: u8::try_from(prefix_len).unwrap_or(32),
        },
    )
}

/// The `SOURCE_RANGES6` key of `range` for service id `service_id`.
#[must_use]
pub fn source_range_key6(service_id: u32, range: SourceRangeV6) -> Key<SourceRangeKey6> {
    Key::new(
        SOURCE_RANGE_ID_BITS + u32::from(range.prefix_len),
        SourceRangeKey6 {
            service_id: service_id.to_be(),
            client_addr: ipv6_words(range.addr.octets()),
        },
    )
}

/// The service id and range of a `SOURCE_RANGES6` key.
#[must_use]
pub fn source_range_of6(key: &Key<SourceRangeKey6>) -> (u32, SourceRangeV6) {
    let data = key.data();
    let prefix_len = key
        .prefix_len()
        .saturating_sub(SOURCE_RANGE_ID_BITS)
        .min(128);
    (
        u32::from_be(data.service_id),
        SourceRangeV6 {
            addr: std::net::Ipv6Addr::from(ipv6_octets(data.client_addr)),
            prefix_len: u8::try_from(prefix_len).unwrap_or(128),
        },
    )
}

/// Encodes a label, truncated on a character boundary to fit.
#[must_use]
pub fn encode_label(label: &str) -> ServiceLabel {
    let mut out = ServiceLabel::default();
    let mut end = label.len().min(SERVICE_LABEL_LEN);
    while !label.is_char_boundary(end) {
        end -= 1;
    }
    out.bytes[..end].copy_from_slice(&label.as_bytes()[..end]);
    out
}

/// Decodes a label written by [`encode_label`].
#[must_use]
pub fn decode_label(label: &ServiceLabel) -> String {
    let end = label
        .bytes
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(SERVICE_LABEL_LEN);
    String::from_utf8_lossy(&label.bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_range_keys_round_trip() {
        let v4 = SourceRange {
            addr: std::net::Ipv4Addr::new(192, 168, 0, 0),
            prefix_len: 16,
        };
        let key = source_range_key(7, v4);
        assert_eq!(key.prefix_len(), 48);
        assert_eq!(source_range_of(&key), (7, v4));
        let v6 = SourceRangeV6 {
            addr: "2001:db8:40::".parse().unwrap(),
            prefix_len: 44,
        };
        let key = source_range_key6(70_000, v6);
        assert_eq!(key.prefix_len(), 32 + 44);
        // The id comes first in the trie's bit order: big-endian.
        assert_eq!(key.data().service_id.to_ne_bytes(), 70_000u32.to_be_bytes());
        assert_eq!(
            key.data().client_addr[0].to_ne_bytes(),
            [0x20, 0x01, 0x0d, 0xb8]
        );
        assert_eq!(source_range_of6(&key), (70_000, v6));
    }

    #[test]
    fn labels_round_trip_and_truncate() {
        assert_eq!(
            decode_label(&encode_label("default/web:http")),
            "default/web:http"
        );
        let long = "é".repeat(SERVICE_LABEL_LEN);
        let decoded = decode_label(&encode_label(&long));
        assert!(decoded.len() <= SERVICE_LABEL_LEN && decoded.chars().all(|c| c == 'é'));
    }
}
