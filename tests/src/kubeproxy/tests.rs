use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use super::*;

fn web(endpoints: usize) -> KpService {
    KpService {
        namespace: "default".into(),
        name: "web".into(),
        port_name: "http".into(),
        cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
        port: 80,
        endpoints: (0..endpoints)
            .map(|i| {
                SocketAddrV4::new(
                    Ipv4Addr::new(10, 244, 1, 2 + u8::try_from(i).unwrap()),
                    8080,
                )
            })
            .collect(),
        node_name: Some("node1".into()),
    }
}

#[test]
fn iptables_rules_pick_endpoints_with_kube_proxys_probabilities() {
    let text = iptables_restore(&[web(3)], "10.244.0.0/16");
    assert!(
        text.starts_with("*nat\n:PREROUTING ACCEPT [0:0]\n"),
        "{text}"
    );
    assert!(text.ends_with("COMMIT\n"));
    let svc = svc_chain(&web(3));
    let jumps: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(&format!("-A {svc} ")) && l.contains("KUBE-SEP-"))
        .collect();
    assert_eq!(jumps.len(), 3, "{text}");
    assert!(
        jumps[0].contains("--probability 0.3333333333"),
        "{}",
        jumps[0]
    );
    assert!(
        jumps[1].contains("--probability 0.5000000000"),
        "{}",
        jumps[1]
    );
    assert!(
        !jumps[2].contains("statistic"),
        "the last endpoint takes the rest"
    );
    assert!(text.contains(&format!(
        "-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment \"default/web:http cluster IP\" -m tcp --dport 80 -j {svc}\n"
    )));
    assert!(text.contains(&format!(
        "-A {svc} ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp"
    )));
    let sep = sep_chain(
        &web(3),
        SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 3), 8080),
    );
    assert!(text.contains(&format!(":{sep} - [0:0]\n")));
    assert!(text.contains(&format!(
        "-A {sep} -p tcp -m comment --comment default/web:http -m tcp -j DNAT --to-destination 10.244.1.3:8080\n"
    )));
    // Every chain is declared before the first rule.
    let first_rule = text.find("\n-A ").unwrap();
    assert!(
        !text[first_rule..].contains("\n:"),
        "declarations come first"
    );
    // The nodeport jump is the last rule of KUBE-SERVICES, after every service.
    let nodeports = text.find("-j KUBE-NODEPORTS").unwrap();
    assert!(text[..nodeports].contains("-A KUBE-SERVICES -d 10.96.0.10/32"));
}

#[test]
fn nft_rules_use_a_verdict_map_and_numgen() {
    let text = nft_ruleset(&[web(2)], "10.244.0.0/16");
    assert!(text.starts_with("table ip kube-proxy {}\ndelete table ip kube-proxy\n"));
    let chain = nft_name("service", &web(2), None);
    assert!(
        text.contains(&format!("10.96.0.10 . tcp . 80 : goto {chain}")),
        "{text}"
    );
    assert!(text.contains("numgen random mod 2 vmap { 0 : goto endpoint-"));
    assert!(text.contains("meta l4proto tcp dnat to 10.244.1.3:8080"));
    assert!(text.contains("ip daddr . meta l4proto . th dport vmap @service-ips"));
    assert!(
        chain.starts_with("service-") && !chain.contains('/'),
        "{chain}"
    );
    assert_eq!(text.matches('{').count(), text.matches('}').count());
}

#[test]
fn chain_names_are_stable_and_distinct() {
    let a = chain_hash("default/web:httptcp");
    assert_eq!(a, chain_hash("default/web:httptcp"));
    assert_eq!(a.len(), 16);
    assert!(a
        .chars()
        .all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c)));
    let names: std::collections::BTreeSet<String> = (0..1000)
        .map(|i| chain_hash(&format!("ns/svc{i}:p")))
        .collect();
    assert_eq!(names.len(), 1000);
}

#[test]
fn manifests_parse_back_as_services_and_slices() {
    let text = manifests_yaml(&[web(2)]);
    let docs: Vec<serde_yaml_ng::Value> = text
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_yaml_ng::from_str(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 2);
    let svc: Service = serde_yaml_ng::from_value(docs[0].clone()).unwrap();
    let spec = svc.spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.10"));
    let port = &spec.ports.unwrap()[0];
    assert_eq!((port.port, port.name.as_deref()), (80, Some("http")));
    let slice: EndpointSlice = serde_yaml_ng::from_value(docs[1].clone()).unwrap();
    assert_eq!(slice.endpoints.len(), 2);
    assert_eq!(slice.endpoints[0].node_name.as_deref(), Some("node1"));
    assert_eq!(slice.ports.unwrap()[0].port, Some(8080));
    assert_eq!(
        slice.metadata.labels.unwrap()["kubernetes.io/service-name"],
        "web"
    );
}
