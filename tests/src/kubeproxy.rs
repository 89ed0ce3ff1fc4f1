//! The rules kube-proxy would install for a set of Services, in its iptables
//! and nftables modes (the `nat` service path and the filter-table chains),
//! and the same Services as manifests for our agent: the end-to-end
//! benchmark's comparison.

mod filter;

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
};

use sha2::{Digest, Sha256};

pub use filter::{iptables_filter, nft_filter, SERVICE_CIDR};

/// One TCP Service port with its endpoints, as kube-proxy sees it.
#[derive(Clone, Debug)]
pub struct KpService {
    /// Namespace of the Service.
    pub namespace: String,
    /// Name of the Service.
    pub name: String,
    /// Name of the port.
    pub port_name: String,
    /// The cluster IP.
    pub cluster_ip: Ipv4Addr,
    /// The service port.
    pub port: u16,
    /// Ready endpoints (all on one target port).
    pub endpoints: Vec<SocketAddrV4>,
    /// The node the endpoints run on, if known (the agent treats endpoints
    /// on its own node as local: no SNAT).
    pub node_name: Option<String>,
}

impl KpService {
    /// kube-proxy's `ServicePortName` string: `ns/name:port`, or `ns/name`
    /// for an unnamed port.
    fn id(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{}/{}:{}", self.namespace, self.name, self.port_name)
        }
    }
}

/// kube-proxy's chain-name hash: the first 16 characters of the base32
/// (RFC 4648, uppercase) encoding of the SHA-256 of `s`.
#[must_use]
pub fn chain_hash(s: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(s.as_bytes());
    // 16 characters of 5 bits are the first 80 bits: 10 bytes.
    let bits = digest[..10]
        .iter()
        .fold(0_u128, |acc, &b| (acc << 8) | u128::from(b));
    (0..16)
        .map(|i| {
            let index = (bits >> (75 - 5 * i)) & 31;
            char::from(ALPHABET[usize::try_from(index).unwrap_or(0)])
        })
        .collect()
}

fn svc_chain(svc: &KpService) -> String {
    format!("KUBE-SVC-{}", chain_hash(&format!("{}tcp", svc.id())))
}

fn sep_chain(svc: &KpService, ep: SocketAddrV4) -> String {
    format!("KUBE-SEP-{}", chain_hash(&format!("{}tcp{ep}", svc.id())))
}

/// Input for `iptables-restore`: the `filter` table (see [`iptables_filter`])
/// and then the whole `nat` table in kube-proxy's iptables-mode layout, as
/// kube-proxy writes them.
#[must_use]
pub fn iptables_restore(services: &[KpService], cluster_cidr: &str) -> String {
    format!(
        "{}{}",
        iptables_filter(services),
        iptables_nat(services, cluster_cidr)
    )
}

/// The `nat` table in kube-proxy's iptables-mode layout (KUBE-SERVICES ->
/// KUBE-SVC-* with `statistic` probabilities -> KUBE-SEP-* DNAT, masquerade
/// marks for traffic from outside `cluster_cidr` and for hairpin).
#[must_use]
pub fn iptables_nat(services: &[KpService], cluster_cidr: &str) -> String {
    let mut chains = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n\
         :KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n",
    );
    let mut rules = String::from(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n",
    );
    let mut per_service = String::new();
    for svc in services {
        let (id, svc_chain) = (svc.id(), svc_chain(svc));
        let _ = writeln!(chains, ":{svc_chain} - [0:0]");
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"{id} cluster IP\" -m tcp --dport {} -j {svc_chain}",
            svc.cluster_ip, svc.port
        );
        let _ = writeln!(
            per_service,
            "-A {svc_chain} ! -s {cluster_cidr} -d {}/32 -p tcp -m comment --comment \"{id} cluster IP\" -m tcp --dport {} -j KUBE-MARK-MASQ",
            svc.cluster_ip, svc.port
        );
        let n = svc.endpoints.len();
        for (i, &ep) in svc.endpoints.iter().enumerate() {
            let sep = sep_chain(svc, ep);
            let _ = writeln!(chains, ":{sep} - [0:0]");
            let statistic = if i + 1 < n {
                #[allow(clippy::cast_precision_loss)] // endpoint counts are small
                let p = 1.0 / (n - i) as f64;
                format!(" -m statistic --mode random --probability {p:.10}")
            } else {
                String::new()
            };
            let _ = writeln!(
                per_service,
                "-A {svc_chain} -m comment --comment \"{id} -> {ep}\"{statistic} -j {sep}"
            );
            let _ = writeln!(
                per_service,
                "-A {sep} -s {}/32 -m comment --comment {id} -j KUBE-MARK-MASQ\n\
                 -A {sep} -p tcp -m comment --comment {id} -m tcp -j DNAT --to-destination {ep}",
                ep.ip()
            );
        }
    }
    rules.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    format!("{chains}{rules}{per_service}COMMIT\n")
}

