//! A dual-stack Service and its two EndpointSlices (IPv4 and IPv6) read
//! through the real kube client: the reconciler, planning IPv6, has both
//! families' frontends, each with its own family's endpoints only; a
//! change of the IPv6 slice reaches the source as that slice alone, and
//! the IPv6 desired state follows while IPv4's stays.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    sync::Arc,
    time::{Duration, Instant},
};

use lb_tests::apiserver::TestApiServer;
use lb_userspace::{
    ident::ObjectName,
    model::{family::IpFamilyPolicy, AddressType},
    select::{self, family::desired_state6},
    source::{Changes, Source},
};

use super::{node1, run, Fixture, WAIT};

const WEB4: &str = "default/web 10.96.0.60:80/TCP -> 10.244.1.2:8080,10.244.2.2:8080";

const DUAL_SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n\
spec:\n  clusterIP: 10.96.0.60\n  clusterIPs: [10.96.0.60, \"fd00:96::60\"]\n  ipFamilies: [IPv4, IPv6]\n  ipFamilyPolicy: RequireDualStack\n  ports: [{name: http, port: 80, targetPort: http}]\n";

/// web's slice `web-<suffix>` of `family` (IPv4 or IPv6) with `ips`.
fn family_slice(suffix: &str, family: &str, ips: &[&str]) -> String {
    let endpoints: Vec<String> = ips
        .iter()
        .map(|ip| {
            format!("{{addresses: [\"{ip}\"], conditions: {{ready: true}}, nodeName: node1}}")
        })
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-{suffix}, namespace: default, labels: {{kubernetes.io/service-name: web}}}}\n\
         addressType: {family}\nports: [{{name: http, port: 8080}}]\nendpoints: [{}]\n",
        endpoints.join(", ")
    )
}

/// Takes what the source reports as changed and reconciles it; returns
/// the changes and each family's "service frontend -> backends" lines.
/// Each family's incremental state must equal a full recompute.
fn reconciled(fx: &mut Fixture) -> (Changes, Vec<String>, Vec<String>) {
    let (cluster, changes) = fx.source.snapshot();
    let _ = fx.reconciler.reconcile(cluster, &changes, Instant::now());
    let (full4, _) = select::desired_state(cluster, &node1());
    assert_eq!(
        fx.reconciler.desired(),
        &full4,
        "IPv4: incremental and full"
    );
    assert_eq!(
        fx.reconciler.desired6(),
        &desired_state6(cluster, &node1()),
        "IPv6: incremental and full disagree"
    );
    let lines = |state: Vec<(String, &ObjectName, Vec<String>)>| {
        let mut lines: Vec<String> = state
            .into_iter()
            .map(|(f, s, b)| format!("{s} {f} -> {}", b.join(",")))
            .collect();
        lines.sort();
        lines
    };
    let v4 = fx.reconciler.desired().iter().map(|(f, d)| {
        let b = d.backends.keys().map(ToString::to_string).collect();
        (f.to_string(), &d.service, b)
    });
    let v6 = fx.reconciler.desired6().iter().map(|(f, d)| {
        let b = d.backends.keys().map(ToString::to_string).collect();
        (f.to_string(), &d.service, b)
    });
    (changes, lines(v4.collect()), lines(v6.collect()))
}

/// Reconciles what the source reports until both families' lines are as
/// expected; returns every change the source reported meanwhile.
async fn until_both(fx: &mut Fixture, v4: &[&str], v6: &[&str]) -> Vec<Changes> {
    let started = Instant::now();
    let mut reported = Vec::new();
    loop {
        let (changes, now4, now6) = reconciled(fx);
        if changes.all || !changes.services.is_empty() || !changes.slices.is_empty() {
            reported.push(changes);
        }
        if now4 == v4 && now6 == v6 {
            return reported;
        }
        assert!(
            started.elapsed() < WAIT,
            "after {WAIT:?} the state is {now4:#?} and {now6:#?}, expected {v4:#?} and {v6:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn a_dual_stack_service_gets_each_familys_frontend_with_its_own_slices_endpoints() {
    let server = Arc::new(TestApiServer::start().unwrap());
    server.apply(DUAL_SERVICE).unwrap();
    server
        .apply(&family_slice("v4", "IPv4", &["10.244.1.2", "10.244.2.2"]))
        .unwrap();
    server
        .apply(&family_slice(
            "v6",
            "IPv6",
            &["fd00:244:1::2", "fd00:244:2::2"],
        ))
        .unwrap();
    run(&server.clone(), |mut fx| async move {
        fx.reconciler.plan_ipv6(true);
        until_both(
            &mut fx,
            &[WEB4],
            &["default/web [fd00:96::60]:80/TCP -> [fd00:244:1::2]:8080,[fd00:244:2::2]:8080"],
        )
        .await;
        // The model holds the Service's two families and both slices.
        let (cluster, _) = fx.source.snapshot();
        let web = &cluster.services[&name("web")];
        assert_eq!(web.cluster_ips, [Ipv4Addr::new(10, 96, 0, 60)], "{web:?}");
        assert_eq!(
            web.v6.as_ref().map(|v6| v6.cluster_ips.clone()),
            Some(vec![Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x60)]),
            "{web:?}"
        );
        assert_eq!(web.ip_families.to_string(), "[IPv4, IPv6]");
        assert_eq!(web.ip_family_policy, IpFamilyPolicy::RequireDualStack);
        let families: Vec<bool> = cluster
            .slices
            .values()
            .map(|s| matches!(s.address_type, AddressType::Ipv6(_)))
            .collect();
        assert_eq!(families, [false, true], "web-v4 is IPv4, web-v6 IPv6");

        // The IPv6 slice gains an endpoint: reported as that slice alone.
        server
            .apply(&family_slice(
                "v6",
                "IPv6",
                &["fd00:244:1::2", "fd00:244:1::3", "fd00:244:2::2"],
            ))
            .unwrap();
        let reported = until_both(
            &mut fx,
            &[WEB4],
            &["default/web [fd00:96::60]:80/TCP -> [fd00:244:1::2]:8080,[fd00:244:1::3]:8080,[fd00:244:2::2]:8080"],
        )
        .await;
        only_the_v6_slice(&reported);
        // And loses two.
        server
            .apply(&family_slice("v6", "IPv6", &["fd00:244:1::3"]))
            .unwrap();
        let reported = until_both(
            &mut fx,
            &[WEB4],
            &["default/web [fd00:96::60]:80/TCP -> [fd00:244:1::3]:8080"],
        )
        .await;
        only_the_v6_slice(&reported);
    });
}

fn name(name: &str) -> ObjectName {
    ObjectName {
        namespace: "default".into(),
        name: name.into(),
    }
}

/// The source reported the change, as the IPv6 slice and nothing else.
fn only_the_v6_slice(reported: &[Changes]) {
    assert!(!reported.is_empty(), "the change was reported");
    for changes in reported {
        assert!(!changes.all, "{changes:?}");
        assert!(changes.services.is_empty(), "{changes:?}");
        assert_eq!(
            changes.slices.iter().collect::<Vec<_>>(),
            [&name("web-v6")],
            "{changes:?}"
        );
    }
}
