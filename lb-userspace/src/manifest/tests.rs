//! Manifest loading: formats, Endpoints mirroring, and keeping the last good state.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use super::*;
use crate::model::{AddressType, ServiceKind, TargetPort};

/// A unique temporary directory, removed on drop.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("lb-manifest-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub(super) fn write(&self, name: &str, text: &str) {
        std::fs::write(self.0.join(name), text).unwrap();
    }

    pub(super) fn remove(&self, name: &str) {
        std::fs::remove_file(self.0.join(name)).unwrap();
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) fn name(ns: &str, n: &str) -> ObjectName {
    ObjectName {
        namespace: ns.into(),
        name: n.into(),
    }
}

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{name: http, port: 80, targetPort: http}, {port: 53, protocol: UDP}]\n";
const SLICE: &str = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints:\n  - {addresses: [10.244.1.2], conditions: {ready: true}, nodeName: node1}\n  - {addresses: [10.244.1.3], conditions: {ready: false}}\n";

#[test]
fn reads_multi_document_yaml_json_and_lists() {
    let dir = TempDir::new("formats");
    dir.write("a.yaml", &format!("{SERVICE}---\n---\n{SLICE}"));
    dir.write(
        "b.json",
        r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Service","metadata":{"name":"db","namespace":"prod"},"spec":{"clusterIP":"10.96.0.11","ports":[{"port":5432}]}}]}"#,
    );
    dir.write(
        "c.yml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: ignored}\n",
    );
    dir.write("notes.txt", "not a manifest");
    let loaded = load_dir(dir.path(), &ManifestCache::default());
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let cluster = loaded.cluster();
    assert_eq!(cluster.services.len(), 2);
    let web = &cluster.services[&name("default", "web")];
    assert_eq!(web.kind, ServiceKind::ClusterIp);
    assert_eq!(web.cluster_ips, [Ipv4Addr::new(10, 96, 0, 10)]);
    assert_eq!(web.ports[0].target_port, TargetPort::Name("http".into()));
    assert_eq!(
        web.ports[1].target_port,
        TargetPort::Number(53),
        "targetPort defaults to port"
    );
    assert_eq!(cluster.services[&name("prod", "db")].ports[0].port, 5432);
    let slice = &cluster.slices[&name("default", "web-1")];
    assert_eq!(slice.service, "web");
    assert_eq!(
        (slice.endpoints[0].ready, slice.endpoints[1].ready),
        (true, false)
    );
    assert_eq!(slice.endpoints[0].node_name.as_deref(), Some("node1"));
}

#[test]
fn headless_and_external_name_are_recognised() {
    let dir = TempDir::new("kinds");
    dir.write(
        "a.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: h}\nspec: {clusterIP: None, ports: [{port: 80}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: e}\nspec: {type: ExternalName, externalName: example.org}\n",
    );
    let cluster = load_dir(dir.path(), &ManifestCache::default()).cluster();
    assert_eq!(
        cluster.services[&name("default", "h")].kind,
        ServiceKind::Headless
    );
    assert_eq!(
        cluster.services[&name("default", "e")].kind,
        ServiceKind::ExternalName
    );
}

#[test]
fn legacy_endpoints_are_mirrored_into_slices() {
    let dir = TempDir::new("mirror");
    dir.write(
        "svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: ext, namespace: ns1}\nspec: {clusterIP: 10.96.0.30}\n",
    );
    dir.write(
        "ep.yaml",
        "apiVersion: v1\nkind: Endpoints\nmetadata: {name: ext, namespace: ns1}\nsubsets:\n\
         - addresses: [{ip: 10.0.0.1, nodeName: n1}]\n  notReadyAddresses: [{ip: 10.0.0.2}]\n  ports: [{name: web, port: 8080}, {name: dns, port: 53, protocol: UDP}]\n\
         - addresses: [{ip: 10.0.0.3}, {ip: 'fd00::1'}]\n  ports: [{port: 9090}]\n",
    );
    let loaded = load_dir(dir.path(), &ManifestCache::default());
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let cluster = loaded.cluster();
    let first = &cluster.slices[&name("ns1", "ext-mirror-0")];
    assert!(first.mirrored);
    assert_eq!(first.service, "ext");
    assert_eq!(
        first
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.port))
            .collect::<Vec<_>>(),
        [("web", 8080), ("dns", 53)]
    );
    assert_eq!(
        first
            .endpoints
            .iter()
            .map(|e| (e.addresses[0], e.ready))
            .collect::<Vec<_>>(),
        [
            (Ipv4Addr::new(10, 0, 0, 1), true),
            (Ipv4Addr::new(10, 0, 0, 2), false)
        ]
    );
    assert_eq!(first.endpoints[0].node_name.as_deref(), Some("n1"));
    let second = &cluster.slices[&name("ns1", "ext-mirror-1")];
    assert_eq!(second.endpoints.len(), 1);
    let AddressType::Ipv6(v6) = &cluster.slices[&name("ns1", "ext-mirror-1-v6")].address_type
    else {
        panic!("the IPv6 address is mirrored into an IPv6 slice");
    };
    assert_eq!(v6.len(), 1);
}