fn nft_name(kind: &str, svc: &KpService, ep: Option<SocketAddrV4>) -> String {
    let readable = format!("{}_{}_tcp_{}", svc.namespace, svc.name, svc.port_name);
    let hashed = match ep {
        Some(ep) => chain_hash(&format!("{}tcp{ep}", svc.id())),
        None => chain_hash(&format!("{}tcp", svc.id())),
    };
    match ep {
        Some(ep) => format!(
            "{kind}-{}-{readable}__{}_{}",
            &hashed[..8],
            ep.ip().to_string().replace('.', "_"),
            ep.port()
        ),
        None => format!("{kind}-{}-{readable}", &hashed[..8]),
    }
}

/// Input for `nft -f`: table `ip kube-proxy` in kube-proxy's nftables-mode
/// layout (a verdict map from address, protocol and port to the service
/// chain, then the node-port map for local addresses; `numgen random`
/// picking the endpoint chain; masquerade marks; the filter chains of
/// [`nft_filter`]). Replaces an existing table of that name.
#[must_use]
pub fn nft_ruleset(services: &[KpService], cluster_cidr: &str) -> String {
    let mut out = String::from(
        "table ip kube-proxy {}\ndelete table ip kube-proxy\ntable ip kube-proxy {\n\
         \tchain mark-for-masquerade {\n\t\tmeta mark set meta mark or 0x4000\n\t}\n\
         \tchain masquerading {\n\t\tmeta mark & 0x4000 == 0 return\n\
         \t\tmeta mark set meta mark xor 0x4000\n\t\tmasquerade fully-random\n\t}\n\
         \tchain nat-prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tjump services\n\t}\n\
         \tchain nat-output {\n\t\ttype nat hook output priority -100; policy accept;\n\t\tjump services\n\t}\n\
         \tchain nat-postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tjump masquerading\n\t}\n\
         \tchain services {\n\t\tip daddr . meta l4proto . th dport vmap @service-ips\n\
         \t\tfib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports\n\t}\n",
    );
    out.push_str(&nft_filter(services));
    let mut elements = Vec::new();
    for svc in services {
        let chain = nft_name("service", svc, None);
        elements.push(format!(
            "{} . tcp . {} : goto {chain}",
            svc.cluster_ip, svc.port
        ));
        let targets: Vec<String> = svc
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, &ep)| format!("{i} : goto {}", nft_name("endpoint", svc, Some(ep))))
            .collect();
        let _ = writeln!(
            out,
            "\tchain {chain} {{\n\t\tip daddr {} tcp dport {} ip saddr != {cluster_cidr} jump mark-for-masquerade",
            svc.cluster_ip,
            svc.port,
        );
        // Without endpoints the chain only marks (nft rejects an empty vmap).
        if !targets.is_empty() {
            let _ = writeln!(
                out,
                "\t\tnumgen random mod {} vmap {{ {} }}",
                targets.len(),
                targets.join(", ")
            );
        }
        out.push_str("\t}\n");
        for &ep in &svc.endpoints {
            let _ = write!(
                out,
                "\tchain {} {{\n\t\tip saddr {} jump mark-for-masquerade\n\
                 \t\tmeta l4proto tcp dnat to {ep}\n\t}}\n",
                nft_name("endpoint", svc, Some(ep)),
                ep.ip()
            );
        }
    }
    let _ = write!(
        out,
        "\tmap service-ips {{\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n\
         \t\telements = {{ {} }}\n\t}}\n}}\n",
        elements.join(",\n\t\t\t")
    );
    out
}

/// The same Services as manifests for our agent: a `v1` Service and a
/// `discovery.k8s.io/v1` EndpointSlice each, as multi-document YAML.
#[must_use]
pub fn manifests_yaml(services: &[KpService]) -> String {
    let mut out = String::new();
    for svc in services {
        let target = svc.endpoints.first().map_or(svc.port, SocketAddrV4::port);
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n\
             spec:\n  type: ClusterIP\n  clusterIP: {ip}\n  ports:\n  - {{name: {pn}, protocol: TCP, port: {port}, targetPort: {target}}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {name}-1, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: IPv4\nports: [{{name: {pn}, protocol: TCP, port: {target}}}]\nendpoints:\n",
            name = svc.name,
            ns = svc.namespace,
            ip = svc.cluster_ip,
            pn = svc.port_name,
            port = svc.port,
        );
        let node = svc
            .node_name
            .as_ref()
            .map(|n| format!(", nodeName: {n}"))
            .unwrap_or_default();
        for ep in &svc.endpoints {
            let _ = writeln!(
                out,
                "- {{addresses: [\"{}\"], conditions: {{ready: true}}{node}}}",
                ep.ip()
            );
        }
    }
    out
}

#[cfg(test)]
mod tests;
