//! Which EndpointSlices belong to each Service.

use std::collections::BTreeMap;

use crate::{
    desired::ObjectName,
    model::{AddressType, Cluster, SliceSpec},
};

/// The EndpointSlices of each Service, by (namespace, service name).
#[derive(Clone, Debug, Default)]
pub struct SliceIndex {
    /// Each Service's slices, sorted: a Vec, as a Service has one slice or
    /// a few (a set's node would reserve room for eleven).
    by_service: BTreeMap<ObjectName, Vec<ObjectName>>,
    owner: BTreeMap<ObjectName, ObjectName>,
}

impl SliceIndex {
    /// Indexes every slice of `cluster`.
    #[must_use]
    pub fn build(cluster: &Cluster) -> Self {
        let mut index = Self::default();
        for slice in cluster.slices.values() {
            index.insert(slice);
        }
        index
    }

    /// The Service a slice belongs to.
    #[must_use]
    pub fn service_of(slice: &SliceSpec) -> ObjectName {
        ObjectName {
            namespace: slice.name.namespace.clone(),
            name: slice.service.clone(),
        }
    }

    /// Adds (or moves) a slice; returns the Service it belonged to before, if another.
    pub fn insert(&mut self, slice: &SliceSpec) -> Option<ObjectName> {
        let previous = self.remove(&slice.name);
        let service = Self::service_of(slice);
        let slices = self.by_service.entry(service.clone()).or_default();
        if let Err(at) = slices.binary_search(&slice.name) {
            slices.reserve_exact(1);
            slices.insert(at, slice.name.clone());
        }
        self.owner.insert(slice.name.clone(), service.clone());
        previous.filter(|p| *p != service)
    }

    /// The slices labelled for `service`.
    pub fn slices_of<'a>(
        &'a self,
        service: &ObjectName,
    ) -> impl Iterator<Item = &'a ObjectName> + 'a {
        self.by_service.get(service).into_iter().flatten()
    }

    /// Removes a slice; returns the Service it belonged to.
    pub fn remove(&mut self, slice: &ObjectName) -> Option<ObjectName> {
        let service = self.owner.remove(slice)?;
        if let Some(slices) = self.by_service.get_mut(&service) {
            if let Ok(at) = slices.binary_search(slice) {
                slices.remove(at);
            }
            if slices.is_empty() {
                self.by_service.remove(&service);
            }
        }
        Some(service)
    }

    /// Warnings about slices that cannot be used.
    #[must_use]
    pub fn warnings(&self, cluster: &Cluster) -> Vec<String> {
        cluster
            .slices
            .values()
            .filter_map(|slice| match &slice.address_type {
                AddressType::Other(family) => Some(other_address_type(&slice.name, family)),
                AddressType::Ipv4 | AddressType::Ipv6(_) => None,
            })
            .collect()
    }
}

/// The warning about a slice of an address type that is no IP family.
#[must_use]
pub fn other_address_type(slice: &ObjectName, address_type: &str) -> String {
    format!("EndpointSlice {slice}: address type {address_type} is not served (IPv4 and IPv6 only); ignored")
}
