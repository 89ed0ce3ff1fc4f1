//! The agent under test, run as a process inside node1's namespace.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    netns::Netns,
    topology::{NODE1_POD_IFACES, NODE1_UPLINK},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A Service (10.96.0.40: TCP 80 to 8080, UDP 53 to 5353) whose only
/// endpoint is pod2a, on node2: every flow from the client through node1 is
/// translated to a port of the SNAT pool (`tests/e2e_snat.rs`, the flows bench).
pub const REMOTE_ONLY: &str = "apiVersion: v1\nkind: Service\n\
metadata: {name: remote-only, namespace: default}\n\
spec:\n  clusterIP: 10.96.0.40\n  ports:\n  - {name: http, port: 80, protocol: TCP, targetPort: 8080}\n  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}\n\
---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
metadata: {name: remote-only-1, namespace: default, labels: {kubernetes.io/service-name: remote-only}}\n\
addressType: IPv4\nports:\n- {name: http, port: 8080, protocol: TCP}\n- {name: dns, port: 5353, protocol: UDP}\n\
endpoints:\n- {addresses: [\"10.244.2.2\"], nodeName: node2, conditions: {ready: true}}\n";

/// A ClusterIP Service `name` at `ip` whose only endpoint is `pod_ip` on
/// `node`, with UDP `ports` given as (name, port, target port).
#[must_use]
pub fn udp_service_on_one_pod(
    name: &str,
    ip: std::net::Ipv4Addr,
    ports: &[(&str, u16, u16)],
    pod_ip: std::net::Ipv4Addr,
    node: &str,
) -> String {
    use std::fmt::Write as _;
    let (mut service_ports, mut slice_ports) = (String::new(), String::new());
    for (port_name, port, target) in ports {
        // Writing to a String cannot fail.
        let _ = writeln!(
            service_ports,
            "  - {{name: {port_name}, port: {port}, protocol: UDP, targetPort: {target}}}"
        );
        let _ = writeln!(
            slice_ports,
            "- {{name: {port_name}, port: {target}, protocol: UDP}}"
        );
    }
    format!(
        "apiVersion: v1\nkind: Service\n\
metadata: {{name: {name}, namespace: default}}\n\
spec:\n  clusterIP: {ip}\n  ports:\n{service_ports}\
---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\n\
addressType: IPv4\nports:\n{slice_ports}\
endpoints:\n- {{addresses: [\"{pod_ip}\"], nodeName: {node}, conditions: {{ready: true}}}}\n"
    )
}

/// The uplink hook a test gets unless it chooses one (or
/// `LB_TEST_UPLINK_HOOK=tc` asks for [`TEST_BED_TC`], see [`test_bed_hook`]):
/// XDP, allowed on node1's veth uplink because the topology completes
/// checksums at every sender beyond it (TX offload off on the LAN hosts and
/// node2's pods), so the XDP program is what the end-to-end tests exercise.
/// The agent's own default (`auto`) takes TC on a veth;
/// `tests/e2e_checksums.rs` runs it where senders leave their checksums
/// partial.
pub const TEST_BED_XDP: [&str; 3] = ["--uplink-hook", "xdp", "--xdp-on-veth"];

/// The uplink program at TC ingress: the hook a test gets unless it chooses
/// one, with `LB_TEST_UPLINK_HOOK=tc`.
pub const TEST_BED_TC: [&str; 2] = ["--uplink-hook", "tc"];

/// The uplink hook arguments of tests that choose none: `LB_TEST_UPLINK_HOOK`
/// (`xdp`, the default when unset or empty: [`TEST_BED_XDP`]; or `tc`:
/// [`TEST_BED_TC`]), so the same end-to-end tests run on each hook.
///
/// # Panics
/// On any other value of `LB_TEST_UPLINK_HOOK`.
#[must_use]
pub fn test_bed_hook() -> &'static [&'static str] {
    match std::env::var("LB_TEST_UPLINK_HOOK").as_deref() {
        Err(_) | Ok("" | "xdp") => &TEST_BED_XDP,
        Ok("tc") => &TEST_BED_TC,
        Ok(other) => panic!("LB_TEST_UPLINK_HOOK={other:?}: expected xdp or tc"),
    }
}

/// [`test_bed_hook`] unless `args` choose the uplink hook themselves.
fn default_hook(args: &[&str]) -> &'static [&'static str] {
    if args.iter().any(|a| a.starts_with("--uplink-hook")) {
        &[]
    } else {
        test_bed_hook()
    }
}

