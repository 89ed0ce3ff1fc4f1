//! Endpoints mirroring as the EndpointSlice mirroring controller does it
//! (issue 13, item 12): which Endpoints, how many addresses, and what an
//! invalid address costs.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
};

use super::tests::{name, TempDir};
use super::*;
use crate::model::AddressType;

const ENDPOINTS: &str = "apiVersion: v1\nkind: Endpoints\nmetadata: {name: ext}\nsubsets: [{addresses: [{ip: 10.0.0.1}], ports: [{port: 8080}]}]\n";

fn service(spec: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: ext}}\nspec: {{clusterIP: 10.96.0.30, ports: [{{port: 80, targetPort: 8080}}]{spec}}}\n")
}

/// The names of the slices in the model.
fn slices(dir: &TempDir, cache: &ManifestCache) -> (Vec<String>, LoadResult) {
    let loaded = load_dir(dir.path(), cache);
    let names = loaded
        .cluster()
        .slices
        .into_keys()
        .map(|n| n.to_string())
        .collect();
    (names, loaded)
}

#[test]
fn only_endpoints_of_a_service_without_a_selector_are_mirrored() {
    let cases = [
        ("no Service", None, false),
        ("a Service without a selector", Some(service("")), true),
        (
            "a Service with a selector",
            Some(service(", selector: {app: ext}")),
            false,
        ),
        (
            "an empty selector is none (the API server stores it so)",
            Some(service(", selector: {}")),
            true,
        ),
        (
            "a Service of that name in another namespace",
            Some(service("").replace("{name: ext}", "{name: ext, namespace: other}")),
            false,
        ),
    ];
    for (what, svc, mirrored) in cases {
        let dir = TempDir::new("mirror-which");
        dir.write("ep.yaml", ENDPOINTS);
        if let Some(svc) = svc {
            dir.write("svc.yaml", &svc);
        }
        let (names, loaded) = slices(&dir, &ManifestCache::default());
        assert!(loaded.errors.is_empty(), "{what}: {:?}", loaded.errors);
        let expected: &[&str] = if mirrored {
            &["default/ext-mirror-0"]
        } else {
            &[]
        };
        assert_eq!(names, expected, "{what}");
    }
}

#[test]
fn mirrored_slices_follow_their_service_from_load_to_load() {
    let dir = TempDir::new("mirror-follow");
    dir.write("ep.yaml", ENDPOINTS);
    dir.write("svc.yaml", &service(", selector: {app: ext}"));
    let (names, first) = slices(&dir, &ManifestCache::default());
    assert!(names.is_empty(), "{names:?}");
    dir.write("svc.yaml", &service(""));
    let (names, second) = slices(&dir, &first.cache);
    assert_eq!(names, ["default/ext-mirror-0"], "the selector went");
    let node = crate::desired::NodeInfo {
        name: "node1".into(),
        ..crate::desired::NodeInfo::default()
    };
    let (state, _) = crate::select::desired_state(&second.cluster(), &node);
    assert_eq!(
        state.values().map(|f| f.backends.len()).collect::<Vec<_>>(),
        [1],
        "its endpoints serve the Service"
    );
    dir.remove("svc.yaml");
    let (names, _) = slices(&dir, &second.cache);
    assert!(names.is_empty(), "the Service went: {names:?}");
}

