//! Which backends went away, for socket-level balancing: a socket its
//! `connect` pointed at a backend keeps that backend (no hook runs per send
//! of a connected socket), so when the backend leaves its Service the agent
//! closes the socket and the application reconnects.
//!
//! A backend is gone from a frontend when it is no longer among the
//! frontend's backends at all: its endpoint left the EndpointSlices, the
//! frontend went, or the frontend now belongs to another Service that does
//! not have it. A backend that is only no longer *selected* (not ready,
//! terminating, filtered by a traffic policy or topology) is not gone: the
//! per-packet path keeps its established connections until the endpoint
//! leaves the slice (see [`crate::select`]), and so do its sockets, as
//! kube-proxy and Cilium close only what goes to an endpoint that is gone.
//! Written once for both families ([`AddrFamily`]).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
};

use crate::{
    applied::AppliedFrontend,
    desired::{AddrFamily, DesiredFrontend},
};

/// A backend a frontend no longer has: sockets pointed at `backend` through
/// `frontend` are to be closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoneBackend<S: AddrFamily = SocketAddrV4> {
    /// The frontend (a node port: any node-port address).
    pub frontend: S::Frontend,
    /// The endpoint's address and port.
    pub backend: S,
}

impl<S: AddrFamily> GoneBackend<S> {
    /// Whether a socket of protocol `proto` (IP protocol number) that asked
    /// for `svc` (the address it connected to, as the socket reverse map
    /// keeps it) went through this frontend.
    #[must_use]
    pub fn serves(&self, proto: u8, svc: S) -> bool {
        S::proto(&self.frontend).number() == proto
            && S::frontend_port(&self.frontend) == svc.port_of()
            && S::frontend_ip(&self.frontend).is_none_or(|ip| ip == svc.ip_of())
    }
}

/// Appends to `out` the backends of `frontend` in `old` that `new` (its
/// entry now; `None`: the frontend went) does not have.
pub fn gone_from<S: AddrFamily>(
    frontend: S::Frontend,
    old: Option<&DesiredFrontend<S>>,
    new: Option<&DesiredFrontend<S>>,
    out: &mut Vec<GoneBackend<S>>,
) {
    let Some(old) = old else {
        return;
    };
    out.extend(
        old.backends
            .keys()
            .filter(|b| new.is_none_or(|new| !new.backends.contains_key(b)))
            .map(|&backend| GoneBackend { frontend, backend }),
    );
}

/// Every backend a frontend of `old` has that it no longer has in `new`
/// (a full sync), sorted.
#[must_use]
pub fn gone<S: AddrFamily>(
    old: &BTreeMap<S::Frontend, DesiredFrontend<S>>,
    new: &BTreeMap<S::Frontend, DesiredFrontend<S>>,
) -> Vec<GoneBackend<S>> {
    let mut out = Vec::new();
    for (frontend, want) in old {
        gone_from(*frontend, Some(want), new.get(frontend), &mut out);
    }
    out
}

/// Every backend of the `applied` frontends (as an earlier agent left
/// them in the maps) that the frontend does not have in `new`: a restarted
/// agent's first sync, which has no earlier desired state to compare with.
pub fn gone_since_applied<S: AddrFamily>(
    applied: impl IntoIterator<Item = (S::Frontend, Vec<S>)>,
    new: &BTreeMap<S::Frontend, DesiredFrontend<S>>,
) -> Vec<GoneBackend<S>> {
    let mut out = Vec::new();
    for (frontend, backends) in applied {
        let now = new.get(&frontend);
        out.extend(
            backends
                .into_iter()
                .filter(|b| now.is_none_or(|now| !now.backends.contains_key(b)))
                .map(|backend| GoneBackend { frontend, backend }),
        );
    }
    out.sort_unstable();
    out
}

/// What a full sync finds gone: the backends `old` (the desired state
/// before it) has that `new` lacks; at the first sync (`old` empty),
/// against the frontends the maps hold (`applied`: an earlier agent's,
/// adopted, or none).
pub fn at_full_sync<S: AddrFamily, I: Iterator<Item = AppliedFrontend<S>>>(
    old: &BTreeMap<S::Frontend, DesiredFrontend<S>>,
    new: &BTreeMap<S::Frontend, DesiredFrontend<S>>,
    applied: impl FnOnce() -> I,
) -> Vec<GoneBackend<S>> {
    if old.is_empty() {
        let applied = applied().map(|f| (f.frontend, f.backends.into_keys().collect()));
        gone_since_applied(applied, new)
    } else {
        gone(old, new)
    }
}

