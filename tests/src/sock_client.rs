//! Running the `sock-client` test binary (`src/bin/sock-client.rs`): it
//! joins a cgroup, then opens sockets to an address and prints one line per
//! exchange, `peer=ADDR reply=BACKEND`.

use std::{collections::BTreeMap, fmt::Display, path::Path, process::Command};

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
