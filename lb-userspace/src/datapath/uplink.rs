//! Which hook serves the uplinks. XDP cannot read whether a packet's L4
//! checksum is complete or partial (`CHECKSUM_PARTIAL`: the field holds only
//! the pseudo-header seed, and a device completes it on the way out), and an
//! incremental update of a partial checksum corrupts the packet once it is
//! completed. Partial checksums reach XDP on a veth (its peer's stack leaves
//! them to TX offload) and in generic mode (GRO merges packets into ones with
//! partial checksums); they never come from a NIC's wire. TC's checksum
//! helpers handle both kinds. So XDP serves only where every packet is
//! complete, and the TC uplink program everywhere else.

use std::{ffi::CStr, os::fd::AsRawFd as _};

use anyhow::{bail, Context as _, Result};
use aya::programs::XdpMode;

use super::UplinkHook;

/// The hook the operator asked for (`--uplink-hook`, `--xdp-mode`, `--xdp-on-veth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookRequest {
    /// XDP in driver mode where no uplink can hand it partial checksums, TC otherwise.
    Auto,
    /// XDP, in this mode; `on_veth`: allowed on a veth uplink too, because
    /// every sender beyond it completes its checksums (TX offload off).
    Xdp {
        /// The attach mode.
        mode: XdpMode,
        /// Whether XDP may serve a veth uplink.
        on_veth: bool,
    },
    /// TC ingress.
    Tc,
}

/// The global (`XDP_META` of the kernel object) that lets XDP programs
/// mark frames in their metadata for the uplink's TC program (the hand-off).
pub const XDP_META: &str = "XDP_META";

/// Whether this kernel lets XDP programs call `bpf_xdp_adjust_meta`, the
/// value of [`XDP_META`]. Some kernels refuse the helper to XDP (and with
/// it every program that calls it); then frames XDP would hand to TC go to
/// the stack translated instead, as on a driver that keeps no metadata, and
/// `auto` takes TC ([`choose`]). A probe that cannot tell counts as "no": a
/// program that loads beats one refused. Probed once per process (the
/// hook's choice and every load ask).
#[must_use]
pub fn xdp_metadata_supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        aya::sys::is_helper_supported(
            aya::programs::ProgramType::Xdp,
            aya::sys::BpfHelper::BPF_FUNC_xdp_adjust_meta,
        )
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot probe bpf_xdp_adjust_meta for XDP: taken as refused");
            false
        })
    })
}

/// Why `auto` leaves XDP for TC on a kernel without XDP metadata.
const NO_XDP_METADATA: &str = "this kernel refuses bpf_xdp_adjust_meta to XDP programs, so XDP \
     can hand to TC only the frames it translated to the node's address (known by their source), \
     not a reply it translated back to a client but cannot send itself: the stack, which gets \
     those instead, sees only one direction of such a flow (an INVALID drop rule cuts it)";

/// The ethtool driver name of a veth.
pub const VETH_DRIVER: &str = "veth";

/// Decides the uplink hook for `request` given each uplink's driver name
/// (`uplinks`: interface, driver). Returns the hook and, when `Auto` chose
/// TC, why; refuses XDP where it would see partial checksums, naming the fix.
/// `xdp_metadata`: whether XDP programs may write metadata (see
/// [`xdp_metadata_supported`]); without it `auto` takes TC, and XDP asked
/// for is served with a warning ([`xdp_without_metadata`]).
pub fn choose(
    request: HookRequest,
    uplinks: &[(String, String)],
    xdp_metadata: bool,
) -> Result<(UplinkHook, Option<String>)> {
    let veth = uplinks
        .iter()
        .find(|(_, driver)| driver == VETH_DRIVER)
        .map(|(iface, _)| iface.as_str());
    match request {
        HookRequest::Tc => Ok((UplinkHook::Tc, None)),
        HookRequest::Xdp {
            mode: XdpMode::Skb, ..
        } => bail!(
            "--xdp-mode skb: generic XDP runs after GRO, whose merged packets carry partial \
             checksums that XDP cannot tell from complete ones (rewriting them corrupts them); \
             use --uplink-hook tc (or native XDP on a NIC that supports it)"
        ),
        HookRequest::Xdp { mode, on_veth } => match veth {
            Some(iface) if !on_veth => bail!(
                "{iface} is a veth: packets from its peer's stack carry partial checksums (TX \
                 checksum offload) that XDP cannot tell from complete ones, and rewriting them \
                 corrupts them; use --uplink-hook tc (or auto, the default), or add \
                 --xdp-on-veth if every sender beyond {iface} completes its checksums"
            ),
            _ => Ok((UplinkHook::Xdp(mode), None)),
        },
        HookRequest::Auto => Ok(match veth {
            Some(iface) => (
                UplinkHook::Tc,
                Some(format!(
                    "{iface} is a veth, whose packets may carry partial checksums that XDP \
                     cannot rewrite safely: the uplink program runs at TC"
                )),
            ),
            None if !xdp_metadata => (
                UplinkHook::Tc,
                Some(format!("{NO_XDP_METADATA}: the uplink program runs at TC")),
            ),
            None => (UplinkHook::Xdp(XdpMode::Driver), None),
        }),
    }
}

/// The warning for XDP asked for (`--uplink-hook xdp`) on a kernel without
/// XDP metadata.
#[must_use]
pub fn xdp_without_metadata() -> String {
    format!(
        "{NO_XDP_METADATA}: with --uplink-hook xdp, such frames go to the stack translated \
         (use --uplink-hook tc or auto where an INVALID drop rule is set)"
    )
}