/// Path of the agent binary: `LB_AGENT_BIN`, else the workspace's debug build.
pub fn agent_bin() -> Result<PathBuf> {
    let path = std::env::var_os("LB_AGENT_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/lb-agent"),
        PathBuf::from,
    );
    if !path.exists() {
        bail!(
            "lb-agent not found at {}: run `cargo xtask build` (or set LB_AGENT_BIN)",
            path.display()
        );
    }
    Ok(path)
}

/// A running `lb-agent run`, stopped (SIGTERM) on drop.
pub struct Agent {
    child: Option<Child>,
    /// Remove the pins on drop (off while a restarted agent takes over).
    pub cleanup_on_drop: bool,
    bin: PathBuf,
    pin_dir: PathBuf,
    log: PathBuf,
}

impl Agent {
    /// Starts the agent in `node`'s network namespace on `manifests`, with the
    /// test bed's uplink hook ([`test_bed_hook`]) and TC on its pods.
    pub fn start(node: &Netns, manifests: &Path) -> Result<Self> {
        let dir = manifests.to_string_lossy().into_owned();
        Self::start_with(node, &["--manifests", &dir])
    }

    /// Starts the agent with `--source kube` on the API server of `kubeconfig`.
    pub fn start_kube(node: &Netns, kubeconfig: &Path) -> Result<Self> {
        let config = kubeconfig.to_string_lossy().into_owned();
        Self::start_with(node, &["--source", "kube", "--kubeconfig", &config])
    }

