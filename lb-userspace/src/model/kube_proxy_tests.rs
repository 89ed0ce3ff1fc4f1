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
