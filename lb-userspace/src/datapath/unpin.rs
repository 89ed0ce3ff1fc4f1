//! Detaching pinned links and removing pins: `lb-agent cleanup`, a hook or
//! feature switched off, an earlier layout's leftovers.
//!
//! Removing a link's last pin does detach it, but not at once: the kernel
//! drops a bpffs inode's reference after an RCU grace period, from a work
//! queue, and never while another process (a dying agent, `bpftool`) still
//! holds the link. So a link to be gone is opened, unpinned, and detached
//! explicitly (`BPF_LINK_DETACH`, Linux 5.9 for XDP and cgroup links, 6.6
//! for TCX). aya 0.14 opens a pin (`PinnedLink`) but gives neither its
//! descriptor nor `BPF_LINK_DETACH`.
//!
//! An earlier layout's directory after a hand-over is only unpinned
//! ([`Links::Unpin`]): a link it still pins may be the one this layout
//! took over (an agent that died between pinning the new path and removing
//! the old one leaves both), which must keep serving.

use std::{
    ffi::CString,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use aya_obj::generated::bpf_cmd;
use tracing::{debug, warn};

use super::{
    bpf_syscall::{bpf, empty_attr},
    layout,
    maps::PINNED_MAPS,
    pins_dir, LINKS_DIR,
};

/// What removing a layout directory does to the links it pins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Links {
    /// Detach each (`lb-agent cleanup`).
    Detach,
    /// Only remove the pins (after a hand-over).
    Unpin,
}

/// Removes the pin at `pin`, then detaches its link. `Ok(false)` when
/// there is no such pin; a pin that cannot be removed is left, its link
/// attached. A link the kernel cannot detach explicitly (an older kernel)
/// still detaches once its last reference goes.
pub fn detach_link(pin: &Path) -> std::io::Result<bool> {
    let link = match open_pin(pin) {
        Ok(link) => Some(link),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        // Not a BPF object (or not ours to open): removing it is all there is.
        Err(e) => {
            debug!(pin = %pin.display(), "BPF_OBJ_GET: {e}");
            None
        }
    };
    match std::fs::remove_file(pin) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    if let Some(link) = link {
        if let Err(e) = link_detach(&link) {
            // EOPNOTSUPP / EINVAL: this kernel detaches this kind of link
            // only when its last reference goes.
            debug!(pin = %pin.display(), "BPF_LINK_DETACH: {e}");
        }
    }
    Ok(true)
}

/// Detaches every pinned link and removes the pinned maps, of every
/// layout version: `lb-agent cleanup`. Best effort, idempotent.
pub fn cleanup(pin_dir: &Path) {
    for version in layout::other_layouts(pin_dir) {
        remove_layout_dir(&pin_dir.join(version), Links::Detach);
    }
    remove_layout_dir(&pins_dir(pin_dir), Links::Detach);
    let _ = std::fs::remove_dir(pin_dir);
}

/// Removes a layout directory: its links first (detached or only
/// unpinned, as `links` says), then its maps and whatever else it holds.
/// Best effort.
pub(super) fn remove_layout_dir(dir: &Path, links: Links) {
    if let Ok(entries) = std::fs::read_dir(dir.join(LINKS_DIR)) {
        for entry in entries.flatten() {
            let pin = entry.path();
            let removed = match links {
                Links::Detach => detach_link(&pin).map(|_| ()),
                Links::Unpin => std::fs::remove_file(&pin),
            };
            if let Err(e) = removed {
                warn!(pin = %pin.display(), "cannot remove the link's pin: {e}");
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
    let mut attr = empty_attr();
    attr.__bindgen_anon_4.pathname = path.as_ptr() as u64;
    // SAFETY: the object member's one pointer, `path`, lives across the call.
    let fd = unsafe { bpf(bpf_cmd::BPF_OBJ_GET, &mut attr) }?;
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::other("descriptor out of range"))?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Detaches the link `link` from its hook (`BPF_LINK_DETACH`).
fn link_detach(link: &OwnedFd) -> std::io::Result<()> {
    let mut attr = empty_attr();
    attr.link_detach.link_fd = u32::try_from(link.as_raw_fd())
        .map_err(|_| std::io::Error::other("descriptor out of range"))?;
    // SAFETY: the link_detach member holds no pointer.
    unsafe { bpf(bpf_cmd::BPF_LINK_DETACH, &mut attr) }.map(|_| ())
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
        let file = std::env::temp_dir().join(format!("lb-unpin-plain-{}", std::process::id()));
        std::fs::write(&file, b"not a link").unwrap();
        let removed = detach_link(&file);
        let _ = std::fs::remove_file(&file);
        assert!(removed.unwrap());
        assert!(!file.exists());
    }
}