/// The distinct backends of `gone` by protocol number: what to look for
/// among the node's sockets.
#[must_use]
pub fn backends_by_proto<S: AddrFamily>(gone: &[GoneBackend<S>]) -> Vec<(u8, S)> {
    let mut out: Vec<_> = gone
        .iter()
        .map(|g| (S::proto(&g.frontend).number(), g.backend))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// A frontend address as `SOCK_REVERSE` keeps it (network byte order) and
/// its port (network byte order) as a socket address.
#[must_use]
pub fn svc_addr(addr_be: u32, port_be: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(addr_be.to_ne_bytes()), u16::from_be(port_be))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{
        BackendInfo, DesiredState, Frontend, ObjectName, Protocol, TrafficPolicy,
    };

    fn fe(last: u8, proto: Protocol) -> Frontend {
        Frontend {
            addr: Ipv4Addr::new(10, 96, 0, last),
            port: 80,
            proto,
        }
    }

    fn ep(last: u8) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, last), 8080)
    }

    fn want(service: &str, backends: &[(u8, bool)]) -> DesiredFrontend {
        DesiredFrontend {
            service: ObjectName {
                namespace: "default".into(),
                name: service.into(),
            },
            port_name: String::new(),
            backends: backends
                .iter()
                .map(|&(last, selected)| {
                    let info = BackendInfo {
                        local: false,
                        for_cluster: selected,
                        for_local: selected,
                    };
                    (ep(last), info)
                })
                .collect(),
            policy: TrafficPolicy::Cluster,
            pods_policy: TrafficPolicy::Cluster,
            affinity_timeout: 0,
            has_endpoints: !backends.is_empty(),
            source_ranges: Vec::new(),
            node_port_addrs: Vec::new(),
        }
    }

    fn gone_one(old: Option<&DesiredFrontend>, new: Option<&DesiredFrontend>) -> Vec<SocketAddrV4> {
        let mut out = Vec::new();
        gone_from(fe(1, Protocol::Tcp), old, new, &mut out);
        out.into_iter().map(|g| g.backend).collect()
    }

    #[test]
    fn a_removed_endpoint_is_gone_the_others_are_not() {
        let old = want("a", &[(1, true), (2, true), (3, true)]);
        let new = want("a", &[(1, true), (3, true)]);
        assert_eq!(gone_one(Some(&old), Some(&new)), [ep(2)]);
        assert_eq!(gone_one(Some(&old), Some(&old)), []);
    }

    #[test]
    fn an_endpoint_no_longer_selected_is_not_gone() {
        // Not ready or terminating: listed, kept for established flows.
        let old = want("a", &[(1, true), (2, true)]);
        let new = want("a", &[(1, true), (2, false)]);
        assert_eq!(gone_one(Some(&old), Some(&new)), []);
    }

    #[test]
    fn a_frontend_that_goes_takes_every_backend_and_a_new_one_none() {
        let old = want("a", &[(1, true), (2, false)]);
        assert_eq!(gone_one(Some(&old), None), [ep(1), ep(2)]);
        assert_eq!(gone_one(None, Some(&old)), []);
        assert_eq!(gone_one(None, None), []);
    }

    #[test]
    fn a_frontend_taken_over_by_another_service_loses_what_that_one_lacks() {
        let old = want("a", &[(1, true), (2, true)]);
        let new = want("b", &[(2, true), (4, true)]);
        assert_eq!(gone_one(Some(&old), Some(&new)), [ep(1)]);
    }

    #[test]
    fn a_full_sync_compares_every_frontend() {
        let old: DesiredState = [
            (fe(1, Protocol::Tcp), want("a", &[(1, true), (2, true)])),
            (fe(1, Protocol::Udp), want("a", &[(1, true)])),
            (fe(2, Protocol::Tcp), want("b", &[(2, true)])),
        ]
        .into_iter()
        .collect();
        let new: DesiredState = [
            (fe(1, Protocol::Tcp), want("a", &[(1, true)])),
            (fe(2, Protocol::Tcp), want("b", &[(2, true)])),
            (fe(3, Protocol::Tcp), want("c", &[(5, true)])),
        ]
        .into_iter()
        .collect();
        let found = gone(&old, &new);
        assert_eq!(
            found,
            [
                GoneBackend {
                    frontend: fe(1, Protocol::Tcp),
                    backend: ep(2)
                },
                GoneBackend {
                    frontend: fe(1, Protocol::Udp),
                    backend: ep(1)
                },
            ]
        );
        assert_eq!(
            backends_by_proto(&found),
            [(6, ep(2)), (17, ep(1))],
            "by protocol number"
        );
    }

    #[test]
    fn a_restart_compares_with_what_the_maps_held() {
        let new: DesiredState = [(fe(1, Protocol::Tcp), want("a", &[(1, true)]))]
            .into_iter()
            .collect();
        let applied = [
            (fe(1, Protocol::Tcp), vec![ep(1), ep(2)]),
            (fe(2, Protocol::Tcp), vec![ep(3)]),
        ];
        let found: Vec<_> = gone_since_applied(applied, &new)
            .into_iter()
            .map(|g| (g.frontend, g.backend))
            .collect();
        assert_eq!(
            found,
            [(fe(1, Protocol::Tcp), ep(2)), (fe(2, Protocol::Tcp), ep(3))]
        );
    }

    #[test]
    fn a_socket_matches_by_protocol_address_and_port_a_node_port_by_port() {
        let g = GoneBackend {
            frontend: fe(1, Protocol::Udp),
            backend: ep(1),
        };
        let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 1), 80);
        assert!(g.serves(17, vip));
        assert!(!g.serves(6, vip), "another protocol");
        assert!(!g.serves(17, SocketAddrV4::new(*vip.ip(), 81)));
        assert!(!g.serves(17, SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 2), 80)));
        let node_port = GoneBackend {
            frontend: Frontend::node_port(30080, Protocol::Tcp),
            backend: ep(1),
        };
        assert!(node_port.serves(6, SocketAddrV4::new(Ipv4Addr::new(192, 168, 0, 1), 30080)));
        assert!(!node_port.serves(6, SocketAddrV4::new(Ipv4Addr::new(192, 168, 0, 1), 30081)));
    }

    #[test]
    fn the_reverse_map_s_network_order_reads_back() {
        let addr = u32::from_ne_bytes([127, 1, 0, 10]);
        assert_eq!(
            svc_addr(addr, 53u16.to_be()),
            SocketAddrV4::new(Ipv4Addr::new(127, 1, 0, 10), 53)
        );
    }
}
