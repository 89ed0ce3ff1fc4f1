//! The manifests in `deploy/` parsed into Kubernetes types and checked against
//! the code, so they cannot drift: RBAC matches what the source requests,
//! probes hit real endpoints, the pod has the capabilities and mounts it needs
//! and no more.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Namespace, PodSpec, ServiceAccount, Volume},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use lb_userspace::{
    datapath::REQUIRED_CAPABILITIES,
    health::DEFAULT_HEALTHZ_BIND_ADDRESS,
    metrics::{HEALTHZ_PATH, READYZ_PATH},
    source::{
        events::{EVENT_RESOURCE, EVENT_VERBS, SERVICE_LOOKUP_VERB},
        kube::{WATCHED_RESOURCES, WATCH_VERBS},
    },
};
use serde::de::DeserializeOwned;

/// Every document of every file in deploy/, as JSON values.
fn documents() -> Vec<serde_json::Value> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut docs = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
            if !value.is_null() {
                docs.push(value);
            }
        }
    }
    docs
}

/// The one object of `kind`, parsed into its type (the parse is the check).
fn one<T: DeserializeOwned>(kind: &str) -> T {
    let found: Vec<_> = documents()
        .into_iter()
        .filter(|d| d["kind"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "exactly one {kind} in deploy/");
    serde_json::from_value(found[0].clone())
        .unwrap_or_else(|e| panic!("{kind} does not parse: {e}"))
}

/// The pod's volume called `name`.
fn volume<'a>(pod: &'a PodSpec, name: &str) -> &'a Volume {
    pod.volumes
        .iter()
        .flatten()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

#[test]
fn every_manifest_parses_into_its_type() {
    let _: Namespace = one("Namespace");
    let _: ServiceAccount = one("ServiceAccount");
    let _: ClusterRole = one("ClusterRole");
    let _: ClusterRoleBinding = one("ClusterRoleBinding");
    let _: ConfigMap = one("ConfigMap");
    let _: DaemonSet = one("DaemonSet");
}

#[test]
fn rbac_grants_exactly_what_the_source_requests() {
    let role: ClusterRole = one("ClusterRole");
    let mut granted: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in role.rules.unwrap_or_default() {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                granted
                    .entry((group.clone(), resource.clone()))
                    .or_default()
                    .extend(rule.verbs.iter().cloned());
            }
        }
    }
    let key = |(g, r): (&str, &str)| (g.to_string(), r.to_string());
    let verbs = |v: &[&str]| -> BTreeSet<String> { v.iter().map(ToString::to_string).collect() };
    // What the code uses: the watches, the Service look-up of the Event
    // poster, and the Events it creates and patches.
    let mut needed: BTreeMap<(String, String), BTreeSet<String>> = WATCHED_RESOURCES
        .iter()
        .map(|&resource| (key(resource), verbs(&WATCH_VERBS)))
        .collect();
    needed
        .entry(key(("", "services")))
        .or_default()
        .insert(SERVICE_LOOKUP_VERB.to_string());
    needed.insert(key(EVENT_RESOURCE), verbs(&EVENT_VERBS));
    assert_eq!(
        granted.keys().collect::<Vec<_>>(),
        needed.keys().collect::<Vec<_>>(),
        "RBAC resources equal the ones the code uses"
    );
    for (resource, want) in &needed {
        let have = &granted[resource];
        assert!(
            have.is_superset(want),
            "{resource:?}: {have:?} lacks {want:?}"
        );
        // Beyond what the code uses, only `get` of what it watches (read-only).
        for extra in have.difference(want) {
            assert!(
                extra == "get" && WATCHED_RESOURCES.iter().any(|&r| key(r) == *resource),
                "{resource:?}: {extra} is granted but unused"
            );
        }
    }
    let binding: ClusterRoleBinding = one("ClusterRoleBinding");
    let account: ServiceAccount = one("ServiceAccount");
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!(subject.name, account.metadata.name.clone().unwrap());
    assert_eq!(subject.namespace, account.metadata.namespace);
    assert_eq!(binding.role_ref.name, role.metadata.name.unwrap());
}

