//! The filter-table side of kube-proxy's rules: what it installs besides the
//! `nat` service path (forwarding accepts, conntrack INVALID drops, the load
//! balancer firewall and the checks for Services without endpoints), so the
//! comparison's packets cross the same chains as on a real node.

use std::fmt::Write as _;

use super::KpService;

/// The Service CIDR (kube-proxy drops traffic to its unallocated addresses).
pub const SERVICE_CIDR: &str = "10.96.0.0/12";

/// The `filter` table of kube-proxy's iptables mode, for `iptables-restore`:
/// its chains, the jumps to them from INPUT, FORWARD and OUTPUT in the order
/// kube-proxy's inserts leave them, KUBE-FORWARD's three rules, and a REJECT
/// in KUBE-SERVICES for each Service without endpoints.
#[must_use]
pub fn iptables_filter(services: &[KpService]) -> String {
    let mut out = String::from(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :KUBE-SERVICES - [0:0]\n:KUBE-EXTERNAL-SERVICES - [0:0]\n:KUBE-FORWARD - [0:0]\n\
         :KUBE-NODEPORTS - [0:0]\n:KUBE-PROXY-FIREWALL - [0:0]\n",
    );
    // kube-proxy inserts each jump at the top of its chain: the last of its
    // list ends up first.
    let new = "-m conntrack --ctstate NEW ";
    for (chain, extra, comment, target) in [
        (
            "INPUT",
            new,
            "kubernetes load balancer firewall",
            "KUBE-PROXY-FIREWALL",
        ),
        (
            "INPUT",
            "",
            "kubernetes health check service ports",
            "KUBE-NODEPORTS",
        ),
        (
            "INPUT",
            new,
            "kubernetes externally-visible service portals",
            "KUBE-EXTERNAL-SERVICES",
        ),
        (
            "FORWARD",
            new,
            "kubernetes load balancer firewall",
            "KUBE-PROXY-FIREWALL",
        ),
        ("FORWARD", "", "kubernetes forwarding rules", "KUBE-FORWARD"),
        (
            "FORWARD",
            new,
            "kubernetes service portals",
            "KUBE-SERVICES",
        ),
        (
            "FORWARD",
            new,
            "kubernetes externally-visible service portals",
            "KUBE-EXTERNAL-SERVICES",
        ),
        (
            "OUTPUT",
            new,
            "kubernetes load balancer firewall",
            "KUBE-PROXY-FIREWALL",
        ),
        ("OUTPUT", new, "kubernetes service portals", "KUBE-SERVICES"),
    ] {
        let _ = writeln!(
            out,
            "-A {chain} {extra}-m comment --comment \"{comment}\" -j {target}"
        );
    }
    for svc in services.iter().filter(|s| s.endpoints.is_empty()) {
        let _ = writeln!(
            out,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"{} has no endpoints\" -m tcp --dport {} -j REJECT --reject-with icmp-port-unreachable",
            svc.cluster_ip,
            svc.id(),
            svc.port
        );
    }
    out.push_str(
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         COMMIT\n",
    );
    out
}

/// The filter side of kube-proxy's nftables mode, inside `table ip
/// kube-proxy`: its filter base chains (priorities as numbers: `dstnat - 10`
/// is -110, `dstnat + 10` is -90), the check chains they jump to for new
/// connections, and the sets and maps those look up (the active cluster IPs;
/// `goto reject-chain` for each Service without endpoints).
#[must_use]
pub fn nft_filter(services: &[KpService]) -> String {
    let base = |name: &str, hook: &str, priority: i32, rules: &[&str]| {
        let mut chain = format!(
            "\tchain {name} {{\n\t\ttype filter hook {hook} priority {priority}; policy accept;\n"
        );
        for rule in rules {
            let _ = writeln!(chain, "\t\tct state new jump {rule}");
        }
        chain + "\t}\n"
    };
    let mut out = [
        base("filter-prerouting", "prerouting", -110, &["firewall-check"]),
        base(
            "filter-input",
            "input",
            -110,
            &["nodeport-endpoints-check", "service-endpoints-check"],
        ),
        base(
            "filter-forward",
            "forward",
            -110,
            &["service-endpoints-check", "cluster-ips-check"],
        ),
        base(
            "filter-output",
            "output",
            -110,
            &["service-endpoints-check", "firewall-check"],
        ),
        base(
            "filter-output-post-dnat",
            "output",
            -90,
            &["cluster-ips-check"],
        ),
    ]
    .concat();
    let _ = write!(
        out,
        "\tchain service-endpoints-check {{\n\t\tip daddr . meta l4proto . th dport vmap @no-endpoint-services\n\t}}\n\
         \tchain nodeport-endpoints-check {{\n\t\tip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports\n\t}}\n\
         \tchain firewall-check {{\n\t\tip daddr . meta l4proto . th dport vmap @firewall-ips\n\t}}\n\
         \tchain reject-chain {{\n\t\treject\n\t}}\n\
         \tchain cluster-ips-check {{\n\t\tip daddr @cluster-ips reject\n\t\tip daddr {{ {SERVICE_CIDR} }} drop\n\t}}\n"
    );
    let ips: Vec<String> = services.iter().map(|s| s.cluster_ip.to_string()).collect();
    let unique: std::collections::BTreeSet<&String> = ips.iter().collect();
    out.push_str("\tset cluster-ips {\n\t\ttype ipv4_addr\n");
    if !unique.is_empty() {
        let list: Vec<&str> = unique.iter().map(|s| s.as_str()).collect();
        let _ = writeln!(out, "\t\telements = {{ {} }}", list.join(", "));
    }
    out.push_str("\t}\n\tmap no-endpoint-services {\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n");
    let rejects: Vec<String> = services
        .iter()
        .filter(|s| s.endpoints.is_empty())
        .map(|s| format!("{} . tcp . {} : goto reject-chain", s.cluster_ip, s.port))
        .collect();
    if !rejects.is_empty() {
        let _ = writeln!(out, "\t\telements = {{ {} }}", rejects.join(", "));
    }
    out.push_str(
        "\t}\n\tmap no-endpoint-nodeports {\n\t\ttype inet_proto . inet_service : verdict\n\t}\n\
         \tmap firewall-ips {\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n\t}\n\
         \tmap service-nodeports {\n\t\ttype inet_proto . inet_service : verdict\n\t}\n",
    );
    out
}