#[test]
fn an_invalid_address_is_skipped_alone_and_named() {
    let dir = TempDir::new("mirror-invalid");
    dir.write("svc.yaml", &service(""));
    dir.write(
        "ep.yaml",
        "apiVersion: v1\nkind: Endpoints\nmetadata: {name: ext}\nsubsets:\n\
         - addresses: [{ip: 10.0.0.1}, {ip: nope}, {ip: 10.0.0.2}]\n  notReadyAddresses: [{ip: 10.0.0.300}, {ip: 10.0.0.3}]\n  ports: [{port: 8080}]\n",
    );
    let loaded = load_dir(dir.path(), &ManifestCache::default());
    let errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    for (error, address) in errors.iter().zip(["nope", "10.0.0.300"]) {
        assert!(
            error.contains("ep.yaml")
                && error.contains("Endpoints default/ext")
                && error.contains(address),
            "{error}"
        );
    }
    let cluster = loaded.cluster();
    let endpoints: Vec<(Ipv4Addr, bool)> = cluster.slices[&name("default", "ext-mirror-0")]
        .endpoints
        .iter()
        .map(|e| (e.addresses[0], e.ready))
        .collect();
    assert_eq!(
        endpoints,
        [
            (Ipv4Addr::new(10, 0, 0, 1), true),
            (Ipv4Addr::new(10, 0, 0, 2), true),
            (Ipv4Addr::new(10, 0, 0, 3), false),
        ]
    );
}

/// An Endpoints object with one subset of `ready` and `not_ready` addresses
/// (IPv4, or IPv6 from `v6_from` on among the ready ones).
fn big_endpoints(ready: usize, not_ready: usize, v6_from: usize) -> String {
    let ip = |k: usize| {
        if k >= v6_from {
            format!("'fd00::{k:x}'")
        } else {
            format!("10.1.{}.{}", k / 250, k % 250 + 1)
        }
    };
    let mut text = String::from(
        "apiVersion: v1\nkind: Endpoints\nmetadata: {name: ext}\nsubsets:\n- ports: [{port: 8080}]\n  addresses:\n",
    );
    for k in 0..ready {
        writeln!(text, "  - {{ip: {}}}", ip(k)).unwrap();
    }
    text.push_str("  notReadyAddresses:\n");
    for k in ready..ready + not_ready {
        writeln!(text, "  - {{ip: {}}}", ip(k)).unwrap();
    }
    text
}

#[test]
fn a_subset_gives_at_most_1000_addresses_ready_first() {
    // (ready, not ready, first IPv6 among them, IPv4 ready and not ready
    // mirrored, addresses over the cap)
    let cases = [
        (998, 5, usize::MAX, 998, 2, 3),
        (1_000, 5, usize::MAX, 1_000, 0, 5),
        (1_003, 0, usize::MAX, 1_000, 0, 3),
        (990, 20, usize::MAX, 990, 10, 10),
        (1_000, 0, 500, 500, 0, 0),
        (600, 600, 300, 300, 0, 200),
    ];
    assert_eq!(MAX_ENDPOINTS_PER_SUBSET, 1_000);
    for (ready, not_ready, v6_from, want_ready, want_not_ready, over) in cases {
        let what = format!("{ready} ready, {not_ready} not ready, IPv6 from {v6_from}");
        let dir = TempDir::new("mirror-cap");
        dir.write("svc.yaml", &service(""));
        dir.write("ep.yaml", &big_endpoints(ready, not_ready, v6_from));
        let loaded = load_dir(dir.path(), &ManifestCache::default());
        if over == 0 {
            assert!(loaded.errors.is_empty(), "{what}: {:?}", loaded.errors);
        } else {
            assert_eq!(loaded.errors.len(), 1, "{what}: {:?}", loaded.errors);
            let message = loaded.errors[0].to_string();
            assert!(
                message.contains("Endpoints default/ext")
                    && message.contains(&format!("{over} not mirrored")),
                "{what}: {message}"
            );
        }
        let cluster = loaded.cluster();
        let slice = &cluster.slices[&name("default", "ext-mirror-0")];
        let count = |r: bool| slice.endpoints.iter().filter(|e| e.ready == r).count();
        assert_eq!(
            (count(true), count(false)),
            (want_ready, want_not_ready),
            "{what}"
        );
    }
}

