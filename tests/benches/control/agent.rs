//! The agent under test: started with `--source kube` on the test API
//! server (no interface: the control path alone), waited for, stopped.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use lb_tests::apiserver::TestApiServer;
use lb_userspace::datapath::cleanup;

/// The map-size flags for `services` Services of 10 endpoints: none up to
/// 10,001 (the defaults: 65,536 frontends, 262,144 backends, 2^24 slab
/// slots); beyond, 131,072 frontends, 2^20 backends and 2^27 slab slots
/// (512 MiB: every Service's table, and the tables a burst writes beside
/// the old ones).
pub fn capacity(services: u32) -> Vec<String> {
    if services <= 10_001 {
        return Vec::new();
    }
    [
        "--max-services",
        "131072",
        "--max-backends",
        "1048576",
        "--maglev-slab-slots",
        "134217728",
    ]
    .map(String::from)
    .to_vec()
}

/// Starts the agent on `server` with `capacity` (its map-size flags);
/// returns it, its pin dir, log path and kubeconfig.
pub fn start_agent(
    server: &TestApiServer,
    tag: &str,
    capacity: &[String],
) -> (std::process::Child, PathBuf, PathBuf, PathBuf) {
    let kubeconfig = std::env::temp_dir().join(format!("{tag}-kubeconfig"));
    server.write_kubeconfig(&kubeconfig).unwrap();
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{tag}"));
    let log = std::env::temp_dir().join(format!("{tag}-agent.log"));
    // No interface: the control path alone, in this namespace.
    let agent = Command::new(lb_tests::agent::agent_bin().unwrap())
        .args([
            "--log-level",
            "warn",
            "run",
            "--source",
            "kube",
            "--node-name",
            "bench",
            "--node-ip",
            "127.0.0.1",
        ])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--pin-dir")
        .arg(&pin_dir)
        .args(capacity)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("lb-agent");
    (agent, pin_dir, log, kubeconfig)
}

/// Reads the agent's stdout until it says it is ready: the first full sync
/// wrote every service.
pub fn wait_ready(agent: &mut std::process::Child, log: &Path) {
    let mut stdout = std::io::BufReader::new(agent.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    while !line.contains("lb-agent ready") {
        line.clear();
        let n = std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        assert!(
            n > 0,
            "agent exited before ready: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
}

/// Kills the agent and removes its pins and kubeconfig when dropped while
/// a round fails (its panic unwinding); nothing otherwise.
pub struct OnFailure {
    pid: u32,
    pin_dir: PathBuf,
    kubeconfig: PathBuf,
}

impl OnFailure {
    /// Guards agent `pid`, pinned at `pin_dir`.
    pub fn new(pid: u32, pin_dir: &Path, kubeconfig: &Path) -> Self {
        Self {
            pid,
            pin_dir: pin_dir.to_path_buf(),
            kubeconfig: kubeconfig.to_path_buf(),
        }
    }
}

impl Drop for OnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let pid = i32::try_from(self.pid).unwrap_or(i32::MAX);
        // SAFETY: our own child, not yet reaped (its `Child` is dropped
        // unwaited during the unwinding), so the pid is still its.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        cleanup(&self.pin_dir);
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

/// Stops the agent and removes its pins, kubeconfig and (unless
/// `LB_BENCH_KEEP_LOG`) its log.
pub fn stop_agent(mut agent: std::process::Child, pin_dir: &Path, log: &Path, kubeconfig: &Path) {
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(i32::try_from(agent.id()).unwrap(), libc::SIGTERM);
    }
    let _ = agent.wait();
    cleanup(pin_dir);
    let _ = std::fs::remove_file(kubeconfig);
    if std::env::var_os("LB_BENCH_KEEP_LOG").is_some() {
        eprintln!("agent log kept at {}", log.display());
    } else {
        let _ = std::fs::remove_file(log);
    }
}
