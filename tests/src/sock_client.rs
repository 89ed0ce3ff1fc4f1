//! Running the `sock-client` test binary (`src/bin/sock-client.rs`): it
//! joins a cgroup, then opens sockets to an address and prints one line per
//! exchange, `peer=ADDR reply=BACKEND`.

use std::{
    collections::BTreeMap,
    fmt::Display,
    io::{Read as _, Write as _},
    net::{IpAddr, TcpListener, UdpSocket},
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::{cgroup::TestCgroup, netns::Netns};

/// Runs `sock-client` (the test's `env!("CARGO_BIN_EXE_sock-client")`,
/// which only integration tests see) joining `cgroup` first, with `count`
/// exchanges of `mode` to `to` and `extra` arguments: in `ns`'s network
/// namespace (through `nsenter`, which keeps /sys and so the cgroup
/// visible), or in this one. Its lines; a failed run fails the test.
#[must_use]
pub fn run(
    bin: &str,
    ns: Option<&Netns>,
    cgroup: &TestCgroup,
    mode: &str,
    to: &dyn Display,
    count: usize,
    extra: &[&str],
) -> Vec<String> {
    let mut cmd = match ns {
        Some(ns) => {
            let mut cmd = Command::new("nsenter");
            cmd.arg(format!("--net=/run/netns/{}", ns.name()))
                .arg("--")
                .arg(bin);
            cmd
        }
        None => Command::new(bin),
    };
    let out = cmd
        .arg(cgroup.path())
        .args([mode, &to.to_string(), &count.to_string()])
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", Path::new(bin).display()));
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// How many exchanges each backend answered; every line must report `peer`
/// as the socket's peer.
#[must_use]
pub fn answers(lines: &[String], peer: &dyn Display) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for line in lines {
        let reply = line
            .strip_prefix(&format!("peer={peer} reply="))
            .unwrap_or_else(|| panic!("the socket reports {peer} and an answer: {line}"));
        *seen.entry(reply.to_string()).or_default() += 1;
    }
    seen
}

/// A `sock-client hold` process: it opens its sockets, prints a line per
/// socket and "ready", then waits for "go" on its standard input to use
/// them again. Killed on drop, so a failed test leaves no process behind.
pub struct Holding {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl Holding {
    /// Starts `sock-client` (see [`run`]) joining `cgroup`, with `hold`
    /// and `args`; returns it with the lines it printed before "ready".
    #[must_use]
    pub fn start(bin: &str, cgroup: &TestCgroup, args: &[String]) -> (Self, Vec<String>) {
        let mut child = Command::new(bin)
            .arg(cgroup.path())
            .arg("hold")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running {}: {e}", Path::new(bin).display()));
        let out = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut holding = Self { child, out };
        let opened = crate::traffic::lines_until(&mut holding.out, "ready");
        (holding, opened)
    }

    /// Tells it to go on and waits for it: the lines it printed after
    /// "ready". A failed run fails the test.
    #[must_use]
    pub fn finish(mut self) -> Vec<String> {
        use std::io::Write as _;
        self.child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(b"go\n")
            .unwrap();
        let rest = crate::traffic::lines_until(&mut self.out, "");
        assert!(self.child.wait().unwrap().success());
        rest
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Backends for the socket tests: a TCP and a UDP server on each address
/// given, answering with their own name ("b0", "b1", ... by address) until
/// stopped (dropped). They open their sockets in the calling thread's
/// network namespace.
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Their TCP and UDP ports, by backend index.
    pub ports: Vec<(u16, u16)>,
}

impl Servers {
    /// Starts the servers of `backends`, each on ports of its own.
    #[must_use]
    pub fn start(backends: &[IpAddr]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut ports = Vec::new();
        for (k, ip) in backends.iter().enumerate() {
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
