//! Loading the programs and attaching them to interfaces.

use std::path::Path;

use anyhow::{Context, Result};
use aya::{
    maps::ProgramArray,
    programs::{
        links::{FdLink, PinnedLink},
        tc::{self, SchedClassifierLink},
        xdp::XdpLink,
        SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf,
};

use lb_common::maps6::{
    MAP_TC6_PROGS, MAP_XDP6_PROGS, TC6_PROGRAMS, TC6_SLOT_EGRESS, TC6_SLOT_FLOW, TC6_SLOT_POD,
    TC6_SLOT_UPLINK, XDP6_FLOW_PROGRAM, XDP6_PROGRAM, XDP6_PROGRAMS,
};

use super::{
    UplinkHook, EGRESS_TC_PROGRAM, TC_PROGRAM, UPLINK_HANDOFF_TC_PROGRAM, UPLINK_TC_PROGRAM,
    XDP_PARSE6_PROGRAM, XDP_PARSE_PROGRAM, XDP_PASS_PROGRAM, XDP_PROGRAM,
};

/// `lb_tc6`.
const TC6_POD: &str = TC6_PROGRAMS[TC6_SLOT_POD as usize];
/// `lb_tc_uplink6`.
const TC6_UPLINK: &str = TC6_PROGRAMS[TC6_SLOT_UPLINK as usize];
/// `lb_tc_egress6`.
const TC6_EGRESS: &str = TC6_PROGRAMS[TC6_SLOT_EGRESS as usize];
/// `lb_tc6_flow`.
const TC6_FLOW: &str = TC6_PROGRAMS[TC6_SLOT_FLOW as usize];

/// The programs an agent with uplink `hook` attaches: the hook's own uplink
/// program (XDP with its TC hand-off, or the uplink TC program), the pods'
/// ingress and the egress program, and the IPv6 programs these tail-call.
/// The other hook's uplink programs and the benchmarks' baselines are left
/// unverified: verifying `lb_xdp` alone takes over a second.
#[must_use]
pub fn programs_for(hook: UplinkHook) -> &'static [&'static str] {
    match hook {
        UplinkHook::Xdp(_) => &[
            XDP_PROGRAM,
            UPLINK_HANDOFF_TC_PROGRAM,
            TC_PROGRAM,
            EGRESS_TC_PROGRAM,
            XDP6_PROGRAM,
            XDP6_FLOW_PROGRAM,
            TC6_POD,
            TC6_EGRESS,
            TC6_FLOW,
        ],
        UplinkHook::Tc => &[
            UPLINK_TC_PROGRAM,
            TC_PROGRAM,
            EGRESS_TC_PROGRAM,
            TC6_UPLINK,
            TC6_POD,
            TC6_EGRESS,
            TC6_FLOW,
        ],
    }
}

/// Every XDP and TC program of the kernel object (for tests and benchmarks,
/// which run any of them through `BPF_PROG_TEST_RUN`).
pub const EVERY_PROGRAM: [&str; 14] = [
    XDP_PROGRAM,
    TC_PROGRAM,
    UPLINK_TC_PROGRAM,
    UPLINK_HANDOFF_TC_PROGRAM,
    EGRESS_TC_PROGRAM,
    XDP_PASS_PROGRAM,
    XDP_PARSE_PROGRAM,
    XDP6_PROGRAM,
    TC6_POD,
    TC6_UPLINK,
    TC6_EGRESS,
    XDP_PARSE6_PROGRAM,
    XDP6_FLOW_PROGRAM,
    TC6_FLOW,
];

/// Whether `name` is an IPv6 program: one the IPv4 entry points tail-call
/// (the prog arrays' [`XDP6_PROGRAMS`] and [`TC6_PROGRAMS`]) or IPv6's
/// parse-only baseline.
#[must_use]
pub fn is_ipv6_program(name: &str) -> bool {
    XDP6_PROGRAMS.contains(&name) || TC6_PROGRAMS.contains(&name) || name == XDP_PARSE6_PROGRAM
}

