//! Pods' network namespaces, for closing the sockets socket-level
//! balancing pointed at a removed backend (`--socket-lb all`): a pod's
//! sockets live in its namespace, which a `sock_diag` socket sees only
//! when it was opened there. The namespaces are the files of the
//! directories the operator names (`--socket-lb-netns-dir`; the container
//! runtimes keep them under `/run/netns`). Entering one needs
//! `CAP_SYS_ADMIN`.

use std::{
    collections::BTreeSet,
    fs::File,
    io,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use tracing::debug;

/// A namespace's identity: the device and inode of its file.
type NetnsId = (u64, u64);

/// The identity of the calling thread's network namespace.
fn own_netns() -> io::Result<NetnsId> {
    let meta = std::fs::metadata("/proc/thread-self/ns/net")?;
    Ok((meta.dev(), meta.ino()))
}

/// The network namespaces whose files are in `dirs`, each once, without the
/// caller's own: (path, open file). A file that cannot be opened or read is
/// skipped (a pod going away).
#[must_use]
pub fn namespaces(dirs: &[PathBuf]) -> Vec<(PathBuf, File)> {
    let mut seen: BTreeSet<NetnsId> = own_netns().into_iter().collect();
    let mut found = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            debug!(dir = %dir.display(), "no network namespace directory");
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let Ok(file) = File::open(&path) else {
                continue;
            };
            let Ok(meta) = file.metadata() else {
                continue;
            };
            if meta.is_file() && seen.insert((meta.dev(), meta.ino())) {
                found.push((path, file));
            }
        }
    }
    found
}

/// Runs `open` on a thread of its own that first enters the network
/// namespace `netns` (`setns`), and returns what it made: a socket opened
/// there stays in that namespace. The caller's thread never moves.
pub fn open_in<T: Send>(
    netns: &File,
    path: &Path,
    open: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: a plain syscall on an open file; it moves only
                // this thread, which ends after `open`.
                if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let e = io::Error::last_os_error();
                    return Err(io::Error::new(
                        e.kind(),
                        format!("entering the network namespace {}: {e}", path.display()),
                    ));
                }
                open()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_namespace_and_other_files_are_not_listed_and_each_namespace_once() {
        let dir = std::env::temp_dir().join(format!("lb-netns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Not namespaces of another process: a plain file is listed (the
        // caller's `setns` refuses it), the caller's own namespace is not,
        // and a second link to one file is the same namespace.
        std::fs::write(dir.join("a"), "x").unwrap();
        std::fs::hard_link(dir.join("a"), dir.join("b")).unwrap();
        std::fs::create_dir(dir.join("sub")).unwrap();
        std::os::unix::fs::symlink("/proc/thread-self/ns/net", dir.join("own")).unwrap();
        let found = namespaces(std::slice::from_ref(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
        let paths: Vec<_> = found.iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(paths, [dir.join("a")], "{paths:?}");
    }

    #[test]
    fn a_file_that_is_no_namespace_cannot_be_entered() {
        let file = File::open("/proc/self/status").unwrap();
        let err = open_in(&file, Path::new("/proc/self/status"), || Ok(())).unwrap_err();
        assert!(err.to_string().contains("/proc/self/status"), "{err}");
    }
}
