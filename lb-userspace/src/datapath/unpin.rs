//! Detaching pinned links and removing pins: `lb-agent cleanup`, a hook or
//! feature switched off, an earlier layout's leftovers.
//!
//! Removing a link's last pin does detach it, but not at once: the kernel
//! drops a bpffs inode's reference after an RCU grace period, from a work
//! queue, and never while another process (a dying agent, `bpftool`) still
//! holds the link. So every link is detached explicitly first
//! (`BPF_LINK_DETACH`, Linux 5.9 for XDP and cgroup links, 6.6 for TCX),
//! and only then unpinned. aya 0.14 has no wrapper for either call on a
//! pin it did not create.

use std::{
    ffi::CString,
    os::{
        fd::{FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use aya_obj::generated::{bpf_attr, bpf_cmd};

use super::{layout, maps::PINNED_MAPS, pins_dir, LINKS_DIR};

/// Detaches the link pinned at `pin` and removes the pin. `Ok(false)` when
/// there is no such pin. A link the kernel cannot detach explicitly (an
/// older kernel) still detaches once its pin goes.
pub fn detach_link(pin: &Path) -> std::io::Result<bool> {
    match open_pin(pin) {
        Ok(link) => {
            if let Err(e) = link_detach(&link) {
                // EOPNOTSUPP / EINVAL: this kernel detaches this kind of
                // link only when its last reference goes.
                tracing::debug!(pin = %pin.display(), "BPF_LINK_DETACH: {e}");
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        // Not a BPF object (or not ours to open): removing it is all there is.
        Err(e) => tracing::debug!(pin = %pin.display(), "BPF_OBJ_GET: {e}"),
    }
    match std::fs::remove_file(pin) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Detaches every pinned link and removes the pinned maps, of every
/// layout version: `lb-agent cleanup`. Best effort, idempotent.
pub fn cleanup(pin_dir: &Path) {
    for version in layout::other_layouts(pin_dir) {
        remove_layout_dir(&pin_dir.join(version));
    }
    remove_layout_dir(&pins_dir(pin_dir));
    let _ = std::fs::remove_dir(pin_dir);
}

/// Removes a layout directory: its links first (detaching them), then its
/// maps and whatever else it holds. Best effort.
pub(super) fn remove_layout_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir.join(LINKS_DIR)) {
        for entry in entries.flatten() {
            if let Err(e) = detach_link(&entry.path()) {
                tracing::warn!(pin = %entry.path().display(), "cannot remove the link's pin: {e}");
            }
        }
    }
    for name in PINNED_MAPS {
        let _ = std::fs::remove_file(dir.join(name));
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A descriptor of the object pinned at `pin` (`BPF_OBJ_GET`).
fn open_pin(pin: &Path) -> std::io::Result<OwnedFd> {
    let path = CString::new(pin.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: an all-zero bpf_attr is the documented empty attribute.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // The object member of the union; `path` lives across the call.
    attr.__bindgen_anon_4.pathname = path.as_ptr() as u64;
    let fd = bpf(bpf_cmd::BPF_OBJ_GET, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::other("descriptor out of range"))?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Detaches the link `link` from its hook (`BPF_LINK_DETACH`).
fn link_detach(link: &OwnedFd) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: an all-zero bpf_attr is the documented empty attribute.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    let fd = u32::try_from(link.as_raw_fd())
        .map_err(|_| std::io::Error::other("descriptor out of range"))?;
    attr.link_detach.link_fd = fd;
    bpf(bpf_cmd::BPF_LINK_DETACH, &mut attr).map(|_| ())
}

/// The `bpf(2)` system call with `attr`.
fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialised attribute of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_pin_is_not_an_error() {
        let dir = std::env::temp_dir().join(format!("lb-unpin-{}", std::process::id()));
        assert!(!detach_link(&dir.join("absent")).unwrap());
    }

    #[test]
    fn a_file_that_is_not_a_bpf_object_is_removed() {
        let dir = std::env::temp_dir().join(format!("lb-unpin-plain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("sock-connect4");
        std::fs::write(&file, b"not a link").unwrap();
        assert!(detach_link(&file).unwrap());
        assert!(!file.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