/// Puts every loaded IPv6 program into its slot of the prog arrays, which
/// the IPv4 entry points tail-call for IPv6 frames: from then on those
/// frames are the IPv6 programs' (an empty slot passes them). Called after
/// loading and before attaching, so a restarted agent's programs never
/// meet an empty slot. The slot of a program not loaded (IPv6 off) is
/// emptied: the pinned arrays would otherwise keep an earlier agent's.
pub fn fill_ipv6_slots(ebpf: &mut Ebpf) -> Result<()> {
    let slots = (0u32..)
        .zip(XDP6_PROGRAMS)
        .map(|(slot, name)| (MAP_XDP6_PROGS, slot, name))
        .chain(
            (0u32..)
                .zip(TC6_PROGRAMS)
                .map(|(slot, name)| (MAP_TC6_PROGS, slot, name)),
        );
    for (map, slot, name) in slots {
        let fd = match program(ebpf, name)? {
            aya::programs::Program::Xdp(p) => p.fd().ok().map(aya::programs::ProgramFd::try_clone),
            aya::programs::Program::SchedClassifier(p) => {
                p.fd().ok().map(aya::programs::ProgramFd::try_clone)
            }
            _ => anyhow::bail!("{name} is neither an XDP nor a TC program"),
        };
        let fd = fd.transpose()?;
        let mut array = ProgramArray::try_from(
            ebpf.map_mut(map)
                .with_context(|| format!("the eBPF object has no map {map}"))?,
        )?;
        match fd {
            Some(fd) => array
                .set(slot, &fd, 0)
                .with_context(|| format!("putting {name} into {map}[{slot}]"))?,
            None => match array.clear_index(&slot) {
                Ok(()) => {}
                // Empty already.
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("emptying {map}[{slot}] ({name})"))
                }
            },
        }
    }
    Ok(())
}

/// Loads (verifies) the programs `names`, skipping those loaded already,
/// each on a thread of its own: the kernel verifies privileged loads in
/// parallel, and `lb_xdp` alone takes over a second. The first failure in
/// `names` order is the error.
pub fn load_programs(ebpf: &mut Ebpf, names: &[&str]) -> Result<()> {
    for &name in names {
        match program(ebpf, name)? {
            aya::programs::Program::Xdp(_) | aya::programs::Program::SchedClassifier(_) => {}
            _ => anyhow::bail!("{name} is neither an XDP nor a TC program"),
        }
    }
    let wanted: Vec<(&str, &mut aya::programs::Program)> = ebpf
        .programs_mut()
        .filter(|(name, _)| names.contains(name))
        .collect();
    let mut results: Vec<(usize, Result<()>)> = std::thread::scope(|scope| {
        let loading: Vec<_> = wanted
            .into_iter()
            .map(|(name, prog)| {
                let order = names.iter().position(|n| *n == name).unwrap_or(usize::MAX);
                (order, scope.spawn(move || load_one(name, prog)))
            })
            .collect();
        loading
            .into_iter()
            .map(|(order, handle)| {
                let result = handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                (order, result)
            })
            .collect()
    });
    results.sort_by_key(|(order, _)| *order);
    results.into_iter().try_for_each(|(_, result)| result)
}

/// Loads one XDP or TC program unless it is loaded already.
fn load_one(name: &str, prog: &mut aya::programs::Program) -> Result<()> {
    let rejected = || format!("the verifier rejected {name}");
    match prog {
        aya::programs::Program::Xdp(xdp) if xdp.fd().is_err() => xdp.load().with_context(rejected),
        aya::programs::Program::SchedClassifier(tc) if tc.fd().is_err() => {
            tc.load().with_context(rejected)
        }
        _ => Ok(()),
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .with_context(|| format!("the eBPF object has no program {name}"))
}

/// How an attachment came about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A new link, now pinned.
    New,
    /// A pinned link of an earlier agent, whose program was replaced atomically.
    Adopted,
}

/// Attaches the XDP program to `iface` through a link pinned at `pin`: an
/// existing pinned link gets its program replaced atomically (no moment
/// without a program), else a new link is created and pinned, so the program
/// keeps running when the agent exits. A link pinned at `previous` (an
/// earlier layout's) is taken over the same way and moved to `pin`.
pub fn attach_xdp(
    ebpf: &mut Ebpf,
    iface: &str,
    mode: XdpMode,
    pin: &Path,
    previous: Option<&Path>,
) -> Result<Attached> {
    let xdp: &mut Xdp = program(ebpf, XDP_PROGRAM)?.try_into()?;
    if let Ok(pinned) = PinnedLink::from_pin(pin) {
        let link = XdpLink::try_from(FdLink::from(pinned))
            .with_context(|| format!("{} is not an XDP link", pin.display()))?;
        xdp.attach_to_link(link)
            .with_context(|| format!("replacing the XDP program on {iface}"))?;
        return Ok(Attached::Adopted);
    }
    if let Some(Ok(pinned)) = previous.map(PinnedLink::from_pin) {
        let link = XdpLink::try_from(FdLink::from(pinned))
            .with_context(|| format!("the earlier layout's pin for {iface} is not an XDP link"))?;
        let id = xdp
            .attach_to_link(link)
            .with_context(|| format!("replacing the earlier layout's XDP program on {iface}"))?;
        move_pin(FdLink::try_from(xdp.take_link(id)?)?, previous, pin)?;
        return Ok(Attached::Adopted);
    }
    let id = xdp
        .attach(iface, mode)
        .with_context(|| format!("attaching XDP to {iface}"))?;
    let link = FdLink::try_from(xdp.take_link(id)?).with_context(|| {
        format!("the XDP attachment on {iface} is not a bpf_link; it cannot outlive the agent")
    })?;
    link.pin(pin)
        .with_context(|| format!("pinning the XDP link at {}", pin.display()))?;
    Ok(Attached::New)
}