#[test]
fn an_sctp_port_of_endpoints_is_dropped_alone() {
    let dir = TempDir::new("mirror-sctp");
    dir.write("svc.yaml", &service(""));
    dir.write(
        "ep.yaml",
        "apiVersion: v1\nkind: Endpoints\nmetadata: {name: ext}\nsubsets:\n\
         - addresses: [{ip: 10.0.0.1}]\n  ports: [{name: a, port: 9, protocol: SCTP}, {name: b, port: 8080}]\n",
    );
    let loaded = load_dir(dir.path(), &ManifestCache::default());
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let cluster = loaded.cluster();
    let slice = &cluster.slices[&name("default", "ext-mirror-0")];
    let ports: Vec<(&str, u16)> = slice
        .ports
        .iter()
        .map(|p| (p.name.as_str(), p.port))
        .collect();
    assert_eq!(ports, [("b", 8080)]);
    assert_eq!(slice.endpoints.len(), 1);
}

/// Mirrored endpoints as (address, ready).
type Mirrored = Vec<(IpAddr, bool)>;

#[test]
fn each_family_is_mirrored_into_its_own_slice() {
    // (addresses of the subset, ready first; IPv4 and IPv6 slices made and
    // their endpoints as (address, ready))
    let v4 = |a: &str, r| (a.parse::<IpAddr>().unwrap(), r);
    let cases: [(&str, &str, Mirrored, Mirrored); 4] = [
        (
            "IPv4 only: one IPv4 slice",
            "addresses: [{ip: 10.0.0.1}]",
            vec![v4("10.0.0.1", true)],
            vec![],
        ),
        (
            "IPv6 only: one IPv6 slice, no empty IPv4 one",
            "addresses: [{ip: 'fd00::1'}]\n  notReadyAddresses: [{ip: 'fd00::2'}]",
            vec![],
            vec![v4("fd00::1", true), v4("fd00::2", false)],
        ),
        (
            "both: a slice per family",
            "addresses: [{ip: 10.0.0.1}, {ip: 'fd00::1'}]\n  notReadyAddresses: [{ip: 'fd00::2'}, {ip: 10.0.0.2}]",
            vec![v4("10.0.0.1", true), v4("10.0.0.2", false)],
            vec![v4("fd00::1", true), v4("fd00::2", false)],
        ),
        (
            "no addresses: the empty IPv4 slice",
            "addresses: []",
            vec![],
            vec![],
        ),
    ];
    for (what, addresses, want_v4, want_v6) in cases {
        let dir = TempDir::new("mirror-family");
        dir.write("svc.yaml", &service(""));
        dir.write(
            "ep.yaml",
            &format!("apiVersion: v1\nkind: Endpoints\nmetadata: {{name: ext}}\nsubsets:\n- ports: [{{port: 8080}}]\n  {addresses}\n"),
        );
        let loaded = load_dir(dir.path(), &ManifestCache::default());
        assert!(loaded.errors.is_empty(), "{what}: {:?}", loaded.errors);
        let cluster = loaded.cluster();
        let got_v4 = cluster
            .slices
            .get(&name("default", "ext-mirror-0"))
            .map(|s| {
                assert_eq!(s.address_type, AddressType::Ipv4, "{what}");
                s.endpoints
                    .iter()
                    .map(|e| (IpAddr::V4(e.addresses[0]), e.ready))
                    .collect::<Vec<_>>()
            });
        let got_v6 = cluster
            .slices
            .get(&name("default", "ext-mirror-0-v6"))
            .map(|s| match &s.address_type {
                AddressType::Ipv6(endpoints) => endpoints
                    .iter()
                    .map(|e| (IpAddr::V6(e.addresses[0]), e.ready))
                    .collect::<Vec<_>>(),
                other => panic!("{what}: {other:?}"),
            });
        let expect_v4 = (!want_v4.is_empty() || want_v6.is_empty()).then_some(want_v4);
        let expect_v6 = (!want_v6.is_empty()).then_some(want_v6);
        assert_eq!((got_v4, got_v6), (expect_v4, expect_v6), "{what}");
    }
}