/// `SIOCETHTOOL` (linux/sockios.h).
const SIOCETHTOOL: libc::Ioctl = 0x8946;
/// `ETHTOOL_GDRVINFO` (linux/ethtool.h).
const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;

/// `struct ethtool_drvinfo` (linux/ethtool.h).
#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// The driver name of interface `iface` in this network namespace (as
/// `ethtool -i` shows it: `veth`, `mlx5_core`, `virtio_net`, ...).
pub fn driver(iface: &str) -> Result<String> {
    // SAFETY: `ifreq` and `EthtoolDrvinfo` are plain C structs for which all zeros is valid.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let mut info: EthtoolDrvinfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let name = iface.as_bytes();
    if name.is_empty() || name.len() >= request.ifr_name.len() {
        bail!("{iface:?} is not an interface name");
    }
    for (dst, src) in request.ifr_name.iter_mut().zip(name) {
        *dst = libc::c_char::from_ne_bytes([*src]);
    }
    request.ifr_ifru.ifru_data = (&raw mut info).cast();
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").context("a socket for ethtool")?;
    // SAFETY: SIOCETHTOOL reads the name and the command from `request` and
    // writes at most size_of::<EthtoolDrvinfo>() bytes into `info`, which
    // outlives the call.
    let ret = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCETHTOOL, &raw mut request) };
    if ret != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("reading the driver of {iface} (ethtool -i)"));
    }
    Ok(CStr::from_bytes_until_nul(&info.driver)
        .map_or_else(|_| String::new(), |s| s.to_string_lossy().into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uplinks(drivers: &[(&str, &str)]) -> Vec<(String, String)> {
        drivers
            .iter()
            .map(|(i, d)| ((*i).to_string(), (*d).to_string()))
            .collect()
    }

    #[test]
    fn auto_takes_xdp_on_a_nic_and_tc_on_a_veth() {
        let nic = uplinks(&[("eth0", "mlx5_core")]);
        assert_eq!(
            choose(HookRequest::Auto, &nic, true).unwrap(),
            (UplinkHook::Xdp(XdpMode::Driver), None)
        );
        let mixed = uplinks(&[("eth0", "mlx5_core"), ("eth1", "veth")]);
        let (hook, why) = choose(HookRequest::Auto, &mixed, true).unwrap();
        assert_eq!(hook, UplinkHook::Tc);
        assert!(why.unwrap().contains("eth1 is a veth"));
    }

    #[test]
    fn auto_takes_tc_where_the_kernel_refuses_xdp_metadata_and_xdp_asked_for_stays() {
        let nic = uplinks(&[("eth0", "mlx5_core")]);
        let (hook, why) = choose(HookRequest::Auto, &nic, false).unwrap();
        assert_eq!(hook, UplinkHook::Tc);
        assert!(why.unwrap().contains("bpf_xdp_adjust_meta"));
        let asked = HookRequest::Xdp {
            mode: XdpMode::Driver,
            on_veth: false,
        };
        assert_eq!(
            choose(asked, &nic, false).unwrap(),
            (UplinkHook::Xdp(XdpMode::Driver), None)
        );
        assert!(xdp_without_metadata().contains("--uplink-hook tc"));
    }

    #[test]
    fn xdp_on_a_veth_is_refused_unless_its_senders_complete_checksums() {
        let veth = uplinks(&[("eth0", "veth")]);
        let asked = |on_veth| HookRequest::Xdp {
            mode: XdpMode::Driver,
            on_veth,
        };
        let err = choose(asked(false), &veth, true).unwrap_err().to_string();
        assert!(
            err.contains("eth0 is a veth") && err.contains("--uplink-hook tc"),
            "{err}"
        );
        assert_eq!(
            choose(asked(true), &veth, true).unwrap(),
            (UplinkHook::Xdp(XdpMode::Driver), None)
        );
        assert_eq!(
            choose(asked(false), &uplinks(&[("eth0", "ixgbe")]), true).unwrap(),
            (UplinkHook::Xdp(XdpMode::Driver), None)
        );
    }

    #[test]
    fn generic_xdp_is_refused_everywhere_and_tc_taken_everywhere() {
        let nic = uplinks(&[("eth0", "ixgbe")]);
        let skb = HookRequest::Xdp {
            mode: XdpMode::Skb,
            on_veth: true,
        };
        let err = choose(skb, &nic, true).unwrap_err().to_string();
        assert!(
            err.contains("GRO") && err.contains("--uplink-hook tc"),
            "{err}"
        );
        assert_eq!(
            choose(HookRequest::Tc, &uplinks(&[("eth0", "veth")]), true).unwrap(),
            (UplinkHook::Tc, None)
        );
    }

    #[test]
    fn a_driver_that_cannot_be_read_is_an_error_naming_the_interface() {
        // Loopback answers ETHTOOL_GDRVINFO with "operation not supported"
        // (a veth's driver is read in tests/e2e_checksums.rs, whose agent
        // logs "eth0 is a veth").
        let err = format!("{:#}", driver("lo").unwrap_err());
        assert!(
            err.contains("driver of lo") && err.contains("not supported"),
            "{err}"
        );
        assert!(driver("").is_err());
        assert!(driver("a-name-far-too-long-for-ifreq").is_err());
    }
}