/// Attaches the TC program `name` to `iface` at `direction` (ingress or
/// egress) through a TCX link pinned at `pin`, adopting an existing pinned
/// link (or an earlier layout's, pinned at `previous`) like [`attach_xdp`].
/// Kernels without TCX (< 6.6) get a clsact qdisc and a netlink filter,
/// which does not survive the agent.
pub fn attach_tc(
    ebpf: &mut Ebpf,
    name: &str,
    iface: &str,
    direction: TcAttachType,
    pin: &Path,
    previous: Option<&Path>,
) -> Result<Attached> {
    let prog: &mut SchedClassifier = program(ebpf, name)?.try_into()?;
    if let Ok(pinned) = PinnedLink::from_pin(pin) {
        let link = SchedClassifierLink::try_from(FdLink::from(pinned))
            .with_context(|| format!("{} is not a TC link", pin.display()))?;
        prog.attach_to_link(link)
            .with_context(|| format!("replacing the TC program on {iface}"))?;
        return Ok(Attached::Adopted);
    }
    if let Some(Ok(pinned)) = previous.map(PinnedLink::from_pin) {
        let link = SchedClassifierLink::try_from(FdLink::from(pinned))
            .with_context(|| format!("the earlier layout's pin for {iface} is not a TC link"))?;
        let id = prog
            .attach_to_link(link)
            .with_context(|| format!("replacing the earlier layout's TC program on {iface}"))?;
        move_pin(FdLink::try_from(prog.take_link(id)?)?, previous, pin)?;
        return Ok(Attached::Adopted);
    }
    let id = if let Ok(id) = prog.attach(iface, direction) {
        id
    } else {
        // Older kernels: netlink attach needs the clsact qdisc (it may exist already).
        let _ = tc::qdisc_add_clsact(iface);
        prog.attach(iface, direction)
            .with_context(|| format!("attaching TC {direction:?} to {iface}"))?
    };
    if let Ok(link) = FdLink::try_from(prog.take_link(id)?) {
        link.pin(pin)
            .with_context(|| format!("pinning the TC link at {}", pin.display()))?;
    }
    Ok(Attached::New)
}

/// Pins `link` at `pin`, then removes its pin at `previous`: the link stays
/// pinned throughout, so it never detaches.
fn move_pin(link: FdLink, previous: Option<&Path>, pin: &Path) -> Result<()> {
    link.pin(pin)
        .with_context(|| format!("pinning the link at {}", pin.display()))?;
    if let Some(previous) = previous {
        std::fs::remove_file(previous)
            .with_context(|| format!("removing the earlier pin {}", previous.display()))?;
    }
    Ok(())
}

/// The index of interface `iface` in this network namespace, if it exists.
#[must_use]
pub fn ifindex(iface: &str) -> Option<u32> {
    let name = std::ffi::CString::new(iface).ok()?;
    // SAFETY: a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Names of the interfaces in this network namespace.
pub fn interfaces() -> Result<Vec<String>> {
    let mut names = Vec::new();
    // SAFETY: if_nameindex returns an array terminated by a zero entry, freed below.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return Err(std::io::Error::last_os_error()).context("listing interfaces");
        }
        let mut entry = list;
        while (*entry).if_index != 0 {
            let name = std::ffi::CStr::from_ptr((*entry).if_name);
            names.push(name.to_string_lossy().into_owned());
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
    }
    Ok(names)
}

/// Lets the uplink `iface` accept packets whose source is one of this node's addresses.
///
/// After SNAT to the node address (a backend on another node) the kernel sees
/// a packet arriving on the uplink with a local source address, which it
/// drops as martian unless `accept_local` is set; the uplink program drops
/// packets from outside that claim the node's address. (Pod interfaces need
/// none: the TC program forwards such packets from pods itself.)
/// Returns the previous value, to restore on exit.
pub fn accept_local_source(iface: &str) -> Result<String> {
    let path = format!("/proc/sys/net/ipv4/conf/{iface}/accept_local");
    let previous = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    std::fs::write(&path, "1").with_context(|| format!("setting {path}"))?;
    Ok(previous.trim().to_string())
}

/// Puts back an interface's `accept_local` (best effort: it may be gone).
pub fn restore_accept_local(iface: &str, value: &str) {
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv4/conf/{iface}/accept_local"),
        value,
    );
}
