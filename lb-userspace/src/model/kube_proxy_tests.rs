//! Readings that follow kube-proxy rather than the API's wording (issue 13):
//! one table row each.

use serde_json::{json, Value};

use super::*;

fn endpoint(conditions: &Value) -> EndpointSpec {
    let object = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "labels": {SERVICE_NAME_LABEL: "web"}},
        "addressType": "IPv4", "ports": [{"port": 80}],
        "endpoints": [{"addresses": ["10.244.1.2"], "conditions": conditions}],
    });
    let slice = SliceSpec::from_k8s(&serde_json::from_value(object).unwrap()).unwrap();
    slice.endpoints[0].clone()
}

#[test]
fn unset_conditions_read_as_kube_proxy_reads_them() {
    // (conditions, ready, serving, terminating), as endpointslicecache.go
    // derives them: ready and serving default to true, terminating to false.
    let cases = [
        (json!({}), true, true, false),
        (json!({"ready": false}), false, true, false),
        (
            json!({"ready": false, "terminating": true}),
            false,
            true,
            true,
        ),
        (
            json!({"ready": false, "serving": false, "terminating": true}),
            false,
            false,
            true,
        ),
        (json!({"ready": true, "serving": false}), true, false, false),
        (json!({"terminating": false}), true, true, false),
    ];
    for (conditions, ready, serving, terminating) in cases {
        let e = endpoint(&conditions);
        assert_eq!(
            (e.ready, e.is_serving(), e.is_terminating()),
            (ready, serving, terminating),
            "{conditions}"
        );
    }
}

fn service(ports: &Value) -> Result<ServiceSpec, String> {
    let object = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "dns", "namespace": "kube-system"},
        "spec": {"clusterIP": "10.96.0.10", "ports": ports}});
    ServiceSpec::from_k8s(&serde_json::from_value(object).unwrap())
}

#[test]
fn an_sctp_port_is_skipped_alone() {
    // (ports, served "port/protocol", skipped)
    let cases = [
        (
            json!([{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "SCTP"}, {"port": 53}]),
            vec!["53/UDP", "53/TCP"],
            vec!["53/SCTP"],
        ),
        (
            json!([{"port": 9, "protocol": "SCTP", "name": "a"}, {"port": 10, "protocol": "SCTP", "targetPort": "x"}]),
            vec![],
            vec!["9/SCTP", "10/SCTP"],
        ),
        (json!([{"port": 80}]), vec!["80/TCP"], vec![]),
    ];
    for (ports, served, skipped) in cases {
        let svc = service(&ports).unwrap_or_else(|e| panic!("{ports}: {e}"));
        let got: Vec<String> = svc
            .ports
            .iter()
            .map(|p| format!("{}/{}", p.port, p.protocol))
            .collect();
        assert_eq!(got, served, "{ports}");
        assert_eq!(svc.skipped_ports, skipped, "{ports}");
        let problems = svc.problems();
        if skipped.is_empty() {
            assert!(problems.is_empty(), "{problems:?}");
        } else {
            assert_eq!(problems.len(), 1, "one problem per Service: {problems:?}");
            let p = &problems[0];
            assert_eq!(p.service.to_string(), "kube-system/dns");
            assert_eq!(p.reason, crate::problem::ProblemReason::UnsupportedPort);
            assert!(
                skipped.iter().all(|s| p.message.contains(s)),
                "{}",
                p.message
            );
        }
    }
    for bad in [
        json!([{"port": 0, "protocol": "SCTP"}]),
        json!([{"port": 80, "protocol": "QUIC"}]),
    ] {
        assert!(service(&bad).is_err(), "{bad} is still invalid");
    }
}

#[test]
fn a_slices_sctp_port_is_dropped_alone() {
    let object = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "dns-1", "labels": {SERVICE_NAME_LABEL: "dns"}},
        "addressType": "IPv4",
        "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                  {"name": "sctp", "port": 53, "protocol": "SCTP"},
                  {"name": "tcp", "port": 53}],
        "endpoints": [{"addresses": ["10.244.1.2"]}],
    });
    let slice = SliceSpec::from_k8s(&serde_json::from_value(object).unwrap()).unwrap();
    let names: Vec<&str> = slice.ports.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["dns", "tcp"]);
    assert_eq!(slice.endpoints.len(), 1);
}
