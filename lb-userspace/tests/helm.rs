//! The Helm chart (`deploy/helm/lb-agent`) rendered by Helm's own engine
//! (helm-python-sdk, Helm's Go SDK in a shared library: `tests/helm_render.py`)
//! and parsed into Kubernetes types as `deploy.rs` parses `deploy/`: its
//! defaults render the objects of `deploy/*.yaml`, each value lands where it
//! should and nowhere else, and values the agent cannot run with fail the
//! render with a message. The renderer is a prerequisite (`cargo xtask
//! setup`): without it these tests fail, they are never skipped.

use std::{
    collections::BTreeMap,
    io::Write,
    path::PathBuf,
    process::{Command, Stdio},
};

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Namespace, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use lb_userspace::node_ports::NodePortAddresses;
use serde_json::{json, Value};

/// The repository's root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One `helm template`: the release's namespace and its `--set-json` and
/// `--set` flags.
#[derive(Default)]
struct Case<'a> {
    namespace: &'a str,
    set: &'a [&'a str],
    set_json: &'a [&'a str],
}

/// Objects keyed by kind and name.
type Objects = BTreeMap<(String, String), Value>;

/// Renders every case in one run of the renderer: per case, the objects or
/// the renderer's error. Panics (never skips) when the renderer is missing.
fn render(cases: &[Case]) -> Vec<Result<Objects, String>> {
    let input: Vec<Value> = cases
        .iter()
        .map(|c| json!({"namespace": c.namespace, "set": c.set, "set_json": c.set_json}))
        .collect();
    let mut child = Command::new("python3")
        .arg(root().join("lb-userspace/tests/helm_render.py"))
        .arg(root().join("deploy/helm/lb-agent"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs the Helm renderer: run `cargo xtask setup`");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&serde_json::to_vec(&input).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Helm renderer failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(results.len(), cases.len());
    results
        .into_iter()
        .map(|r| match (&r["rendered"], &r["error"]) {
            (Value::Object(templates), _) => Ok(objects(
                templates
                    .iter()
                    .filter(|(path, _)| {
                        std::path::Path::new(path)
                            .extension()
                            .is_some_and(|e| e == "yaml")
                    })
                    .map(|(_, text)| text.as_str().unwrap().to_string()),
            )),
            (_, Value::String(error)) => Err(error.clone()),
            _ => panic!("renderer answered {r}"),
        })
        .collect()
}

/// Every YAML document of `texts`, keyed by kind and name, each parsed into
/// its Kubernetes type (the parse is the check).
fn objects(texts: impl Iterator<Item = String>) -> Objects {
    let mut found = Objects::new();
    for text in texts {
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(doc).unwrap();
            if value.is_null() {
                continue;
            }
            let kind = value["kind"].as_str().unwrap().to_string();
            let parsed = match kind.as_str() {
                "Namespace" => serde_json::from_value::<Namespace>(value.clone()).map(drop),
                "ServiceAccount" => {
                    serde_json::from_value::<ServiceAccount>(value.clone()).map(drop)
                }
                "ClusterRole" => serde_json::from_value::<ClusterRole>(value.clone()).map(drop),
                "ClusterRoleBinding" => {
                    serde_json::from_value::<ClusterRoleBinding>(value.clone()).map(drop)
                }
                "ConfigMap" => serde_json::from_value::<ConfigMap>(value.clone()).map(drop),
                "DaemonSet" => serde_json::from_value::<DaemonSet>(value.clone()).map(drop),
                other => panic!("unexpected kind {other}"),
            };
            parsed.unwrap_or_else(|e| panic!("{kind} does not parse: {e}"));
            let name = value["metadata"]["name"].as_str().unwrap().to_string();
            let previous = found.insert((kind.clone(), name.clone()), value);
            assert!(previous.is_none(), "{kind} {name} twice");
        }
    }
    found
}

/// The objects of `deploy/*.yaml`.
fn deploy() -> Objects {
    let mut texts = Vec::new();
    for entry in std::fs::read_dir(root().join("deploy")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) == Some("yaml") {
            texts.push(std::fs::read_to_string(&path).unwrap());
        }
    }
    objects(texts.into_iter())
}

/// The key of an object.
fn key(kind: &str, name: &str) -> (String, String) {
    (kind.to_string(), name.to_string())
}

