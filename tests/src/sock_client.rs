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