#[test]
fn the_daemonset_runs_everywhere_with_least_privilege_and_real_probes() {
    let ds: DaemonSet = one("DaemonSet");
    let spec = ds.spec.unwrap();
    let strategy = spec.update_strategy.unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(
        strategy.rolling_update.unwrap().max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1)),
        "one node at a time"
    );
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    let account: ServiceAccount = one("ServiceAccount");
    assert_eq!(pod.service_account_name, account.metadata.name);
    assert!(
        pod.tolerations
            .iter()
            .flatten()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "tolerates every taint: runs on every node"
    );
    let container = &pod.containers[0];
    let args = container.args.clone().unwrap_or_default();
    assert!(args.iter().any(|a| a == "--source=kube"), "{args:?}");
    let metrics_port: i32 = args
        .iter()
        .find_map(|a| a.strip_prefix("--metrics-addr="))
        .and_then(|addr| addr.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("--metrics-addr with a port");
    for (probe, path) in [
        (&container.liveness_probe, HEALTHZ_PATH),
        (&container.readiness_probe, READYZ_PATH),
    ] {
        let http = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("HTTP probe");
        assert_eq!(http.path.as_deref(), Some(path));
        assert_eq!(
            http.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(metrics_port)
        );
    }
    // kube-proxy's health port, declared where the agent serves it.
    let healthz = args
        .iter()
        .find_map(|a| a.strip_prefix("--healthz-bind-address="))
        .expect("--healthz-bind-address");
    assert_eq!(
        healthz, DEFAULT_HEALTHZ_BIND_ADDRESS,
        "kube-proxy's address, where load balancers and monitoring look"
    );
    let healthz_port: i32 = healthz.rsplit(':').next().unwrap().parse().unwrap();
    let ports: BTreeSet<i32> = container
        .ports
        .iter()
        .flatten()
        .map(|p| p.container_port)
        .collect();
    assert_eq!(ports, [metrics_port, healthz_port].into(), "declared ports");
    let security = container.security_context.clone().unwrap();
    assert_ne!(security.privileged, Some(true), "not privileged");
    let caps = security.capabilities.unwrap();
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    assert_eq!(
        added,
        REQUIRED_CAPABILITIES.into(),
        "exactly the capabilities the code needs"
    );
    assert_eq!(caps.drop.unwrap_or_default(), ["ALL"]);
    assert_eq!(
        security.read_only_root_filesystem,
        Some(true),
        "a read-only root, as tests/e2e_confined.rs runs the agent"
    );
    let requests = container.resources.clone().unwrap().requests.unwrap();
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
    let mounts: BTreeSet<String> = container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.clone())
        .collect();
    assert!(mounts.contains("/sys/fs/bpf"), "bpffs mounted for the pins");
    let bpffs = volume(&pod, "bpffs");
    assert_eq!(bpffs.host_path.as_ref().unwrap().path, "/sys/fs/bpf");
    // Every $(VAR) the arguments use is defined.
    let config: ConfigMap = one("ConfigMap");
    let mut defined: BTreeSet<String> = config.data.unwrap_or_default().into_keys().collect();
    defined.extend(container.env.iter().flatten().map(|e| e.name.clone()));
    for arg in &args {
        if let Some(var) = arg
            .split("$(")
            .nth(1)
            .and_then(|rest| rest.split(')').next())
        {
            assert!(defined.contains(var), "{arg} uses undefined {var}");
        }
    }
}

#[test]
fn the_hash_seed_comes_from_a_secret_created_at_install_never_from_deploy() {
    let ds: DaemonSet = one("DaemonSet");
    let pod = ds.spec.unwrap().template.spec.unwrap();
    let container = &pod.containers[0];
    let args = container.args.clone().unwrap_or_default();
    let file = args
        .iter()
        .find_map(|a| a.strip_prefix("--hash-seed-file="))
        .expect("--hash-seed-file");
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| file.starts_with(&format!("{}/", m.mount_path)))
        .expect("the seed file is on a mounted volume");
    let found = volume(&pod, &mount.name);
    let secret = found.secret.as_ref().expect("the volume is a Secret");
    assert_eq!(secret.optional, Some(false), "no seed, no start");
    let name = secret.secret_name.clone().unwrap();
    // The Secret itself is made per cluster at install: none in deploy/.
    assert!(
        documents().iter().all(|d| d["kind"] != "Secret"),
        "a hash seed committed in deploy/ would be the same for every cluster"
    );
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    assert!(
        readme.contains(&format!("create secret generic {name}")),
        "the README says how to create {name}"
    );
    assert!(
        !args.iter().any(|a| a.starts_with("--hash-seed=")),
        "no seed on the command line"
    );
}