    /// Starts `lb-agent run --detach-on-exit` with the given source arguments.
    pub fn start_with(node: &Netns, source_args: &[&str]) -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/lbt{}x{n}", std::process::id()));
        let mut args = source_args.to_vec();
        args.push("--detach-on-exit");
        Self::start_pinned(node, &args, &pin_dir)
    }

    /// Starts the agent on `node` with the manifests in `manifests` and the
    /// `extra` arguments, and waits (30 s at most) until it is ready.
    pub fn start_ready(node: &Netns, manifests: &ManifestDir, extra: &[&str]) -> Result<Self> {
        let dir = manifests.path().to_string_lossy().into_owned();
        let mut args = vec!["--manifests", dir.as_str()];
        args.extend_from_slice(extra);
        let mut agent = Self::start_with(node, &args)?;
        agent.wait_ready(Duration::from_secs(30))?;
        Ok(agent)
    }

    /// Starts `lb-agent run` with exactly these arguments on `pin_dir`
    /// (several agents in turn can share one, as restarts do).
    pub fn start_pinned(node: &Netns, source_args: &[&str], pin_dir: &Path) -> Result<Self> {
        Self::spawn(node, source_args, pin_dir, true)
    }

    /// Starts `lb-agent run --detach-on-exit` in `node` with `args` and
    /// none of the test topology's (no interfaces, no uplink hook: give
    /// `--node-ip`), on a pin directory of its own.
    pub fn start_bare(node: &Netns, args: &[&str]) -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/lbt{}x{n}", std::process::id()));
        let mut args = args.to_vec();
        args.push("--detach-on-exit");
        Self::spawn(node, &args, &pin_dir, false)
    }

    /// Starts the agent as [`Agent::start_with`] does, confined as the
    /// `DaemonSet` confines it: only the capabilities `caps` (names as in a
    /// securityContext, e.g. `NET_ADMIN`; the bounding set limits what root
    /// gets at exec) and the root file system read-only (a mount namespace
    /// of its own where `/` is remounted read-only; bpffs, /proc and /sys
    /// stay writable, as the `DaemonSet`'s mounts are; the host's mounts
    /// reach it, as the netns volume's `HostToContainer` propagation does).
    pub fn start_confined(node: &Netns, caps: &[&str], source_args: &[&str]) -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/lbt{}x{n}", std::process::id()));
        let mut args = source_args.to_vec();
        args.push("--detach-on-exit");
        let bounding: Vec<String> = caps
            .iter()
            .map(|c| format!("+{}", c.to_ascii_lowercase()))
            .collect();
        let confine = [
            "unshare".to_string(),
            "--mount".into(),
            "--propagation=slave".into(),
            "--".into(),
            "sh".into(),
            "-c".into(),
            "mount -o remount,bind,ro / && exec \"$@\"".into(),
            "confine".into(),
            "setpriv".into(),
            format!("--bounding-set=-all,{}", bounding.join(",")),
            "--".into(),
        ];
        Self::spawn_wrapped(node, &args, &pin_dir, true, &confine)
    }

    /// Starts the agent as [`Agent::start_with`] does, from a container
    /// image's root file system `rootfs` (its binary at `binary` inside),
    /// as a runtime would: a mount namespace of its own with /proc and /sys
    /// (bpffs and cgroups included) mounted in, plus each of `shared` (host
    /// paths the arguments name, at the same path), then `chroot`.
    pub fn start_from_rootfs(
        node: &Netns,
        rootfs: &Path,
        binary: &str,
        shared: &[&Path],
        source_args: &[&str],
    ) -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/lbt{}x{n}", std::process::id()));
        let mut args = source_args.to_vec();
        args.push("--detach-on-exit");
        let root = rootfs.to_string_lossy();
        let mut script = format!(
            "set -e; mkdir -p '{root}/proc' '{root}/sys'; \
             mount --rbind /proc '{root}/proc'; mount --rbind /sys '{root}/sys'; "
        );
        for path in shared {
            let path = path.to_string_lossy();
            // Writing to a String cannot fail.
            let _ = write!(
                script,
                "mkdir -p '{root}{path}'; mount --bind '{path}' '{root}{path}'; "
            );
        }
        let _ = write!(script, "exec chroot '{root}' \"$@\"");
        let wrapper = [
            "unshare".to_string(),
            "--mount".into(),
            "--".into(),
            "sh".into(),
            "-c".into(),
            script,
            "image".into(),
        ];
        Self::spawn_in(
            node,
            &args,
            &pin_dir,
            true,
            &wrapper,
            Some(Path::new(binary)),
        )
    }

    fn spawn(node: &Netns, source_args: &[&str], pin_dir: &Path, topology: bool) -> Result<Self> {
        Self::spawn_wrapped(node, source_args, pin_dir, topology, &[])
    }

    fn spawn_wrapped(
        node: &Netns,
        source_args: &[&str],
        pin_dir: &Path,
        topology: bool,
        wrapper: &[String],
    ) -> Result<Self> {
        Self::spawn_in(node, source_args, pin_dir, topology, wrapper, None)
    }

    /// Spawns the agent in `node`, through `wrapper` (a command line the
    /// agent's own is appended to, which must exec it) if any, running
    /// `exec` (a path where the wrapper puts it) instead of [`agent_bin`].
    fn spawn_in(
        node: &Netns,
        source_args: &[&str],
        pin_dir: &Path,
        topology: bool,
        wrapper: &[String],
        exec: Option<&Path>,
    ) -> Result<Self> {
        let bin = agent_bin()?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("lbt{}x{n}", std::process::id());
        let pin_dir = pin_dir.to_path_buf();
        let log = std::env::temp_dir().join(format!("{tag}-agent.log"));
        let out = fs::File::create(&log)?;
        // nsenter, not `ip netns exec`: the latter mounts a fresh /sys, which
        // would hide bpffs at /sys/fs/bpf.
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", node.name()))
            .arg("--")
            .args(wrapper)
            .arg(exec.unwrap_or(&bin))
            .args(["--log-level", "info", "run"])
            .args(source_args);
        if topology {
            command.args(default_hook(source_args)).args([
                "--xdp-iface",
                NODE1_UPLINK,
                "--tc-iface",
                NODE1_POD_IFACES,
            ]);
        }
        let child = command
            .args(["--node-name", "node1", "--pin-dir"])
            .arg(&pin_dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting lb-agent")?;
        Ok(Self {
            child: Some(child),
            cleanup_on_drop: true,
            bin,
            pin_dir,
            log,
        })
    }

    /// The agent's process id (nsenter execs it, so it is the agent itself).
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// Waits until the agent prints `lb-agent ready`.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if self.log().contains("lb-agent ready") {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "lb-agent exited ({status}) before it was ready:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        bail!("lb-agent was not ready after {timeout:?}:\n{}", self.log())
    }

    /// Everything the agent logged so far.
    #[must_use]
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// `lb-agent status` output.
    pub fn status(&self) -> Result<String> {
        let out = Command::new(&self.bin)
            .args(["status", "--pin-dir"])
            .arg(&self.pin_dir)
            .output()?;
        if !out.status.success() {
            bail!(
                "lb-agent status failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `lb-agent conntrack --json` output, parsed.
    pub fn conntrack(&self) -> Result<serde_json::Value> {
        let out = Command::new(&self.bin)
            .args(["conntrack", "--json", "--pin-dir"])
            .arg(&self.pin_dir)
            .output()?;
        if !out.status.success() {
            bail!(
                "lb-agent conntrack failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Kills the agent with SIGKILL, as a crash would: nothing is cleaned up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the agent with SIGTERM (SIGKILL after 5 s); returns whether it exited cleanly.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(i32::try_from(child.id()).unwrap_or(0), libc::SIGTERM);
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// The pin directory.
    #[must_use]
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let clean = self.stop();
        if std::thread::panicking() || !clean {
            eprintln!(
                "--- lb-agent log ({}) ---\n{}",
                self.log.display(),
                self.log()
            );
        }
        if self.pin_dir.exists() && self.cleanup_on_drop {
            let _ = Command::new(&self.bin)
                .args(["cleanup", "--pin-dir"])
                .arg(&self.pin_dir)
                .output();
        }
        let _ = fs::remove_file(&self.log);
    }
}

/// A temporary manifest directory, removed on drop.
pub struct ManifestDir {
    path: PathBuf,
}

impl ManifestDir {
    /// A new empty directory.
    pub fn new() -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("lbt{}x{n}-manifests", std::process::id()));
        fs::create_dir_all(&path)?;
        Ok(Self { path })
    }

    /// A directory holding copies of the repository's `examples/`.
    pub fn with_examples() -> Result<Self> {
        let dir = Self::new()?;
        let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
        for entry in fs::read_dir(&examples)? {
            let path = entry?.path();
            if path.is_file() {
                fs::copy(&path, dir.path.join(path.file_name().unwrap()))?;
            }
        }
        Ok(dir)
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes (replaces) a file atomically (write + rename, as editors and kubectl do).
    pub fn write(&self, name: &str, contents: &str) -> Result<()> {
        let tmp = self.path.join(format!(".{name}.tmp"));
        fs::write(&tmp, contents)?;
        fs::rename(&tmp, self.path.join(name))?;
        Ok(())
    }

    /// Reads a file.
    pub fn read(&self, name: &str) -> Result<String> {
        Ok(fs::read_to_string(self.path.join(name))?)
    }
}

impl Drop for ManifestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A pin directory removed, with every pin and link under it, when the
/// test ends, passed or not (`lb-agent cleanup`'s work, done in process).
pub struct PinDirGuard(pub PathBuf);

impl Drop for PinDirGuard {
    fn drop(&mut self) {
        if self.0.exists() {
            lb_userspace::datapath::cleanup(&self.0);
            let _ = fs::remove_dir(&self.0);
        }
    }
}
