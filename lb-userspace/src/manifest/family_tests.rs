//! IP families from manifests, where no API server assigns them.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::tests::{name, TempDir};
use super::*;
use crate::model::{AddressType, IpFamily, IpFamilyPolicy};

const DUAL: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIPs: [10.96.0.10, 'fd00::10']\n  ipFamilyPolicy: PreferDualStack\n  ports: [{port: 80, targetPort: 8080}]\n";
const SLICES: &str = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-4, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{port: 8080}]\nendpoints: [{addresses: [10.244.1.2]}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-6, labels: {kubernetes.io/service-name: web}}\naddressType: IPv6\nports: [{port: 8080}]\nendpoints: [{addresses: ['fd00:244::2']}]\n";

#[test]
fn a_dual_stack_manifest_keeps_both_families_and_both_slices() {
    let dir = TempDir::new("family-dual");
    dir.write("web.yaml", DUAL);
    dir.write("slices.yaml", SLICES);
    let loaded = load_dir(dir.path(), &ManifestCache::default());
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let cluster = loaded.cluster();
    let web = &cluster.services[&name("default", "web")];
    assert_eq!(
        web.ip_families.iter().collect::<Vec<_>>(),
        [IpFamily::V4, IpFamily::V6]
    );
    assert_eq!(web.ip_family_policy, IpFamilyPolicy::PreferDualStack);
    assert_eq!(web.cluster_ips, [Ipv4Addr::new(10, 96, 0, 10)]);
    assert_eq!(
        web.v6.as_ref().unwrap().cluster_ips,
        ["fd00::10".parse::<Ipv6Addr>().unwrap()]
    );
    assert_eq!(cluster.slices[&name("default", "web-4")].endpoints.len(), 1);
    assert!(matches!(
        &cluster.slices[&name("default", "web-6")].address_type,
        AddressType::Ipv6(endpoints) if endpoints.len() == 1
    ));
}

#[test]
fn disagreeing_families_reject_the_service_and_keep_its_previous_version() {
    let dir = TempDir::new("family-keep");
    dir.write("web.yaml", DUAL);
    let first = load_dir(dir.path(), &ManifestCache::default());
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    let bad = [
        (
            "SingleStack with two",
            DUAL.replace("PreferDualStack", "SingleStack"),
        ),
        (
            "order against ipFamilies",
            DUAL.replace(
                "  ipFamilyPolicy",
                "  ipFamilies: [IPv6, IPv4]\n  ipFamilyPolicy",
            ),
        ),
        (
            "RequireDualStack with one",
            DUAL.replace(", 'fd00::10'", "")
                .replace("PreferDualStack", "RequireDualStack"),
        ),
    ];
    for (what, text) in bad {
        dir.write("web.yaml", &text);
        let second = load_dir(dir.path(), &first.cache);
        assert_eq!(second.errors.len(), 1, "{what}: {:?}", second.errors);
        let message = second.errors[0].to_string();
        assert!(
            message.contains("default/web") && message.contains("keeping its previous version"),
            "{what}: {message}"
        );
        let cluster = second.cluster();
        let web = &cluster.services[&name("default", "web")];
        assert!(web.v6.is_some(), "{what}: the dual-stack version is kept");
    }
}
