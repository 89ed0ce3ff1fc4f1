//! Socket-level balancing (`--socket-lb host`): the cgroup programs point a
//! socket of the node's namespace aimed at a Service at a backend when it
//! connects (or per send of an unconnected UDP socket), and the socket
//! reports the Service's address back (`getpeername`, `recvfrom`). Real
//! sockets of a client process moved into a test cgroup of its own (never
//! the machine's root), backends listening on loopback addresses, so every
//! packet stays on this machine. Needs root and a cgroup v2 hierarchy.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use lb_common::Event;
use lb_tests::{
    cgroup::TestCgroup,
    fixture::{apply, frontend, program},
    packet::TestDatapath,
    sock_client,
};
use lb_userspace::desired::Protocol;

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
/// The Service address: a loopback one, so that a socket the programs
/// failed to translate still never leaves the machine.
const VIP: Ipv4Addr = Ipv4Addr::new(127, 1, 0, 10);
/// The backends: two loopback addresses of this machine.
const BACKENDS: [Ipv4Addr; 2] = [Ipv4Addr::LOCALHOST, Ipv4Addr::new(127, 0, 0, 2)];
/// Connections per client run.
const CONNECTS: u32 = 24;

/// Backends that answer with their own name ("b0", "b1") until stopped.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Their TCP and UDP ports, by backend index.
    ports: Vec<(u16, u16)>,
}

impl Servers {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut ports = Vec::new();
        for (k, ip) in BACKENDS.iter().enumerate() {
            let name = format!("b{k}");
            let tcp = TcpListener::bind((*ip, 0)).unwrap();
            tcp.set_nonblocking(true).unwrap();
            let udp = UdpSocket::bind((*ip, 0)).unwrap();
            udp.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            ports.push((
                tcp.local_addr().unwrap().port(),
                udp.local_addr().unwrap().port(),
            ));
            let (stop_tcp, stop_udp, tcp_name) = (stop.clone(), stop.clone(), name.clone());
            threads.push(std::thread::spawn(move || {
                while !stop_tcp.load(Ordering::Relaxed) {
                    match tcp.accept() {
                        Ok((mut conn, _)) => {
                            conn.set_nonblocking(false).unwrap();
                            conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                            let mut line = [0u8; 6];
                            let _ = conn.read_exact(&mut line);
                            let _ = conn.write_all(tcp_name.as_bytes());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
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
            ports,
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Runs the client in `cgroup` and returns its lines.
fn client(cgroup: &TestCgroup, mode: &str, to: SocketAddr, count: u32) -> Vec<String> {
    client_in(cgroup, mode, to, count, &[])
}

/// [`client`] with more arguments (`other-netns`).
fn client_in(
    cgroup: &TestCgroup,
    mode: &str,
    to: SocketAddr,
    count: u32,
    extra: &[&str],
) -> Vec<String> {
    sock_client::run(
        env!("CARGO_BIN_EXE_sock-client"),
        None,
        cgroup,
        mode,
        &to,
        count as usize,
        extra,
    )
}

/// How many exchanges each backend answered; every line must report `peer`.
fn replies(lines: &[String], peer: SocketAddr) -> BTreeMap<String, usize> {
    sock_client::answers(lines, &peer)
}

#[test]
fn sockets_of_the_node_reach_a_service_and_see_its_address() {
    let cgroup = TestCgroup::new("socklb");
    let servers = Servers::start();
    let mut dp = TestDatapath::load_with_socket_lb("socket-lb", NODE, cgroup.path());
    let backends = |proto: usize| -> Vec<(Ipv4Addr, u16, bool)> {
        BACKENDS
            .iter()
            .zip(&servers.ports)
            .map(|(ip, ports)| (*ip, if proto == 0 { ports.0 } else { ports.1 }, true))
            .collect()
    };
    let mut planner = program(
        &mut dp,
        &[
            frontend(VIP, 80, Protocol::Tcp, &backends(0)),
            frontend(VIP, 53, Protocol::Udp, &backends(1)),
        ],
    );
    let web = SocketAddr::from((VIP, 80));
    let dns = SocketAddr::from((VIP, 53));

    let tcp = replies(&client(&cgroup, "tcp", web, CONNECTS), web);
    assert_eq!(
        tcp.keys().collect::<Vec<_>>(),
        ["b0", "b1"],
        "spread: {tcp:?}"
    );
    let udp = replies(&client(&cgroup, "udp", dns, CONNECTS), dns);
    assert_eq!(
        udp.keys().collect::<Vec<_>>(),
        ["b0", "b1"],
        "spread: {udp:?}"
    );
    let unconnected = replies(&client(&cgroup, "udp-unconnected", dns, CONNECTS), dns);
    assert_eq!(unconnected.values().sum::<usize>(), CONNECTS as usize);
    assert_eq!(
        dp.event(Event::SocketTranslated),
        u64::from(3 * CONNECTS),
        "one translation per connect or unconnected send"
    );

    // A socket of another network namespace (a pod's) in the same cgroup
    // is left to the per-packet path: not translated (its namespace has
    // no route anywhere, so it goes nowhere).
    let pod = client_in(&cgroup, "tcp", web, 1, &["other-netns"]);
    assert!(pod[0].starts_with("error="), "{pod:?}");
    assert_eq!(dp.event(Event::SocketTranslated), u64::from(3 * CONNECTS));

    // An edit removes backend b1: new sockets avoid it.
    apply(
        &mut dp,
        &mut planner,
        &[
            frontend(VIP, 80, Protocol::Tcp, &backends(0)[..1]),
            frontend(VIP, 53, Protocol::Udp, &backends(1)[..1]),
        ],
    );
    let tcp = replies(&client(&cgroup, "tcp", web, CONNECTS), web);
    assert_eq!(tcp.keys().collect::<Vec<_>>(), ["b0"], "{tcp:?}");

    // No backend at all: connect fails at once, nothing is sent anywhere.
    apply(
        &mut dp,
        &mut planner,
        &[frontend(VIP, 80, Protocol::Tcp, &[])],
    );
    let refused = client(&cgroup, "tcp", web, 1);
    assert!(
        refused[0].starts_with("error=") && refused[0].contains("not permitted"),
        "{refused:?}"
    );
    assert_eq!(dp.event(Event::SocketRefused), 1);
    drop(dp);
    drop(servers);
}
