//! Socket-level balancing closes what a removed backend holds: a connected
//! socket keeps the backend its `connect` chose (no hook runs per send), so
//! when an edit removes the backend the agent aborts the sockets its
//! programs pointed there (`SOCK_DESTROY`) and the application reconnects
//! to a live one. Real sockets of a client process in a test cgroup of its
//! own, backends on loopback addresses; needs root and cgroup v2.

use std::{
    collections::BTreeMap,
    io::{BufReader, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{Agent, ManifestDir},
    cgroup::TestCgroup,
    fixture::{apply, frontend, program},
    netns::Netns,
    packet::TestDatapath,
    traffic::lines_until,
};
use lb_userspace::desired::{DesiredFrontend, DesiredState, Frontend, Protocol};

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
/// The Service address, on loopback.
const VIP: Ipv4Addr = Ipv4Addr::new(127, 1, 0, 11);
/// b0 stays, b1 is removed.
const BACKENDS: [Ipv4Addr; 2] = [Ipv4Addr::LOCALHOST, Ipv4Addr::new(127, 0, 0, 2)];
/// Sockets of each protocol through the Service: some land on each backend.
const SOCKETS: usize = 16;

/// Backends that answer every message with their name, on connections kept
/// open, until stopped.
struct Echo {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Their addresses.
    addrs: Vec<IpAddr>,
    /// (TCP, UDP) ports by backend.
    ports: Vec<(u16, u16)>,
}

impl Echo {
    /// Starts them on `addrs` and `port` (0: any), in the calling thread's
    /// namespace; the k-th answers "b<k>".
    fn start(addrs: &[IpAddr], port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (mut threads, mut ports) = (Vec::new(), Vec::new());
        for (k, ip) in addrs.iter().enumerate() {
            let name = format!("b{k}");
            let tcp = TcpListener::bind((*ip, port)).unwrap();
            tcp.set_nonblocking(true).unwrap();
            let udp = UdpSocket::bind((*ip, port)).unwrap();
            udp.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            ports.push((
                tcp.local_addr().unwrap().port(),
                udp.local_addr().unwrap().port(),
            ));
            let (stop_tcp, stop_udp, tcp_name) = (stop.clone(), stop.clone(), name.clone());
            threads.push(std::thread::spawn(move || {
                let mut conns = Vec::new();
                while !stop_tcp.load(Ordering::Relaxed) {
                    match tcp.accept() {
                        Ok((conn, _)) => {
                            let (stop, name) = (stop_tcp.clone(), tcp_name.clone());
                            conns.push(std::thread::spawn(move || serve(conn, &name, &stop)));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
                for conn in conns {
                    let _ = conn.join();
                }
            }));
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while !stop_udp.load(Ordering::Relaxed) {
                    if let Ok((_, from)) = udp.recv_from(&mut buf) {
                        let _ = udp.send_to(name.as_bytes(), from);
                    }
                }
            }));
        }
        Self {
            stop,
            threads,
            addrs: addrs.to_vec(),
            ports,
        }
    }
}

/// Answers each read on `conn` with `name` until its end or `stop`.
fn serve(mut conn: std::net::TcpStream, name: &str, stop: &AtomicBool) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {
                if conn.write_all(name.as_bytes()).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A `sock-client hold` run: its sockets open, waiting for the go.
struct Holder {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
    /// (kind, n) -> backend that answered the first exchange.
    opened: BTreeMap<(String, usize), String>,
}

impl Holder {
    /// Sockets to `vip` (TCP 80, UDP 53), and directly to backend b1.
    fn start(cgroup: &TestCgroup, echo: &Echo, vip: IpAddr, netns: Option<&str>) -> Self {
        let direct = |k: usize, tcp: bool| {
            let (t, u) = echo.ports[k];
            SocketAddr::from((echo.addrs[k], if tcp { t } else { u })).to_string()
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_sock-client"))
            .arg(cgroup.path())
            .arg("hold")
            .arg(SocketAddr::from((vip, 80)).to_string())
            .arg(SocketAddr::from((vip, 53)).to_string())
            .arg(SOCKETS.to_string())
            .args([direct(1, true), direct(1, false)])
            .args(netns)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("running sock-client");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut opened = BTreeMap::new();
        for line in lines_until(&mut out, "ready") {
            let [_, kind, n, reply] = fields(&line);
            opened.insert((kind, n.parse().unwrap()), reply);
        }
        Self { child, out, opened }
    }

    /// Lets it try every socket again; returns its `after` and `reconnect`
    /// lines by (kind, n).
    fn finish(mut self) -> (BTreeMap<(String, usize), String>, Vec<String>) {
        self.child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let rest = lines_until(&mut self.out, "");
        let status = self.child.wait().unwrap();
        assert!(status.success(), "sock-client: {status}");
        let (mut after, mut reconnect) = (BTreeMap::new(), Vec::new());
        for line in rest {
            let [what, kind, n, reply] = fields(&line);
            if what == "after" {
                after.insert((kind, n.parse().unwrap()), reply);
            } else {
                reconnect.push(reply);
            }
        }
        (after, reconnect)
    }
}

impl Drop for Holder {
    /// A test that fails leaves no client behind (its cgroup can go).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fields(line: &str) -> [String; 4] {
    let mut it = line.splitn(4, ' ').map(str::to_string);
    std::array::from_fn(|_| it.next().unwrap_or_else(|| panic!("a short line: {line}")))
}

/// The Service: TCP 80 and UDP 53 on `backends` (indices into [`BACKENDS`]).
fn state(echo: &Echo, backends: &[usize]) -> Vec<(Frontend, DesiredFrontend)> {
    let list = |tcp: bool| -> Vec<(Ipv4Addr, u16, bool)> {
        backends
            .iter()
            .map(|&k| {
                let (t, u) = echo.ports[k];
                let IpAddr::V4(ip) = echo.addrs[k] else {
                    panic!("IPv4 backends")
                };
                (ip, if tcp { t } else { u }, true)
            })
            .collect()
    };
    vec![
        frontend(VIP, 80, Protocol::Tcp, &list(true)),
        frontend(VIP, 53, Protocol::Udp, &list(false)),
    ]
}

/// How many sockets of `kind` opened on `backend`.
fn on(opened: &BTreeMap<(String, usize), String>, kind: &str, backend: &str) -> usize {
    opened
        .iter()
        .filter(|((k, _), b)| k == kind && *b == backend)
        .count()
}

#[test]
fn removing_a_backend_closes_the_sockets_balanced_to_it_and_no_others() {
    let cgroup = TestCgroup::new("sockclose");
    let echo = Echo::start(&BACKENDS.map(IpAddr::V4), 0);
    let mut dp = TestDatapath::load_with_socket_lb("sock-close", NODE, cgroup.path());
    let mut planner = program(&mut dp, &state(&echo, &[0, 1]));
    let holder = Holder::start(&cgroup, &echo, IpAddr::V4(VIP), None);
    let opened = holder.opened.clone();
    check_spread(&opened);

    // The edit: b1 leaves the Service. The maps first, then the sockets.
    let started = Instant::now();
    let before: DesiredState = state(&echo, &[0, 1]).into_iter().collect();
    let after: DesiredState = state(&echo, &[0]).into_iter().collect();
    let gone = lb_userspace::gone::gone(&before, &after);
    assert_eq!(gone.len(), 2, "b1 of each frontend: {gone:?}");
    apply(&mut dp, &mut planner, &state(&echo, &[0]));
    let closed = dp
        .datapath_mut()
        .close_sockets(&gone, &[])
        .expect("socket LB is on");
    let took = started.elapsed();
    let on_b1 = on(&opened, "svc-tcp", "b1") + on(&opened, "svc-udp", "b1");
    assert_eq!(closed.destroyed, on_b1 as u64, "{closed:?}");
    assert_eq!(closed.failed, 0);
    // Bounded (no hang on the sock_diag walk), not timed: passes share the cores.
    assert!(took < Duration::from_secs(5), "{took:?}");
    eprintln!("applied and closed {on_b1} sockets in {took:?}");

    check_closed(&opened, holder);
    // Nothing left to close.
    assert_eq!(
        dp.datapath_mut()
            .close_sockets(&gone, &[])
            .unwrap()
            .destroyed,
        0
    );
    drop(dp);
    drop(echo);
}

/// Sockets through the Service went to both backends; the direct ones to b1.
fn check_spread(opened: &BTreeMap<(String, usize), String>) {
    for kind in ["svc-tcp", "svc-udp"] {
        assert!(
            on(opened, kind, "b0") > 0 && on(opened, kind, "b1") > 0,
            "{kind} on both backends: {opened:?}"
        );
    }
    assert_eq!(on(opened, "direct-tcp", "b1"), 1);
    assert_eq!(on(opened, "direct-udp", "b1"), 1);
}

/// After b1 left the Service: the sockets balanced to it fail, every other
/// one (b0's, those connected to b1 directly) still answers, and each
/// reconnect lands on b0.
fn check_closed(opened: &BTreeMap<(String, usize), String>, holder: Holder) {
    let (after, reconnect) = holder.finish();
    for ((kind, n), was) in opened {
        let now = &after[&(kind.clone(), *n)];
        if kind.starts_with("svc") && was == "b1" {
            assert!(now.starts_with("error="), "{kind} {n} closed: {now}");
        } else {
            assert_eq!(now, was, "{kind} {n} stays open");
        }
    }
    let errors: std::collections::BTreeSet<_> = after
        .iter()
        .filter(|(_, now)| now.starts_with("error="))
        .map(|((kind, _), now)| format!("{kind}: {now}"))
        .collect();
    eprintln!("the closed sockets saw {errors:?}");
    let on_b1 = on(opened, "svc-tcp", "b1") + on(opened, "svc-udp", "b1");
    assert_eq!(reconnect.len(), on_b1);
    assert!(reconnect.iter().all(|r| r == "b0"), "{reconnect:?}");
}

/// The agent tests' Service addresses and backends, in a namespace of their own.
const AGENT_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 9, 10);
const AGENT_BACKENDS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 244, 9, 1), Ipv4Addr::new(10, 244, 9, 2)];
const AGENT_VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 9, 0, 0, 0, 0, 0x10);
const AGENT_BACKENDS6: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0xfd00, 0x244, 9, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0xfd00, 0x244, 9, 0, 0, 0, 0, 2),
];

