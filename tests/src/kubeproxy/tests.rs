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
    let text = iptables_nat(&[web(3)], "10.244.0.0/16");
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
fn chain_names_match_kube_proxys() {
    // Values from kube-proxy's own iptables proxier tests.
    assert_eq!(chain_hash("ns1/svc1:p80tcp"), "XPGD46QRK7WJZT7O");
    assert_eq!(
        chain_hash("ns1/svc1:p80tcp10.180.0.1:80"),
        "SXIVWICOYRO3J4NJ"
    );
    assert_eq!(svc_chain(&web(1)), "KUBE-SVC-CDGGSHYLG3RE2FKL");
    let unnamed = KpService {
        port_name: String::new(),
        ..web(1)
    };
    assert_eq!(unnamed.id(), "default/web");
}

#[test]
fn iptables_text_for_one_service_with_two_endpoints() {
    let expected = r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-CDGGSHYLG3RE2FKL - [0:0]
:KUBE-SEP-UIQK3OSOSTRHRPBX - [0:0]
:KUBE-SEP-2AZ33KU3V5PGPQZH - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-CDGGSHYLG3RE2FKL
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-SVC-CDGGSHYLG3RE2FKL ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-CDGGSHYLG3RE2FKL -m comment --comment "default/web:http -> 10.244.1.2:8080" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-UIQK3OSOSTRHRPBX
-A KUBE-SEP-UIQK3OSOSTRHRPBX -s 10.244.1.2/32 -m comment --comment default/web:http -j KUBE-MARK-MASQ
-A KUBE-SEP-UIQK3OSOSTRHRPBX -p tcp -m comment --comment default/web:http -m tcp -j DNAT --to-destination 10.244.1.2:8080
-A KUBE-SVC-CDGGSHYLG3RE2FKL -m comment --comment "default/web:http -> 10.244.1.3:8080" -j KUBE-SEP-2AZ33KU3V5PGPQZH
-A KUBE-SEP-2AZ33KU3V5PGPQZH -s 10.244.1.3/32 -m comment --comment default/web:http -j KUBE-MARK-MASQ
-A KUBE-SEP-2AZ33KU3V5PGPQZH -p tcp -m comment --comment default/web:http -m tcp -j DNAT --to-destination 10.244.1.3:8080
COMMIT
"#;
    assert_eq!(iptables_nat(&[web(2)], "10.244.0.0/16"), expected);
    let whole = iptables_restore(&[web(2)], "10.244.0.0/16");
    assert_eq!(whole, format!("{}{expected}", iptables_filter(&[web(2)])));
}

#[test]
fn nft_text_for_one_service_with_two_endpoints() {
    // Tabs shown as four spaces.
    let expected = "table ip kube-proxy {}
delete table ip kube-proxy
table ip kube-proxy {
    chain mark-for-masquerade {
        meta mark set meta mark or 0x4000
    }
    chain masquerading {
        meta mark & 0x4000 == 0 return
        meta mark set meta mark xor 0x4000
        masquerade fully-random
    }
    chain nat-prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        jump services
    }
    chain nat-output {
        type nat hook output priority -100; policy accept;
        jump services
    }
    chain nat-postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        jump masquerading
    }
    chain services {
        ip daddr . meta l4proto . th dport vmap @service-ips
        fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports
    }
    chain service-CDGGSHYL-default_web_tcp_http {
        ip daddr 10.96.0.10 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade
        numgen random mod 2 vmap { 0 : goto endpoint-UIQK3OSO-default_web_tcp_http__10_244_1_2_8080, 1 : goto endpoint-2AZ33KU3-default_web_tcp_http__10_244_1_3_8080 }
    }
    chain endpoint-UIQK3OSO-default_web_tcp_http__10_244_1_2_8080 {
        ip saddr 10.244.1.2 jump mark-for-masquerade
        meta l4proto tcp dnat to 10.244.1.2:8080
    }
    chain endpoint-2AZ33KU3-default_web_tcp_http__10_244_1_3_8080 {
        ip saddr 10.244.1.3 jump mark-for-masquerade
        meta l4proto tcp dnat to 10.244.1.3:8080
    }
    map service-ips {
        type ipv4_addr . inet_proto . inet_service : verdict
        elements = { 10.96.0.10 . tcp . 80 : goto service-CDGGSHYL-default_web_tcp_http }
    }
}
";
    let text = nft_ruleset(&[web(2)], "10.244.0.0/16");
    // The filter chains follow the services chain (checked on their own below).
    let filter = nft_filter(&[web(2)]);
    assert_eq!(text.matches(&filter).count(), 1);
    assert_eq!(text.replace(&filter, "").replace('\t', "    "), expected);
}

