//! `cargo xtask demo`: a namespace cluster, the agent on `examples/`, real
//! traffic, a manifest edit, and the per-backend distribution before and after.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use anyhow::{bail, Result};
use lb_tests::{
    agent::{Agent, ManifestDir},
    topology::ClusterTopology,
    traffic::{http_distribution, udp_distribution, PodServers},
};

const WEB: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
const WEB_DNS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 53);
const EXTERNAL: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 20), 80);
const DEADLINE: Duration = Duration::from_mins(1);

fn print_distribution(title: &str, counts: &BTreeMap<String, usize>) {
    let total: usize = counts.values().sum();
    println!("  {title} ({total} requests)");
    for (who, n) in counts {
        #[allow(clippy::cast_precision_loss)]
        let share = 100.0 * *n as f64 / total.max(1) as f64;
        println!(
            "    {who:<14} {n:>4}  {share:>5.1}%  {}",
            "#".repeat(n * 40 / total.max(1))
        );
    }
}

fn main() -> Result<()> {
    lb_tests::require_root();
    lb_tests::require_bpffs();
    println!(
        "== building the cluster: client, node1 (pods 1a 1b 1c), node2 (pod 2a) on a LAN bridge"
    );
    let topo = ClusterTopology::new()?;
    let _servers = PodServers::start(&topo)?;
    let manifests = ManifestDir::with_examples()?;
    println!("== starting lb-agent in node1: XDP on eth0, TC on vpod*, manifests from examples/");
    let mut agent = Agent::start(&topo.node1, manifests.path())?;
    agent.wait_ready(Duration::from_secs(30))?;
    print!("{}", agent.status()?);

    println!("\n== traffic from the client (outside the cluster)");
    let before = http_distribution(&topo.client, WEB, 200, DEADLINE);
    print_distribution("HTTP to web-service 10.96.0.10:80", &before);
    print_distribution(
        "UDP to web-service 10.96.0.10:53 (replies from the service address)",
        &udp_distribution(&topo.client, WEB_DNS, 100, DEADLINE),
    );
    print_distribution(
        "HTTP to external-service 10.96.0.20:80 (manual Endpoints)",
        &http_distribution(&topo.client, EXTERNAL, 50, DEADLINE),
    );

    println!("\n== editing web-service.yaml: endpoint 10.244.1.4 (pod1c) removed");
    let web = manifests.read("web-service.yaml")?;
    let edited = web.replace(
        "  - addresses: [\"10.244.1.4\"]\n    conditions: {ready: true}\n    nodeName: node1\n",
        "",
    );
    if edited == web {
        bail!("examples/web-service.yaml no longer lists 10.244.1.4 the way the demo expects");
    }
    manifests.write("web-service.yaml", &edited)?;
    std::thread::sleep(Duration::from_secs(1));
    print!("{}", agent.status()?);
    let after = http_distribution(&topo.client, WEB, 200, DEADLINE);
    print_distribution("HTTP to web-service 10.96.0.10:80 after the edit", &after);

    let expected = ["pod1a", "pod1b", "pod2a"];
    let answered: usize = expected.iter().filter_map(|p| after.get(*p)).sum();
    if after.contains_key("pod1c") || answered != 200 {
        bail!("after the edit pod1c must get nothing and the others everything: {after:?}");
    }
    if !before.contains_key("pod1c") {
        bail!("before the edit all four pods should answer: {before:?}");
    }
    println!("\n== done: cleaning up (agent stopped, namespaces removed)");
    if !agent.stop() {
        bail!("lb-agent did not exit cleanly on SIGTERM");
    }
    drop(agent);
    drop(topo);
    Ok(())
}