#[test]
fn invalid_objects_are_reported_by_file_and_name() {
    let cases = [
        ("Service default/bad", "apiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}\n", "clusterIP"),
        ("Service default/bad", "apiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec: {clusterIP: 10.96.0.3, ports: [{port: 70000}]}\n", "out of range"),
        ("Service default/bad", "apiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec: {clusterIP: 10.96.0.3, ports: [{port: 0}]}\n", "port 0 is out of range"),
        ("Service default/bad", "apiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec: {clusterIP: 10.96.0.3, ports: [{port: 80, targetPort: 70000}]}\n", "targetPort 70000"),
        ("Service default/bad", "apiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec: {clusterIP: 10.96.0.3, ports: [{port: 80, protocol: QUIC}]}\n", "unknown protocol"),
        ("Service default/bad", "apiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec: {clusterIP: 10.96.0.3, ports: [{port: 80}, {port: 80}]}\n", "twice"),
        ("EndpointSlice default/s", "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s}\naddressType: IPv4\nendpoints: []\n", "kubernetes.io/service-name"),
        ("EndpointSlice default/s", "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s, labels: {kubernetes.io/service-name: x}}\naddressType: IPv4\nendpoints: [{addresses: [10.1.2]}]\n", "10.1.2"),
        ("EndpointSlice prod/s", "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s, namespace: prod, labels: {kubernetes.io/service-name: x}}\naddressType: IPv4\nports: [{port: 0}]\nendpoints: []\n", "port 0 is out of range"),
        ("Endpoints default/e", "apiVersion: v1\nkind: Endpoints\nmetadata: {name: e}\nsubsets: [{addresses: [{ip: nope}], ports: [{port: 80}]}]\n", "nope"),
    ];
    for (object, yaml, needle) in cases {
        let dir = TempDir::new("invalid");
        dir.write("good.yaml", SERVICE);
        dir.write("bad.yaml", yaml);
        let loaded = load_dir(dir.path(), &ManifestCache::default());
        assert_eq!(loaded.errors.len(), 1, "{object}: {:?}", loaded.errors);
        let message = loaded.errors[0].to_string();
        assert!(
            message.contains("bad.yaml") && message.contains(object) && message.contains(needle),
            "{message}"
        );
        assert!(
            loaded
                .cluster()
                .services
                .contains_key(&name("default", "web")),
            "the good file still counts"
        );
    }
}

#[test]
fn a_syntax_error_keeps_the_files_previous_objects() {
    let dir = TempDir::new("syntax");
    dir.write("web.yaml", SERVICE);
    let first = load_dir(dir.path(), &ManifestCache::default());
    dir.write(
        "web.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web\n  oops: [",
    );
    let second = load_dir(dir.path(), &first.cache);
    assert_eq!(second.errors.len(), 1);
    assert!(
        second.errors[0].to_string().contains("YAML syntax error"),
        "{}",
        second.errors[0]
    );
    assert_eq!(
        second.cluster(),
        first.cluster(),
        "nothing from the last good file is lost"
    );
}

#[test]
fn an_invalid_object_keeps_its_previous_version_and_a_fix_is_picked_up() {
    let dir = TempDir::new("keep");
    dir.write("web.yaml", SERVICE);
    let first = load_dir(dir.path(), &ManifestCache::default());
    dir.write("web.yaml", &SERVICE.replace("10.96.0.10", "10.96.0.999"));
    let second = load_dir(dir.path(), &first.cache);
    assert!(second.errors[0]
        .to_string()
        .contains("keeping its previous version"));
    assert_eq!(
        second.cluster().services[&name("default", "web")].cluster_ips,
        [Ipv4Addr::new(10, 96, 0, 10)]
    );
    dir.write("web.yaml", &SERVICE.replace("10.96.0.10", "10.96.0.12"));
    let third = load_dir(dir.path(), &second.cache);
    assert!(third.errors.is_empty());
    assert_eq!(
        third.cluster().services[&name("default", "web")].cluster_ips,
        [Ipv4Addr::new(10, 96, 0, 12)]
    );
}