#[test]
fn nft_service_without_endpoints_has_no_empty_vmap() {
    let text = nft_ruleset(&[web(0)], "10.244.0.0/16");
    assert!(!text.contains("numgen"), "{text}");
    assert_eq!(text.matches('{').count(), text.matches('}').count());
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

fn empty() -> KpService {
    KpService {
        name: "empty".into(),
        cluster_ip: Ipv4Addr::new(10, 96, 0, 20),
        ..web(0)
    }
}

#[test]
fn iptables_filter_table_as_kube_proxy_writes_it() {
    let expected = r#"*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.96.0.20/32 -p tcp -m comment --comment "default/empty:http has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
"#;
    assert_eq!(iptables_filter(&[web(2), empty()]), expected);
    let whole = iptables_restore(&[web(2), empty()], "10.244.0.0/16");
    assert!(whole.starts_with("*filter\n") && whole.contains("COMMIT\n*nat\n"));
    assert_eq!(
        whole.matches("-j REJECT").count(),
        1,
        "only the Service without endpoints"
    );
}

#[test]
fn nft_filter_chains_as_kube_proxy_writes_them() {
    let text = nft_ruleset(&[web(2), empty()], "10.244.0.0/16");
    for chain in [
        "\tchain filter-prerouting {\n\t\ttype filter hook prerouting priority -110; policy accept;\n\t\tct state new jump firewall-check\n\t}\n",
        "\tchain filter-input {\n\t\ttype filter hook input priority -110; policy accept;\n\t\tct state new jump nodeport-endpoints-check\n\t\tct state new jump service-endpoints-check\n\t}\n",
        "\tchain filter-forward {\n\t\ttype filter hook forward priority -110; policy accept;\n\t\tct state new jump service-endpoints-check\n\t\tct state new jump cluster-ips-check\n\t}\n",
        "\tchain filter-output {\n\t\ttype filter hook output priority -110; policy accept;\n\t\tct state new jump service-endpoints-check\n\t\tct state new jump firewall-check\n\t}\n",
        "\tchain filter-output-post-dnat {\n\t\ttype filter hook output priority -90; policy accept;\n\t\tct state new jump cluster-ips-check\n\t}\n",
        "\tchain reject-chain {\n\t\treject\n\t}\n",
        "\tchain cluster-ips-check {\n\t\tip daddr @cluster-ips reject\n\t\tip daddr { 10.96.0.0/12 } drop\n\t}\n",
        "\tchain firewall-check {\n\t\tip daddr . meta l4proto . th dport vmap @firewall-ips\n\t}\n",
    ] {
        assert!(text.contains(chain), "{chain} missing from\n{text}");
    }
    assert!(text.contains(
        "\tset cluster-ips {\n\t\ttype ipv4_addr\n\t\telements = { 10.96.0.10, 10.96.0.20 }\n"
    ));
    assert!(text.contains("elements = { 10.96.0.20 . tcp . 80 : goto reject-chain }"));
    assert!(text.contains(
        "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports"
    ));
    for map in ["no-endpoint-nodeports", "firewall-ips", "service-nodeports"] {
        assert!(text.contains(&format!("\tmap {map} {{\n")), "{map}");
    }
    assert_eq!(text.matches('{').count(), text.matches('}').count());
    // Without Services: no empty element lists (nft rejects them).
    assert!(!nft_filter(&[]).contains("elements"));
}
