//! Rules where selection once differed from kube-proxy (issue 13, items 7, 8
//! and 9): one table row each, with kube-proxy's answer.

use super::tests::{
    backends, cluster, ep, hinted, http, http_slice, port, service, slice, terminating,
};
use super::*;
use crate::{
    desired::Protocol,
    model::{EndpointSpec, TargetPort},
};

fn mirrored(n: &str, endpoints: Vec<EndpointSpec>) -> SliceSpec {
    SliceSpec {
        mirrored: true,
        ..slice(n, &[("http", 8080)], endpoints)
    }
}

/// Terminating, not ready, with `serving` unset.
fn terminating_serving_unset(last: u8) -> EndpointSpec {
    EndpointSpec {
        serving: None,
        ..terminating(last, true, "node2")
    }
}

/// One row per rule: what it says, the cluster, and the backends of its
/// cluster IP as [`super::tests::backends`] writes them.
#[allow(clippy::too_many_lines)] // one table row per rule
pub(super) fn selection_cases() -> Vec<(&'static str, Cluster, Vec<&'static str>)> {
    let svc = || service(ServiceKind::ClusterIp, http());
    let numeric = || {
        service(
            ServiceKind::ClusterIp,
            vec![port("", 80, Protocol::Tcp, TargetPort::Number(8081))],
        )
    };
    vec![
        (
            "7: a mirrored slice alone serves",
            cluster(svc(), vec![mirrored("web-mirror-0", vec![ep(5, true, "node1")])]),
            vec!["5:8080L"],
        ),
        (
            "7: mirrored and own slices are united",
            cluster(
                svc(),
                vec![
                    mirrored("web-mirror-0", vec![ep(5, true, "node1")]),
                    http_slice(vec![ep(2, true, "node1")]),
                ],
            ),
            vec!["2:8080L", "5:8080L"],
        ),
        (
            "7: an address in a mirrored and an own slice counts once",
            cluster(
                svc(),
                vec![
                    mirrored("web-mirror-0", vec![ep(2, true, "node1")]),
                    http_slice(vec![ep(2, true, "node1")]),
                ],
            ),
            vec!["2:8080L"],
        ),
        (
            "7: of one address in two slices, the one not terminating counts",
            cluster(
                svc(),
                vec![
                    http_slice(vec![terminating(2, true, "node2")]),
                    slice("b", &[("http", 8080)], vec![ep(2, true, "node2")]),
                ],
            ),
            vec!["2:8080"],
        ),
        (
            "8: no ready endpoint: the terminating fallback ignores zone hints",
            cluster(
                svc(),
                vec![http_slice(vec![
                    EndpointSpec {
                        zone_hints: vec!["zone-a".into()],
                        ..terminating(2, true, "node2")
                    },
                    EndpointSpec {
                        zone_hints: vec!["zone-b".into()],
                        ..terminating(3, true, "node2")
                    },
                ])],
            ),
            vec!["2:8080", "3:8080"],
        ),
        (
            "8: no ready endpoint: the terminating fallback ignores node hints",
            cluster(
                svc(),
                vec![http_slice(vec![
                    EndpointSpec {
                        node_hints: vec!["node1".into()],
                        ..terminating(2, true, "node2")
                    },
                    EndpointSpec {
                        node_hints: vec!["node2".into()],
                        ..terminating(3, true, "node2")
                    },
                ])],
            ),
            vec!["2:8080", "3:8080"],
        ),
        (
            "8: hints count only on ready endpoints (a terminating one without hints does not disable them)",
            cluster(
                svc(),
                vec![http_slice(vec![
                    hinted(2, &["zone-a"]),
                    hinted(3, &["zone-b"]),
                    terminating(4, true, "node2"),
                ])],
            ),
            vec!["2:8080", "3:8080~", "4:8080~"],
        ),
        (
            "8: serving unset counts as serving (kube-proxy), so a terminating endpoint is a fallback",
            cluster(svc(), vec![http_slice(vec![terminating_serving_unset(2)])]),
            vec!["2:8080"],
        ),
        (
            "9: a slice without ports gives no endpoints, even for a numeric targetPort",
            cluster(numeric(), vec![slice("a", &[], vec![ep(2, true, "node1")])]),
            vec![],
        ),
        (
            "9: a portless slice beside one with the port: only the latter counts",
            cluster(
                numeric(),
                vec![
                    slice("a", &[], vec![ep(2, true, "node1")]),
                    slice("b", &[("", 8081)], vec![ep(3, true, "node1")]),
                ],
            ),
            vec!["3:8081L"],
        ),
    ]
}