#[test]
fn a_removed_file_removes_its_objects() {
    let dir = TempDir::new("removed");
    dir.write("web.yaml", SERVICE);
    dir.write("slice.yaml", SLICE);
    let first = load_dir(dir.path(), &ManifestCache::default());
    dir.remove("slice.yaml");
    let second = load_dir(dir.path(), &first.cache);
    assert!(second.cluster().slices.is_empty());
    assert_eq!(second.cluster().services.len(), 1);
}

#[test]
fn json_files_hold_one_object_and_yaml_files_hold_lists() {
    let dir = TempDir::new("json-one");
    dir.write(
        "a.json",
        r#"{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"web-1","labels":{"kubernetes.io/service-name":"web"}},"addressType":"IPv4","ports":[{"name":"http","port":8080}],"endpoints":[{"addresses":["10.244.1.2"]}]}"#,
    );
    dir.write(
        "b.yaml",
        &format!(
            "apiVersion: v1\nkind: List\nitems:\n- {}",
            SERVICE.replace('\n', "\n  ")
        ),
    );
    let loaded = load_dir(dir.path(), &ManifestCache::default());
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let cluster = loaded.cluster();
    assert_eq!(
        cluster.slices[&name("default", "web-1")].ports[0].port,
        8080
    );
    assert_eq!(cluster.services[&name("default", "web")].ports.len(), 2);
}

#[test]
fn a_later_file_wins_a_name_clash_as_a_whole_object() {
    let dir = TempDir::new("clash");
    let endpoints = |subsets: &str| {
        format!("apiVersion: v1\nkind: Endpoints\nmetadata: {{name: web}}\nsubsets:\n{subsets}")
    };
    let subset = |ip: &str| {
        format!("- {{addresses: [{{ip: {ip}}}], ports: [{{name: http, port: 8080}}]}}\n")
    };
    dir.write(
        "a.yaml",
        &format!(
            "{SERVICE}---\n{}",
            endpoints(&(subset("10.0.0.1") + &subset("10.0.0.2")))
        ),
    );
    dir.write(
        "b.yaml",
        &format!(
            "{}---\n{}",
            SERVICE.replace("10.96.0.10", "10.96.0.11"),
            endpoints(&subset("10.0.0.3"))
        ),
    );
    let cluster = load_dir(dir.path(), &ManifestCache::default()).cluster();
    assert_eq!(
        cluster.services[&name("default", "web")].cluster_ips,
        [Ipv4Addr::new(10, 96, 0, 11)]
    );
    let mirrored: Vec<_> = cluster
        .slices
        .values()
        .map(|s| (s.name.name.as_str(), s.endpoints[0].addresses[0]))
        .collect();
    assert_eq!(
        mirrored,
        [("web-mirror-0", Ipv4Addr::new(10, 0, 0, 3))],
        "no slice of the earlier file's Endpoints survives"
    );
}

#[test]
fn endpoints_the_controller_would_not_mirror_give_no_slices() {
    let dir = TempDir::new("skip-mirror");
    let subsets = "subsets: [{addresses: [{ip: 10.0.0.1}], ports: [{port: 80}]}]\n";
    for n in ["a", "b", "c"] {
        dir.write(
            &format!("svc-{n}.yaml"),
            &format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {n}}}\nspec: {{clusterIP: 10.96.0.40}}\n"),
        );
    }
    dir.write(
        "a.yaml",
        &format!(
            "apiVersion: v1\nkind: Endpoints\nmetadata: {{name: a, labels: {{{SKIP_MIRROR_LABEL}: 'true'}}}}\n{subsets}---\n\
             apiVersion: v1\nkind: Endpoints\nmetadata: {{name: b, annotations: {{{LEADER_ANNOTATION}: '{{}}'}}}}\n{subsets}---\n\
             apiVersion: v1\nkind: Endpoints\nmetadata: {{name: c, labels: {{{SKIP_MIRROR_LABEL}: 'false'}}}}\n{subsets}"
        ),
    );
    let loaded = load_dir(dir.path(), &ManifestCache::default());
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let names: Vec<_> = loaded
        .cluster()
        .slices
        .into_keys()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["c-mirror-0"]);
}