/// The value of the `--<flag>=` argument, with the `ConfigMap` variables
/// substituted.
fn arg_value(args: &[String], config: &BTreeMap<String, String>, flag: &str) -> String {
    let raw = args
        .iter()
        .find_map(|a| a.strip_prefix(&format!("--{flag}=")))
        .unwrap_or_else(|| panic!("--{flag}= in {args:?}"));
    match raw.strip_prefix("$(").and_then(|r| r.strip_suffix(')')) {
        Some(var) => config
            .get(var)
            .unwrap_or_else(|| panic!("{var} in the ConfigMap"))
            .clone(),
        None => raw.to_string(),
    }
}

#[test]
fn socket_level_balancing_reads_the_hosts_cgroup_v2_root_and_pod_namespaces() {
    let ds: DaemonSet = one("DaemonSet");
    let pod = ds.spec.unwrap().template.spec.unwrap();
    let container = &pod.containers[0];
    let args = container.args.clone().unwrap_or_default();
    let config: ConfigMap = one("ConfigMap");
    let config: BTreeMap<String, String> = config.data.unwrap_or_default();
    let scope = arg_value(&args, &config, "socket-lb");
    assert!(
        ["off", "host", "all"].contains(&scope.as_str()),
        "--socket-lb={scope}"
    );
    let cgroup = arg_value(&args, &config, "socket-lb-cgroup");
    // The cgroup is inside a read-only mount of the host's /sys/fs/cgroup:
    // the mount itself (a cgroup v2 host) or `unified` (a hybrid one).
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| cgroup == m.mount_path || cgroup == format!("{}/unified", m.mount_path))
        .unwrap_or_else(|| panic!("no volume mount holds --socket-lb-cgroup={cgroup}"));
    assert_eq!(mount.read_only, Some(true), "attaching needs no write");
    let found = volume(&pod, &mount.name);
    let host = found.host_path.as_ref().expect("a hostPath volume");
    assert_eq!(host.path, "/sys/fs/cgroup", "the host's cgroup hierarchy");
    assert_eq!(host.type_.as_deref(), Some("Directory"), "never created");

    // The pods' namespaces, for closing their sockets of removed backends:
    // the runtime's directory, whose new mounts reach the agent.
    let netns = arg_value(&args, &config, "socket-lb-netns-dir");
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == netns)
        .unwrap_or_else(|| panic!("no volume mount at --socket-lb-netns-dir={netns}"));
    assert_eq!(mount.read_only, Some(true));
    assert_eq!(
        mount.mount_propagation.as_deref(),
        Some("HostToContainer"),
        "a pod started after the agent is seen"
    );
    let found = volume(&pod, &mount.name);
    assert_eq!(found.host_path.as_ref().unwrap().path, "/run/netns");
}

#[test]
fn the_api_server_address_comes_from_the_configmap_and_parses() {
    let ds: DaemonSet = one("DaemonSet");
    let pod = ds.spec.unwrap().template.spec.unwrap();
    let args = pod.containers[0].args.clone().unwrap_or_default();
    assert!(
        args.iter().any(|a| a == "--api-server=$(LB_API_SERVER)"),
        "the DaemonSet passes the ConfigMap's API server address"
    );
    let config: ConfigMap = one("ConfigMap");
    let value = config.data.unwrap_or_default()["LB_API_SERVER"].clone();
    // The shipped default is empty (the in-cluster address) and must parse.
    assert_eq!(
        lb_userspace::source::api_server::parse(&value).unwrap(),
        None
    );
}

#[test]
fn the_node_port_addresses_come_from_the_configmap_and_parse() {
    let ds: DaemonSet = one("DaemonSet");
    let pod = ds.spec.unwrap().template.spec.unwrap();
    let args = pod.containers[0].args.clone().unwrap_or_default();
    let config: ConfigMap = one("ConfigMap");
    let config: BTreeMap<String, String> = config.data.unwrap_or_default();
    let value = arg_value(&args, &config, "nodeport-addresses");
    // The shipped default: every local address, as kube-proxy.
    assert_eq!(
        lb_userspace::node_ports::NodePortAddresses::parse(&value).unwrap(),
        lb_userspace::node_ports::NodePortAddresses::All
    );
}