#[test]
fn selection_follows_kube_proxy() {
    for (rule, cluster, expected) in selection_cases() {
        let expected: Vec<String> = expected.into_iter().map(String::from).collect();
        assert_eq!(backends(&cluster), Some(expected), "{rule}");
    }
}

/// The addresses (last octet) selected for outside clients and for pods
/// at frontend `addr:port`.
fn views(cluster: &Cluster, addr: Ipv4Addr, port: u16) -> (Vec<u8>, Vec<u8>) {
    let (state, _) = desired_state(cluster, &super::tests::node());
    let frontend = state
        .iter()
        .find(|(f, _)| f.addr == addr && f.port == port)
        .map(|(_, want)| want)
        .expect("the frontend");
    let pick = |pods: bool| {
        frontend
            .backends
            .iter()
            .filter(|(_, b)| frontend.selects(b, pods))
            .map(|(a, _)| a.ip().octets()[3])
            .collect()
    };
    (pick(false), pick(true))
}

/// The clusters of item 2: `externalTrafficPolicy: Local` with endpoints
/// here and elsewhere, with none here, and with `internalTrafficPolicy:
/// Local` too.
pub(super) fn external_policy_cases() -> [(&'static str, Cluster); 3] {
    let mut ports = http();
    ports[0].node_port = Some(30080);
    let lb = ServiceSpec {
        external_ips: vec![Ipv4Addr::new(203, 0, 113, 7)],
        external_policy: TrafficPolicy::Local,
        ..service(ServiceKind::NodePort, ports)
    };
    let endpoints = vec![
        ep(2, true, "node1"),
        ep(3, true, "node2"),
        ep(4, false, "node2"),
    ];
    let itp = ServiceSpec {
        internal_policy: TrafficPolicy::Local,
        ..lb.clone()
    };
    [
        (
            "2: eTP Local",
            cluster(lb.clone(), vec![http_slice(endpoints.clone())]),
        ),
        (
            "2: eTP Local, no local endpoint",
            cluster(lb, vec![http_slice(vec![ep(3, true, "node2")])]),
        ),
        (
            "2: eTP and iTP Local",
            cluster(itp, vec![http_slice(endpoints)]),
        ),
    ]
}

#[test]
fn pods_reach_external_frontends_through_every_node_s_endpoints() {
    // Item 2: externalTrafficPolicy: Local serves outside clients from this
    // node's endpoints, pods (in-cluster traffic) from every node's, with
    // topology as for the cluster IP; internalTrafficPolicy: Local holds
    // for pods too.
    let [(_, c), (_, elsewhere), (_, itp)] = external_policy_cases();
    for (addr, port) in [
        (Ipv4Addr::new(203, 0, 113, 7), 80),
        (Ipv4Addr::UNSPECIFIED, 30080),
    ] {
        assert_eq!(
            views(&c, addr, port),
            (vec![2], vec![2, 3]),
            "{addr}:{port}"
        );
    }
    assert_eq!(
        views(&c, Ipv4Addr::new(10, 96, 0, 10), 80),
        (vec![2, 3], vec![2, 3])
    );
    let (state, _) = desired_state(&c, &super::tests::node());
    assert_eq!(state.values().filter(|f| f.has_internal_table()).count(), 2);

    // No local endpoint: none for outside clients, the others for pods.
    assert_eq!(
        views(&elsewhere, Ipv4Addr::new(203, 0, 113, 7), 80),
        (vec![], vec![3])
    );

    // internalTrafficPolicy: Local: the cluster IP serves pods from this node only.
    let c = itp;
    assert_eq!(
        views(&c, Ipv4Addr::new(10, 96, 0, 10), 80),
        (vec![2], vec![2])
    );
    assert_eq!(
        views(&c, Ipv4Addr::new(203, 0, 113, 7), 80),
        (vec![2], vec![2, 3])
    );
}
