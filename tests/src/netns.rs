//! Network namespaces that remove themselves, and running code inside one.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context, Result};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Prefix of every namespace the tests create: `lbt<pid>x<n>-`.
pub const PREFIX: &str = "lbt";

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `lbt<pid>x<n>-<role>`.
    pub fn new(role: &str) -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}x{n}-{role}", std::process::id());
        sh(&["ip", "netns", "add", &name])?;
        Ok(Self { name })
    }

    /// A handle on a namespace created elsewhere, which it does not delete.
    #[must_use]
    pub fn existing(name: &str) -> Borrowed {
        Borrowed(std::mem::ManuallyDrop::new(Self {
            name: name.to_string(),
        }))
    }

    /// The namespace's name (for `ip -n`).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `args` inside the namespace (`ip netns exec`); fails on a non-zero exit.
    pub fn exec(&self, args: &[&str]) -> Result<Output> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Runs each line of `script` (words split on spaces) in the namespace;
    /// panics naming the namespace and the line on a failure.
    pub fn script(&self, script: &str) {
        for line in script.lines().filter(|l| !l.trim().is_empty()) {
            let args: Vec<&str> = line.split_whitespace().collect();
            if let Err(e) = self.exec(&args) {
                panic!("in {}: {e:#}", self.name);
            }
        }
    }

    /// The value of sysctl `key` in the namespace (e.g. `net.ipv4.conf.eth0.accept_local`).
    pub fn sysctl(&self, key: &str) -> Result<String> {
        let out = self.exec(&["sysctl", "-n", key])?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it opens live there.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        std::thread::spawn(move || {
            // SAFETY: setns on a valid namespace fd changes only this thread's
            // network namespace (it is per thread); the fd outlives the call.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error()).context("setns");
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread in namespace {path} panicked"))?
    }

    /// Runs `f` on a detached thread inside the namespace (for servers).
    pub fn spawn(&self, f: impl FnOnce() + Send + 'static) -> Result<std::thread::JoinHandle<()>> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        Ok(std::thread::spawn(move || {
            // SAFETY: as in `run`.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "setns into {path}: {}",
                std::io::Error::last_os_error()
            );
            f();
        }))
    }
}

impl Netns {
    /// Whether the calling thread is inside this namespace.
    #[must_use]
    pub fn is_current(&self) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        let ns = std::fs::metadata(format!("/run/netns/{}", self.name));
        let current = std::fs::metadata("/proc/thread-self/ns/net");
        matches!((ns, current), (Ok(a), Ok(b)) if a.ino() == b.ino() && a.dev() == b.dev())
    }

    /// A tokio runtime whose worker threads run inside the namespace: the
    /// sockets its spawned tasks open live there. (`block_on` runs its
    /// future on the calling thread, outside: spawn the work.): the sockets
    /// its tasks open live there.
    pub fn runtime(&self, threads: usize) -> Result<tokio::runtime::Runtime> {
        let path = format!("/run/netns/{}", self.name);
        File::open(&path).with_context(|| format!("opening {path}"))?;
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .on_thread_start(move || {
                let file = File::open(&path).expect("the namespace exists");
                // SAFETY: as in `run`: only this thread changes namespace.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(
                    rc,
                    0,
                    "setns into {path}: {}",
                    std::io::Error::last_os_error()
                );
            })
            .build()
            .context("building a runtime in the namespace")
    }
}

/// A [`Netns`] that is not deleted when dropped.
pub struct Borrowed(std::mem::ManuallyDrop<Netns>);

impl std::ops::Deref for Borrowed {
    type Target = Netns;

    fn deref(&self) -> &Netns {
        &self.0
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs a command; fails with its stderr on a non-zero exit.
pub fn sh(args: &[&str]) -> Result<Output> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("cannot run {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Deletes namespaces left by test processes that no longer exist (killed runs).
pub fn remove_stale() {
    let Ok(out) = sh(&["ip", "netns", "list"]) else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('x').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = sh(&["ip", "netns", "del", name]);
        }
    }
}

/// Runs `f` on a scoped thread inside `ns` (it may borrow; panics carry
/// over), for `BPF_PROG_TEST_RUN`s whose route lookups must see `ns`.
///
/// # Panics
/// When `ns` cannot be entered, or `f` panics.
pub fn in_netns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{}", ns.name());
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a valid namespace fd changes only this
            // thread's network namespace; the fd outlives the call.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "setns into {path}: {}",
                std::io::Error::last_os_error()
            );
            assert!(ns.is_current(), "the thread is in {path}");
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// The index of interface `name` in the calling thread's namespace.
///
/// # Panics
/// When there is no such interface.
#[must_use]
pub fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: a valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(index, 0, "no interface {name} here");
    index
}