/// The rendered objects of a case that must render.
fn ok(result: Result<Objects, String>) -> Objects {
    result.unwrap_or_else(|e| panic!("the chart does not render: {e}"))
}

#[test]
fn default_values_render_the_manifests_in_deploy() {
    let mut results = render(&[
        Case {
            namespace: "lb-system",
            ..Case::default()
        },
        Case {
            namespace: "lb-system",
            set: &["createNamespace=true"],
            ..Case::default()
        },
    ])
    .into_iter();
    let defaults = ok(results.next().unwrap());
    let with_namespace = ok(results.next().unwrap());
    let mut manifests = deploy();
    // `helm install --namespace lb-system --create-namespace` makes the
    // namespace; `createNamespace=true` renders it (for `helm template`).
    assert_eq!(
        with_namespace, manifests,
        "createNamespace=true: all of deploy/"
    );
    manifests.remove(&key("Namespace", "lb-system")).unwrap();
    assert_eq!(defaults, manifests, "defaults: deploy/ but its Namespace");
}

#[test]
fn every_value_lands_where_it_should_and_nowhere_else() {
    let mut results = render(&[
        Case {
            namespace: "kube-system",
            ..Case::default()
        },
        Case {
            namespace: "kube-system",
            set: &[
                "image.repository=registry.example/lb-agent,image.tag=v1.2.3",
                "image.pullPolicy=IfNotPresent",
                "replaceKubeProxy=true,apiServer=10.0.0.10:6443",
                "uplink=ens5,uplinkHook=xdp,podInterfaces=lxc*",
                // A comma inside a --set value is escaped, as with the CLI.
                r"nodePortAddresses=10.0.0.0/8\,192.168.0.0/16",
                "socketLB=host,socketLBCgroup=/run/lb-agent/host-cgroup/unified",
                "logLevel=debug,metricsPort=9100,hashSeedSecret=seed-2026",
            ],
            set_json: &[
                r#"resources={"requests":{"cpu":"250m","memory":"128Mi"},"limits":{"memory":"512Mi"}}"#,
                r#"tolerations=[{"key":"node-role.kubernetes.io/control-plane","operator":"Exists","effect":"NoSchedule"}]"#,
            ],
        },
    ])
    .into_iter();
    let defaults = ok(results.next().unwrap());
    let rendered = ok(results.next().unwrap());
    assert!(
        defaults
            .values()
            .filter(|o| o["kind"] != "ClusterRole" && o["kind"] != "ClusterRoleBinding")
            .all(|o| o["metadata"]["namespace"] == "kube-system"),
        "namespaced objects are in the release's namespace"
    );
    assert_eq!(
        defaults[&key("ClusterRoleBinding", "lb-agent")]["subjects"][0]["namespace"],
        "kube-system"
    );

    // The default render with each value put where it belongs by hand must
    // be exactly the render with the values.
    let mut expected = defaults;
    let config = &mut expected.get_mut(&key("ConfigMap", "lb-agent")).unwrap()["data"];
    for (var, value) in [
        ("LB_API_SERVER", "10.0.0.10:6443"),
        ("LB_UPLINK", "ens5"),
        ("LB_UPLINK_HOOK", "xdp"),
        ("LB_POD_INTERFACES", "lxc*"),
        ("LB_NODEPORT_ADDRESSES", "10.0.0.0/8,192.168.0.0/16"),
        ("LB_SOCKET_LB", "host"),
        ("LB_SOCKET_LB_CGROUP", "/run/lb-agent/host-cgroup/unified"),
        ("LB_LOG_LEVEL", "debug"),
    ] {
        assert!(config.get(var).is_some(), "{var} in the default ConfigMap");
        config[var] = json!(value);
    }
    let pod =
        &mut expected.get_mut(&key("DaemonSet", "lb-agent")).unwrap()["spec"]["template"]["spec"];
    pod["tolerations"] = json!([{
        "key": "node-role.kubernetes.io/control-plane",
        "operator": "Exists",
        "effect": "NoSchedule",
    }]);
    let secret = pod["volumes"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|v| v["name"] == "hash-seed")
        .unwrap();
    secret["secret"]["secretName"] = json!("seed-2026");
    let container = &mut pod["containers"][0];
    container["image"] = json!("registry.example/lb-agent:v1.2.3");
    container["imagePullPolicy"] = json!("IfNotPresent");
    container["resources"] = json!({
        "requests": {"cpu": "250m", "memory": "128Mi"},
        "limits": {"memory": "512Mi"},
    });
    let metrics_addr = container["args"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|a| a.as_str().unwrap().starts_with("--metrics-addr="))
        .unwrap();
    assert_eq!(*metrics_addr, "--metrics-addr=0.0.0.0:9960");
    *metrics_addr = json!("--metrics-addr=0.0.0.0:9100");
    assert_eq!(container["ports"][0]["name"], "metrics");
    container["ports"][0]["containerPort"] = json!(9100);
    container["livenessProbe"]["httpGet"]["port"] = json!(9100);
    container["readinessProbe"]["httpGet"]["port"] = json!(9100);
    assert_eq!(rendered, expected);

    // And the agent takes what the ConfigMap now says.
    let config: ConfigMap =
        serde_json::from_value(rendered[&key("ConfigMap", "lb-agent")].clone()).unwrap();
    let data = config.data.unwrap();
    assert!(
        lb_userspace::source::api_server::parse(&data["LB_API_SERVER"])
            .unwrap()
            .is_some()
    );
    assert!(matches!(
        NodePortAddresses::parse(&data["LB_NODEPORT_ADDRESSES"]).unwrap(),
        NodePortAddresses::Cidrs(c) if c.len() == 2
    ));
}

