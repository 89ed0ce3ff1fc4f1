//! `lb-agent run` refuses socket-level balancing flags that do not go
//! together, before it loads or attaches anything.

use std::process::Command;

fn run(extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_lb-agent"))
        .args([
            "run",
            "--manifests",
            "/nonexistent",
            "--node-ip",
            "192.0.2.1",
        ])
        .args(extra)
        .output()
        .expect("running lb-agent");
    assert!(!out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn socket_lb_host_needs_a_cgroup_and_a_cgroup_needs_host() {
    let err = run(&["--socket-lb", "host"]);
    assert!(err.contains("--socket-lb-cgroup"), "{err}");
    let err = run(&["--socket-lb-cgroup", "/sys/fs/cgroup/unified/x"]);
    assert!(err.contains("needs --socket-lb host"), "{err}");
}
