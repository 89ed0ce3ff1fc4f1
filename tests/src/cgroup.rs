//! A cgroup v2 directory of a test's own, under the machine's cgroup v2
//! hierarchy (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid
//! host), for socket programs to attach to: never the root. Only the
//! test's own client processes join it; it is removed when dropped, after
//! moving any process still in it back to the root.

use std::path::{Path, PathBuf};

/// `CGROUP2_SUPER_MAGIC`.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// A child cgroup created for one test.
pub struct TestCgroup {
    root: PathBuf,
    dir: PathBuf,
}

/// Whether `path` is in a cgroup v2 file system.
fn is_cgroup2(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a zeroed statfs filled in by the call; a valid C string.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let ret = unsafe { libc::statfs(c.as_ptr(), &raw mut stat) };
    ret == 0 && stat.f_type == CGROUP2_SUPER_MAGIC
}

impl TestCgroup {
    /// Creates `lbt<pid>-<name>` under the cgroup v2 root; panics (the
    /// test cannot run) when the machine has no cgroup v2 hierarchy.
    #[must_use]
    pub fn new(name: &str) -> Self {
        crate::require_root();
        let root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| is_cgroup2(p))
            .expect("a cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified");
        let dir = root.join(format!("lbt{}-{name}", std::process::id()));
        std::fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("creating the test cgroup {}: {e}", dir.display()));
        Self { root, dir }
    }

    /// The cgroup's directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Ok(procs) = std::fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}