#[test]
fn replacing_kube_proxy_requires_the_api_server_address() {
    let results = render(&[
        Case {
            namespace: "lb-system",
            set: &["replaceKubeProxy=true"],
            ..Case::default()
        },
        Case {
            namespace: "lb-system",
            set: &["replaceKubeProxy=true,apiServer=cp.example:6443"],
            ..Case::default()
        },
    ]);
    let error = results[0].as_ref().expect_err("renders without apiServer");
    assert!(
        error.contains("apiServer is required when replaceKubeProxy is true"),
        "{error}"
    );
    assert!(results[1].is_ok(), "{:?}", results[1]);
}

#[test]
fn the_schema_refuses_values_the_agent_cannot_run_with() {
    let bad: [(&str, &str); 5] = [
        ("uplinkHook=generic", "/uplinkHook"),
        ("socketLB=sideways", "/socketLB"),
        ("metricsPort=70000", "/metricsPort"),
        ("uplink=", "/uplink"),
        // A misspelt value is an error, not silently ignored.
        ("socketLb=off", "socketLb"),
    ];
    let cases: Vec<Case> = bad
        .iter()
        .map(|(set, _)| Case {
            namespace: "lb-system",
            set: std::slice::from_ref(set),
            ..Case::default()
        })
        .collect();
    for ((set, names), result) in bad.iter().zip(render(&cases)) {
        let error = result.expect_err(set);
        assert!(error.contains(names), "--set {set}: {error}");
    }
}

#[test]
fn the_chart_takes_the_api_server_addresses_the_agent_parses() {
    let addresses = [
        "10.0.0.10:6443",
        "cp.example:6443",
        "[fd00::1]:6443",
        "https://cp.example",
        "https://cp.example:6443/",
        "http://10.0.0.10:8080",
        "10.0.0.10",
        "cp.example:6443/api",
        "https://cp.example/api",
        "ftp://cp.example:21",
    ];
    let sets: Vec<String> = addresses
        .iter()
        .map(|a| format!("replaceKubeProxy=true,apiServer={a}"))
        .collect();
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let cases: Vec<Case> = sets
        .iter()
        .map(|set| Case {
            namespace: "lb-system",
            set: std::slice::from_ref(set),
            ..Case::default()
        })
        .collect();
    let mut refused = 0;
    for (address, result) in addresses.iter().zip(render(&cases)) {
        let agent = lb_userspace::source::api_server::parse(address);
        assert_eq!(
            result.is_ok(),
            agent.is_ok(),
            "{address}: chart {result:?}, agent {agent:?}"
        );
        refused += usize::from(result.is_err());
        if let Err(error) = result {
            assert!(error.contains("/apiServer"), "{address}: {error}");
        }
    }
    assert_eq!(refused, 4, "the bad addresses are refused");
}
