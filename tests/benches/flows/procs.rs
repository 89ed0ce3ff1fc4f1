//! The bench's helper processes, seen from the bench: `Proc` spawns this
//! binary in a role inside a namespace (see `roles`), sends it commands and
//! reads its answers; the helpers of several processes' answers.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use lb_tests::netns::Netns;
use serde_json::Value;

/// The role a re-executed helper plays.
pub(crate) const ROLE_ENV: &str = "LB_FLOWS_ROLE";
/// The namespace a helper enters (`/run/netns/...`).
pub(crate) const NETNS_ENV: &str = "LB_FLOWS_NETNS";
/// The bench's pid: a helper whose parent is another process exits.
pub(crate) const PARENT_ENV: &str = "LB_FLOWS_PARENT";
/// How long a helper may live: until the bench's deadline.
pub(crate) const LIFETIME_ENV: &str = "LB_FLOWS_LIFETIME_MS";

/// A helper process: this bench binary in a role, inside a namespace;
/// commands on its stdin, one JSON line per answer on its stdout. Killed on drop.
pub(crate) struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    /// `role` of this binary in `ns`, with `env`, living until `deadline` at most.
    pub(crate) fn spawn(
        name: &str,
        role: &str,
        ns: &Netns,
        env: &[(&str, String)],
        deadline: Instant,
    ) -> Result<Self> {
        let lifetime = deadline.saturating_duration_since(Instant::now());
        ensure!(!lifetime.is_zero(), "the benchmark's deadline passed");
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.env(ROLE_ENV, role)
            .env(NETNS_ENV, format!("/run/netns/{}", ns.name()))
            .env(PARENT_ENV, std::process::id().to_string())
            .env(LIFETIME_ENV, lifetime.as_millis().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let stdout = child.stdout.take().context("a piped stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child,
            lines,
        })
    }

    fn send(&mut self, command: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        writeln!(stdin, "{command}")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("{}: {command}", self.name))
    }

    /// The next answer, within `wait`.
    pub(crate) fn recv(&mut self, wait: Duration) -> Result<Value> {
        let line = self
            .lines
            .recv_timeout(wait)
            .with_context(|| format!("{} did not answer within {wait:?}", self.name))?;
        let value: Value =
            serde_json::from_str(&line).with_context(|| format!("{}: {line}", self.name))?;
        if let Some(e) = value.get("error") {
            bail!("{}: {e}", self.name);
        }
        Ok(value)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `command` to every process, then collects their answers.
pub(crate) fn all(procs: &mut [Proc], command: &str, wait: Duration) -> Result<Vec<Value>> {
    for p in procs.iter_mut() {
        p.send(command)?;
    }
    procs.iter_mut().map(|p| p.recv(wait)).collect()
}

/// The sum of `key` over the answers.
pub(crate) fn sum_field(answers: &[Value], key: &str) -> u64 {
    answers.iter().filter_map(|a| a[key].as_u64()).sum()
}

/// The answers' failure reasons, counts summed.
pub(crate) fn merge_reasons(answers: &[Value]) -> BTreeMap<String, u64> {
    let mut all = BTreeMap::new();
    for a in answers {
        for (k, v) in a["reasons"].as_object().into_iter().flatten() {
            *all.entry(k.clone()).or_insert(0) += v.as_u64().unwrap_or(0);
        }
    }
    all
}