#[test]
fn a_bad_file_leaves_other_files_alone() {
    let dir = TempDir::new("isolated");
    dir.write("a.yaml", SERVICE);
    dir.write("b.yaml", SLICE);
    let first = load_dir(dir.path(), &ManifestCache::default());
    dir.write("b.yaml", "endpoints: [oops");
    dir.write("a.yaml", &SERVICE.replace("10.96.0.10", "10.96.0.12"));
    let second = load_dir(dir.path(), &first.cache);
    assert_eq!(second.errors.len(), 1);
    assert!(second.errors[0].file.ends_with("b.yaml") && second.errors[0].object.is_none());
    let cluster = second.cluster();
    assert_eq!(
        cluster.slices,
        first.cluster().slices,
        "b.yaml keeps its slice"
    );
    assert_eq!(
        cluster.services[&name("default", "web")].cluster_ips,
        [Ipv4Addr::new(10, 96, 0, 12)],
        "a.yaml's change is taken"
    );
}

#[test]
fn documents_are_cut_only_at_document_start_lines() {
    let text = "a: 1\n---\nb: |\n  ---\n  text\n---x: 2\n--- # c\nc: 3\n---\nd: é\n";
    for parts in 1..6 {
        let cut = split_documents(text, parts);
        assert!(cut.len() <= parts.max(1));
        assert_eq!(cut.concat(), text, "{parts} parts");
        for part in &cut[1..] {
            assert!(
                part.starts_with("---\n") || part.starts_with("--- "),
                "{part:?}"
            );
        }
    }
    assert_eq!(split_documents(text, 3).len(), 3);
    // Cuts near a multi-byte character.
    let wide = "é".repeat(50);
    let text = format!("a: {wide}\n---\nb: {wide}\n");
    assert_eq!(split_documents(&text, 2).concat(), text);
    // Directives belong to the document after them: kept whole.
    let directives = "a: 1\n...\n%YAML 1.2\n---\nb: 2\n";
    assert_eq!(split_documents(directives, 2), [directives]);
    assert_eq!(split_documents("a: 1\n", 4), ["a: 1\n"]);
}

/// A file of `n` Services and EndpointSlices, over 1 MiB for large `n`.
fn many_objects(n: usize) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    for i in 0..n {
        let _ = write!(
            text,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}}}\nspec: {{clusterIP: 10.96.{}.{}, ports: [{{port: 80}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s{i}-1, labels: {{kubernetes.io/service-name: s{i}}}}}\n\
             addressType: IPv4\nports: [{{port: 8080}}]\nendpoints: [{{addresses: [10.244.{}.{}]}}]\n",
            i / 250,
            i % 250 + 1,
            i / 250,
            i % 250 + 1,
        );
    }
    text
}

#[test]
fn a_large_file_parsed_in_parts_gives_what_one_piece_gives() {
    let dir = TempDir::new("parts");
    let mut text = many_objects(6_000);
    // Objects that clash (the last wins) and one that is invalid, across the cuts.
    text.push_str("---\napiVersion: v1\nkind: Service\nmetadata: {name: s1}\nspec: {clusterIP: 10.96.99.1, ports: [{port: 81}]}\n");
    text.push_str("---\napiVersion: v1\nkind: Service\nmetadata: {name: s2}\nspec: {clusterIP: 10.96.99.2, ports: [{port: 0}]}\n");
    assert!(text.len() > PARALLEL_PARSE_BYTES);
    dir.write("big.yaml", &text);
    let path = dir.path().join("big.yaml");
    let mut errors = Vec::new();
    let parts = load_file(&path, None, &mut errors);
    let (whole, whole_errors) = parse_objects(&path, &text, &FileObjects::default()).unwrap();
    assert_eq!(parts, whole);
    assert_eq!(errors, whole_errors);
    assert_eq!(
        parts.services.len(),
        6_000,
        "the invalid s2 leaves the earlier one"
    );
    assert_eq!(parts.services[&name("default", "s1")].ports[0].port, 81);
    assert_eq!(errors.len(), 1);

    // A syntax error in the second half: the same message as in one piece.
    let broken = format!("{}---\nkind: [unclosed\n", many_objects(6_000));
    dir.write("big.yaml", &broken);
    let mut errors = Vec::new();
    let kept = load_file(&path, Some(&parts), &mut errors);
    assert_eq!(kept, parts, "the previous objects stay");
    let message = parse_objects(&path, &broken, &FileObjects::default()).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].message.starts_with(&message), "{:?}", errors[0]);
}