/// Service `web` at `vip` (TCP 80 and UDP 53, both to port 8080) on
/// `endpoints`, all of `vip`'s family.
fn web(vip: IpAddr, endpoints: &[IpAddr]) -> String {
    let family = if vip.is_ipv4() { "IPv4" } else { "IPv6" };
    let mut manifest = format!(
        r"apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  ipFamilies: [{family}]
  clusterIP: {vip}
  ports:
  - {{name: http, port: 80, protocol: TCP, targetPort: 8080}}
  - {{name: dns, port: 53, protocol: UDP, targetPort: 8080}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: {family}
ports:
- {{name: http, port: 8080, protocol: TCP}}
- {{name: dns, port: 8080, protocol: UDP}}
endpoints:
"
    );
    for ip in endpoints {
        manifest += &[
            "- {addresses: [\"",
            &ip.to_string(),
            "\"], nodeName: node1, conditions: {ready: true}}\n",
        ]
        .concat();
    }
    manifest
}

#[test]
fn an_edit_through_the_agent_closes_the_sockets_of_the_removed_backend() {
    let backends = AGENT_BACKENDS.map(IpAddr::V4);
    closes_through_the_agent(IpAddr::V4(AGENT_VIP), backends, &[]);
}

/// IPv6's twin: the agent finds the backend an IPv6 frontend lost and
/// closes the IPv6 sockets its programs pointed there (`SOCK_REVERSE6`).
#[test]
fn an_ipv6_edit_through_the_agent_closes_the_ipv6_sockets_of_the_removed_backend() {
    let backends = AGENT_BACKENDS6.map(IpAddr::V6);
    closes_through_the_agent(
        IpAddr::V6(AGENT_VIP6),
        backends,
        &["--node-ip", "fd00:244:9::1"],
    );
}

/// An agent in a namespace of its own serving `web` at `vip` over
/// `backends` (on the namespace's loopback) with socket-level balancing; a
/// client holds sockets through the Service and to b1 directly; b1 leaves
/// the slice: the agent closes the sockets it balanced to b1, and only
/// those. The node's IPv4 address is `AGENT_BACKENDS[0]`; `extra`: more
/// agent arguments.
fn closes_through_the_agent(vip: IpAddr, backends: [IpAddr; 2], extra: &[&str]) {
    let cgroup = TestCgroup::new("sockagent");
    let node = Netns::new("sockagent").unwrap();
    // The backends' addresses on the namespace's loopback: nothing leaves it.
    node.exec(&["ip", "link", "set", "lo", "up"]).unwrap();
    let node_ip = IpAddr::V4(AGENT_BACKENDS[0]);
    let mut own = backends.to_vec();
    if !own.contains(&node_ip) {
        own.push(node_ip);
    }
    for ip in own {
        let cidr = format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 });
        node.exec(&["ip", "addr", "add", &cidr, "dev", "lo", "nodad"])
            .unwrap();
    }
    let echo = node.run(move || Echo::start(&backends, 8080)).unwrap();
    let manifests = ManifestDir::new().unwrap();
    manifests.write("web.yaml", &web(vip, &backends)).unwrap();
    let dir = manifests.path().to_str().unwrap();
    let cg = cgroup.path().to_str().unwrap();
    let node_ip = node_ip.to_string();
    let mut args = vec![
        "--manifests",
        dir,
        "--node-ip",
        &node_ip,
        "--socket-lb",
        "host",
        "--socket-lb-cgroup",
        cg,
    ];
    args.extend(extra);
    let mut agent = Agent::start_bare(&node, &args).unwrap();
    agent.wait_ready(Duration::from_secs(30)).unwrap();
    let netns = format!("/run/netns/{}", node.name());
    let holder = Holder::start(&cgroup, &echo, vip, Some(&netns));
    let opened = holder.opened.clone();
    check_spread(&opened);
    let on_b1 = on(&opened, "svc-tcp", "b1") + on(&opened, "svc-udp", "b1");

    // The edit: b1 leaves the EndpointSlice.
    let started = Instant::now();
    manifests
        .write("web.yaml", &web(vip, &backends[..1]))
        .unwrap();
    let expect = format!("destroyed={on_b1}");
    while !agent.log().contains(&expect) && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = started.elapsed();
    assert!(agent.log().contains(&expect), "{}", agent.log());
    eprintln!("the agent closed {on_b1} sockets {took:?} after the edit");
    check_closed(&opened, holder);
    assert!(agent.stop(), "a clean exit");
    drop(echo);
}
