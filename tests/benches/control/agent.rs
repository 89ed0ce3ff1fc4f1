//! The agent under test: started with `--source kube` on the test API
//! server (no interface: the control path alone), waited for, stopped.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use lb_tests::apiserver::TestApiServer;
use lb_userspace::datapath::cleanup;

/// Starts the agent on `server`; returns it, its pin dir and log path.
pub fn start_agent(
    server: &TestApiServer,
    tag: &str,
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
