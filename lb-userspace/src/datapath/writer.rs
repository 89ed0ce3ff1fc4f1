//! Applies a plan's map operations in order.

use anyhow::{Context, Result};
use lb_common::{Backend, ServiceLabel, SERVICE_LABEL_LEN};

use super::maps::Maps;
use crate::plan::MapOp;

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
