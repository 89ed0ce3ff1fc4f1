//! The I/O layer on the kernel side: loads and attaches the programs, pins the
//! maps, and writes plans into them.

mod adopt;
mod attach;
pub mod batch;
mod bpf_syscall;
pub mod convert;
mod handover;
pub mod layout;
pub mod maps;
pub mod pod_netns;
pub mod sock_destroy;
pub mod socket_lb;
mod unpin;
pub mod uplink;
mod writer;

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::{
    programs::{TcAttachType, XdpMode},
    Ebpf, EbpfLoader, VerifierLogLevel,
};
use lb_common::{NodeConfig, CONFIG_F_REPLY_PATH_CHECK, MAP_MAGLEV, MAP_SERVICES};
use tracing::{info, warn};

use crate::flows::{self, FlowSettings};

pub use self::{
    attach::{ifindex, interfaces, is_ipv6_program, EVERY_PROGRAM},
    layout::PIN_LAYOUT,
    unpin::cleanup,
    writer::{decode_label, encode_label},
};
use self::{
    handover::PendingHandover,
    maps::{Maps, PINNED_MAPS},
};

/// The kernel programs' object, embedded at build time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf.o"));

/// Name of the XDP program in the object.
pub const XDP_PROGRAM: &str = "lb_xdp";
/// Name of the TC program in the object.
pub const TC_PROGRAM: &str = "lb_tc";
/// Name of the uplink TC program in the object (`--uplink-hook tc`).
pub const UPLINK_TC_PROGRAM: &str = "lb_tc_uplink";
/// Name of the TC program beside `lb_xdp` at the uplink's TC ingress: the
/// frames XDP hands over (it cannot send them itself) only.
pub const UPLINK_HANDOFF_TC_PROGRAM: &str = "lb_tc_uplink_handoff";
/// Name of the TC program at the egress of uplinks and pod interfaces (out
/// of the node and into the pods: reverse translation only).
pub const EGRESS_TC_PROGRAM: &str = "lb_tc_egress";
/// Name of the pass-everything XDP program (benchmark floor; veth peers).
pub const XDP_PASS_PROGRAM: &str = "xdp_pass";
/// Name of the parse-then-pass XDP program (the floor of any L4 balancer).
pub const XDP_PARSE_PROGRAM: &str = "xdp_parse";
/// Name of the IPv6 parse-then-pass XDP program (the IPv6 floor).
pub const XDP_PARSE6_PROGRAM: &str = "xdp_parse6";

/// Linux capabilities the agent needs: load programs and maps, attach them
/// to interfaces and cgroups and set sysctls, read kernel time in programs,
/// and (`--socket-lb all`) enter the pods' network namespaces to close the
/// sockets of a removed backend (`setns`). Not `SYS_RESOURCE`: the kernels
/// the programs need (5.18, see `preflight::MIN_KERNEL`) charge BPF memory
/// to the memory cgroup, not to `RLIMIT_MEMLOCK`.
pub const REQUIRED_CAPABILITIES: [&str; 4] = ["BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN"];

/// Which program serves the node's uplinks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UplinkHook {
    /// `lb_xdp`, attached in this XDP mode.
    Xdp(XdpMode),
    /// `lb_tc_uplink` at TC ingress: after GRO, and without the copy of
    /// every cloned frame that XDP makes on a veth uplink.
    Tc,
}

impl UplinkHook {
    /// The kind of its link pins ("xdp", "tcup").
    #[must_use]
    pub fn link_kind(self) -> &'static str {
        match self {
            UplinkHook::Xdp(_) => LINK_XDP,
            UplinkHook::Tc => LINK_UPLINK_TC,
        }
    }
}

/// Link pin kind of the XDP program on an uplink.
const LINK_XDP: &str = "xdp";
/// Link pin kind of the TC program on an uplink.
const LINK_UPLINK_TC: &str = "tcup";
/// Link pin kind of the egress TC program on an uplink (no `-`, see
/// [`LINK_POD_TC_EGRESS`]).
const LINK_UPLINK_TC_EGRESS: &str = "tcupegress";
/// Link pin kind of the hand-off TC program beside XDP on an uplink.
const LINK_UPLINK_HANDOFF: &str = "tcupho";
/// Link pin kind of the TC program on a pod interface.
const LINK_POD_TC: &str = "tc";
/// Link pin kind of the egress TC program on a pod interface (no `-`: pins
/// are named `{kind}-{iface}`).
const LINK_POD_TC_EGRESS: &str = "tcegress";
/// Ethtool driver names of overlay devices, whose remote pods' replies to
/// the node's address arrive over the underlay (see `NodeConfig::overlay_ifindex`).
const OVERLAY_DRIVERS: [&str; 2] = ["vxlan", "geneve"];

/// How to set up the data path.
#[derive(Clone, Debug)]
pub struct DatapathConfig {
    /// The node's uplinks: they get the XDP program, or with
    /// [`UplinkHook::Tc`] the uplink TC program.
    pub xdp_ifaces: Vec<String>,
    /// The program on the uplinks, and its attach mode.
    pub uplink: UplinkHook,
    /// Interface name patterns (`*` wildcards) that get the TC program.
    pub tc_patterns: Vec<String>,
    /// The node address used for SNAT.
    pub node_addr: Ipv4Addr,
    /// The node address used for IPv6 SNAT (`None`: IPv6 flows that need
    /// it pass untranslated).
    pub node_addr6: Option<Ipv6Addr>,
    /// Where the maps are pinned (a directory in bpffs, created and removed by us).
    pub pin_dir: PathBuf,
    /// Slots of the Maglev slab.
    pub slab_slots: u32,
    /// Entries of the backends array (`--max-backends`; id 0 unused).
    pub backend_slots: u32,
    /// Frontends of the services map, and Service port ids (`--max-services`).
    pub service_slots: u32,
    /// Service ids counted in the per-CPU array, the rest in the hash
    /// (`None`: as many as [`lb_common::SERVICE_STATS_ARRAY_BUDGET`] allows).
    pub stats_array_len: Option<u32>,
    /// On exit, detach the programs and remove the pins (else they keep serving).
    pub detach_on_exit: bool,
    /// Flow tracking and translation: SNAT pool, timeouts, hash key, checks.
    pub flows: FlowSettings,
    /// Socket-level balancing: the cgroup v2 directory its programs attach
    /// to (`None`: off).
    pub socket_lb_cgroup: Option<PathBuf>,
    /// Whose sockets socket-level balancing serves (with a cgroup).
    pub socket_lb_scope: socket_lb::SocketLbScope,
    /// With [`socket_lb::SocketLbScope::All`]: directories of the pods'
    /// network namespace files, where the sockets of a removed backend are
    /// closed too.
    pub socket_lb_netns_dirs: Vec<PathBuf>,
    /// IPv6 served (`--ipv6 on`): IPv6's packet programs are loaded into
    /// the IPv4 entry points' prog-array slots, and with a socket-lb cgroup
    /// IPv6's socket programs attach beside IPv4's.
    pub ipv6: bool,
}

/// The loaded and attached data path.
pub struct Datapath {
    ebpf: Ebpf,
    /// Typed map handles.
    pub maps: Maps,
    config: DatapathConfig,
    /// Pod interfaces with the TC program at ingress.
    tc_attached: BTreeSet<String>,
    /// Pod interfaces with the egress TC program.
    tc_egress_attached: BTreeSet<String>,
    /// The overlay device found (name, index), as `CONFIG` holds it.
    overlay: Option<(String, u32)>,
    /// Interfaces whose `accept_local` we changed, with the value to restore.
    sysctls: Vec<(String, String)>,
    /// The maps came from an earlier agent's pins.
    adopted: bool,
    /// A hand-over from an earlier pin layout, finished after the first sync.
    handover: Option<PendingHandover>,
}

impl Datapath {
    /// Loads the programs and attaches them. Maps pinned by an earlier agent
    /// under the same pin directory (and layout version) are adopted with
    /// their contents, conntrack included; pinned links get the new programs
    /// atomically. What is new is pinned, so it outlives this process.
    ///
    /// Pins of an earlier layout version start a hand-over: the maps this
    /// agent can read are copied, and the earlier programs keep serving
    /// until [`Datapath::finish_handover`] moves their links.
    pub fn load(config: DatapathConfig) -> Result<Self> {
        raise_memlock_limit();
        let dir = pins_dir(&config.pin_dir);
        std::fs::create_dir_all(dir.join(LINKS_DIR)).with_context(|| {
            format!(
                "cannot create the pin directory {} (is bpffs mounted at /sys/fs/bpf?)",
                dir.display()
            )
        })?;
        let expected = layout::object_shapes()?;
        layout::check_same_version(&dir, &layout::pinned_shapes(&dir), expected)?;
        let adopted = dir.join(MAP_SERVICES).exists();
        let handover = Self::plan_handover(&config.pin_dir, adopted, expected);
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(
            MAP_MAGLEV,
            config.slab_slots.div_ceil(lb_common::SLOTS_PER_SLAB_ENTRY),
        );
        let stats_array_len = match config.stats_array_len {
            Some(len) => len,
            None => lb_common::service_stats_array_len(
                u32::try_from(maps::possible_cpus()?).unwrap_or(u32::MAX),
                config.service_slots,
            ),
        };
        loader.map_max_entries(lb_common::MAP_SERVICE_STATS_ARRAY, stats_array_len);
        // The two families' backends share one id space: both arrays span it.
        for map in [lb_common::MAP_BACKENDS, lb_common::maps6::MAP_BACKENDS6] {
            loader.map_max_entries(map, config.backend_slots);
        }
        // Frontends, and the maps indexed by Service port id (id 0 unused).
        for map in [
            MAP_SERVICES,
            lb_common::maps6::MAP_SERVICES6,
            lb_common::MAP_SERVICE_LABELS,
            lb_common::MAP_SERVICE_STATS,
        ] {
            loader.map_max_entries(map, config.service_slots);
        }
        loader.map_max_entries(
            lb_common::MAP_INTERNAL_TABLES,
            config.service_slots.saturating_add(1),
        );
        for name in PINNED_MAPS {
            loader.map_pin_path(name, dir.join(name));
        }
        let host_netns = if config.socket_lb_cgroup.is_some() {
            socket_lb::netns_cookie()?
        } else {
            0
        };
        loader.override_global(socket_lb::HOST_NETNS_COOKIE, &host_netns, true);
        let all_netns = if config.socket_lb_cgroup.is_some() {
            config.socket_lb_scope.all_netns()
        } else {
            0
        };
        loader.override_global(socket_lb::SOCK_ALL_NETNS, &all_netns, true);
        let xdp_meta = u8::from(uplink::xdp_metadata_supported());
        loader.override_global(uplink::XDP_META, &xdp_meta, true);
        if std::env::var_os("LB_VERIFIER_LOG").is_some() {
            // Debugging aid: the whole verifier log in load errors.
            loader.verifier_log_level(VerifierLogLevel::VERBOSE | VerifierLogLevel::STATS);
        }
        let ebpf = loader
            .load(EBPF_OBJECT)
            .context("loading the eBPF object")?;
        if adopted {
            info!(dir = %dir.display(), "adopted the pinned maps of an earlier agent");
        }
        let pin_dir = config.pin_dir.clone();
        // A fresh start that fails must not leave pins behind.
        Self::attach_all(ebpf, config, adopted, handover).inspect_err(|_| {
            if !adopted {
                cleanup(&pin_dir);
            }
        })
    }

    /// The reader of the kernel programs' log records (aya-log), once.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        match aya_log::EbpfLogger::init(&mut self.ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                warn!("kernel log records are not forwarded: {e}");
                None
            }
        }
    }

    /// Whether the maps came from an earlier agent's pins.
    #[must_use]
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    fn link_pin(&self, kind: &str, iface: &str) -> PathBuf {
        pins_dir(&self.config.pin_dir)
            .join(LINKS_DIR)
            .join(format!("{kind}-{iface}"))
    }

    /// The hand-over from earlier layouts found under `pin_dir`, if any: what
    /// to carry from the newest (unless this layout's pins were adopted).
    fn plan_handover(
        pin_dir: &Path,
        adopted: bool,
        expected: &layout::Shapes,
    ) -> Option<PendingHandover> {
        let versions = layout::other_layouts(pin_dir);
        let newest = versions.last()?;
        let carry = (!adopted).then(|| {
            let from = pin_dir.join(newest);
            let plan = layout::plan_handover(newest, &layout::pinned_shapes(&from), expected);
            for (map, why) in &plan.fresh {
                warn!(
                    map,
                    "not carried over from layout {newest}: {why}; it starts empty"
                );
            }
            (from, plan)
        });
        info!(earlier = ?versions, "pins of an earlier layout: handing over");
        Some(PendingHandover {
            dirs: versions.iter().map(|v| pin_dir.join(v)).collect(),
            carry,
            copied: (0, 0),
            started_ns: crate::conntrack::monotonic_ns(),
        })
    }

    fn attach_all(
        mut ebpf: Ebpf,
        config: DatapathConfig,
        mut adopted: bool,
        mut handover: Option<PendingHandover>,
    ) -> Result<Self> {
        let mut maps = Maps::take(&mut ebpf)?;
        if let Some(PendingHandover {
            carry: Some((from, plan)),
            copied,
            ..
        }) = handover.as_mut()
        {
            let dir = pins_dir(&config.pin_dir);
            if plan.carries_services() {
                handover::carry_services(from, &dir, plan, &mut maps)
                    .context("carrying the services over from the earlier layout")?;
                adopted = true;
            }
            *copied = handover::carry_state(from, &dir, plan, None)
                .context("carrying the flows over from the earlier layout")?;
            info!(
                from = plan.from,
                carried = ?plan.carry,
                conntrack = copied.0,
                reverse_nat = copied.1,
                "carried the earlier layout's maps over"
            );
        }
        let hash_key = Self::hash_key(&config.flows, &maps, adopted)?;
        // The overlay device is in the first configuration the programs
        // read (an adopted data path keeps accepting its pods' replies).
        let overlay = overlay_device(&config, &attach::interfaces()?);
        let mut node = node_config(&config, hash_key);
        node.overlay_ifindex = overlay.as_ref().map_or(0, |(_, index)| *index);
        maps.config.set(0, node, 0)?;
        if let Some((iface, index)) = &overlay {
            info!(
                iface,
                index, "overlay device: replies of pods behind it are accepted on the uplinks"
            );
        }
        let mut datapath = Self {
            ebpf,
            maps,
            config,
            tc_attached: BTreeSet::new(),
            tc_egress_attached: BTreeSet::new(),
            overlay,
            sysctls: Vec::new(),
            adopted,
            handover,
        };
        // With IPv6 off its programs stay unverified and out of the slots:
        // the IPv4 entry points then pass IPv6 frames untouched.
        let ipv6 = datapath.config.ipv6;
        let programs: Vec<&str> = attach::programs_for(datapath.config.uplink)
            .iter()
            .copied()
            .filter(|name| ipv6 || !attach::is_ipv6_program(name))
            .collect();
        attach::load_programs(&mut datapath.ebpf, &programs)?;
        attach::fill_ipv6_slots(&mut datapath.ebpf)?;
        let links = pins_dir(&datapath.config.pin_dir).join(LINKS_DIR);
        if let Some(cgroup) = datapath.config.socket_lb_cgroup.clone() {
            socket_lb::load(&mut datapath.ebpf, ipv6)?;
            let scope = datapath.config.socket_lb_scope;
            socket_lb::attach(&mut datapath.ebpf, &cgroup, scope, ipv6, &links)?;
        } else {
            socket_lb::detach_pinned(&links);
        }
        for iface in &datapath.config.xdp_ifaces.clone() {
            // Egress first: replies that kept the client's address are
            // translated there once the ingress program leaves them be (an
            // earlier layout's ingress program translates them itself).
            let egress_pin = datapath.link_pin(LINK_UPLINK_TC_EGRESS, iface);
            if !datapath.awaits_handover(LINK_UPLINK_TC_EGRESS, iface, &egress_pin) {
                let how = datapath.attach_uplink_egress(iface, None)?;
                info!(
                    iface,
                    ?how,
                    hook = LINK_UPLINK_TC_EGRESS,
                    "uplink program attached"
                );
            }
            let kind = datapath.config.uplink.link_kind();
            let pin = datapath.link_pin(kind, iface);
            if datapath.awaits_handover(kind, iface, &pin) {
                info!(
                    iface,
                    "the earlier layout's uplink program serves until the first sync"
                );
                continue;
            }
            let how = datapath.attach_uplink(iface, None)?;
            datapath.set_accept_local(iface, how)?;
            info!(iface, ?how, hook = kind, "uplink program attached");
        }
        datapath.attach_new_pod_interfaces()?;
        Ok(datapath)
    }

    /// The flow-hash key to use: the configured one, else the one an earlier
    /// agent pinned (so a restart keeps every node's choices), else a new
    /// random one (Maglev then differs from other nodes': give `--hash-seed`).
    fn hash_key(flows: &FlowSettings, maps: &Maps, adopted: bool) -> Result<lb_common::HashKey> {
        if let Some(key) = flows.hash_key {
            return Ok(key);
        }
        if adopted {
            let pinned = maps.config.get(&0, 0)?.hash_key;
            if pinned != [0, 0] {
                info!("kept the flow-hash key of the earlier agent");
                return Ok(pinned);
            }
        }
        warn!(
            "no --hash-seed: this node hashes flows with a random key of its own, so \
             other nodes pick other backends for the same flow"
        );
        flows::random_hash_key()
    }

    /// Attaches the configured uplink program to `iface` (taking over the
    /// link pinned at `previous`, an earlier layout's; XDP after its TC
    /// hand-off program), then detaches the other uplink hook's links an
    /// earlier agent may have left there.
    fn attach_uplink(&mut self, iface: &str, previous: Option<&Path>) -> Result<attach::Attached> {
        let pin = self.link_pin(self.config.uplink.link_kind(), iface);
        let how = match self.config.uplink {
            UplinkHook::Xdp(mode) => {
                let handoff = self.link_pin(LINK_UPLINK_HANDOFF, iface);
                attach::attach_tc(
                    &mut self.ebpf,
                    UPLINK_HANDOFF_TC_PROGRAM,
                    iface,
                    TcAttachType::Ingress,
                    &handoff,
                    None,
                )?;
                attach::attach_xdp(&mut self.ebpf, iface, mode, &pin, previous)?
            }
            UplinkHook::Tc => attach::attach_tc(
                &mut self.ebpf,
                UPLINK_TC_PROGRAM,
                iface,
                TcAttachType::Ingress,
                &pin,
                previous,
            )?,
        };
        let others: &[&str] = match self.config.uplink {
            UplinkHook::Xdp(_) => &[LINK_UPLINK_TC],
            UplinkHook::Tc => &[LINK_XDP, LINK_UPLINK_HANDOFF],
        };
        for &other in others {
            let stale = self.link_pin(other, iface);
            if stale.exists() {
                // The new hook serves already.
                unpin::detach_link(&stale)
                    .with_context(|| format!("detaching {}", stale.display()))?;
                info!(iface, hook = other, "detached the other uplink hook");
            }
        }
        Ok(how)
    }

    /// Attaches the egress program to the uplink `iface` (taking over the
    /// link pinned at `previous`, an earlier layout's): replies of flows that
    /// kept the client's address are translated back as they leave.
    fn attach_uplink_egress(
        &mut self,
        iface: &str,
        previous: Option<&Path>,
    ) -> Result<attach::Attached> {
        let pin = self.link_pin(LINK_UPLINK_TC_EGRESS, iface);
        attach::attach_tc(
            &mut self.ebpf,
            EGRESS_TC_PROGRAM,
            iface,
            TcAttachType::Egress,
            &pin,
            previous,
        )
    }

    /// Whether `iface` keeps an earlier layout's program of `kind` until the
    /// hand-over finishes (this layout has no link pinned there yet).
    fn awaits_handover(&self, kind: &str, iface: &str, pin: &Path) -> bool {
        !pin.exists()
            && self
                .handover
                .as_ref()
                .is_some_and(|h| h.has_link(kind, iface))
    }

    /// Finishes a hand-over from an earlier layout, once the maps hold the
    /// first sync: moves each earlier link to these programs (atomically,
    /// so the interface is never without a program), detaches those of
    /// interfaces no longer configured, copies the flows the earlier
    /// programs made meanwhile and their counters, and removes the earlier pins.
    pub fn finish_handover(&mut self) -> Result<()> {
        let Some(pending) = self.handover.take() else {
            return Ok(());
        };
        for dir in &pending.dirs {
            let links = std::fs::read_dir(dir.join(LINKS_DIR)).into_iter().flatten();
            for entry in links.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let old = entry.path();
                let Some((kind, iface)) = name.split_once('-') else {
                    continue;
                };
                let uplink = self.config.xdp_ifaces.iter().any(|i| i == iface);
                let moved = match kind {
                    k if uplink && k == self.config.uplink.link_kind() => {
                        self.attach_uplink(iface, Some(&old)).map(Some)
                    }
                    LINK_UPLINK_TC_EGRESS if uplink => {
                        self.attach_uplink_egress(iface, Some(&old)).map(Some)
                    }
                    LINK_POD_TC | LINK_POD_TC_EGRESS
                        if self.config.tc_patterns.iter().any(|p| glob_match(p, iface)) =>
                    {
                        self.attach_pod(kind, iface, Some(&old)).map(Some)
                    }
                    _ => Ok(None),
                };
                match moved {
                    Ok(Some(how)) => {
                        if uplink && kind != LINK_UPLINK_TC_EGRESS {
                            self.set_accept_local(iface, how)?;
                        }
                        info!(iface, kind, "took over the earlier layout's link");
                    }
                    Ok(None) => {
                        // Not configured any more.
                        match unpin::detach_link(&old) {
                            Ok(_) => info!(iface, kind, "detached the earlier layout's program"),
                            Err(e) => warn!(iface, kind, "cannot detach the earlier link: {e}"),
                        }
                    }
                    Err(e) => warn!(iface, kind, "cannot take over the earlier link: {e:#}"),
                }
            }
        }
        let dir = pins_dir(&self.config.pin_dir);
        if let Some((from, plan)) = &pending.carry {
            let (ct, rev) = handover::carry_state(from, &dir, plan, Some(pending.started_ns))?;
            handover::carry_counters(from, &dir, plan)?;
            if !plan.carry.contains(&lb_common::MAP_EVENTS) {
                // Carried entries count as created, so evictions stay created - live.
                let (ct, rev) = (pending.copied.0 + ct, pending.copied.1 + rev);
                self.maps
                    .add_events(lb_common::Event::ConntrackCreated, ct)?;
                self.maps.add_events(lb_common::Event::RevNatCreated, rev)?;
            }
        }
        for old in &pending.dirs {
            // Its links were taken over or detached above; what it still
            // pins may be a link this layout pins too.
            unpin::remove_layout_dir(old, unpin::Links::Unpin);
        }
        info!(
            removed = ?pending.dirs,
            "hand-over from the earlier layout finished"
        );
        Ok(())
    }

    /// Sets `accept_local`, remembering the value to restore unless an earlier
    /// agent set it (then the original value is not known).
    fn set_accept_local(&mut self, iface: &str, how: attach::Attached) -> Result<()> {
        let previous = attach::accept_local_source(iface)?;
        if how == attach::Attached::New {
            self.sysctls.push((iface.to_string(), previous));
        }
        Ok(())
    }

    /// Attaches the TC programs to interfaces matching the patterns that
    /// appeared since the last call: at egress first (replies into the pod
    /// are translated before the pod can open a flow), then at ingress.
    /// Also looks for the node's overlay device (it may appear after the
    /// agent started, as the CNI's does).
    pub fn attach_new_pod_interfaces(&mut self) -> Result<()> {
        let interfaces = attach::interfaces()?;
        for iface in &interfaces {
            if !self.config.tc_patterns.iter().any(|p| glob_match(p, iface)) {
                continue;
            }
            for kind in [LINK_POD_TC_EGRESS, LINK_POD_TC] {
                let attached = if kind == LINK_POD_TC {
                    &self.tc_attached
                } else {
                    &self.tc_egress_attached
                };
                let pin = self.link_pin(kind, iface);
                if attached.contains(iface) || self.awaits_handover(kind, iface, &pin) {
                    continue;
                }
                // No accept_local on pod interfaces: the TC program forwards the
                // packets that leave a pod with the node's address itself.
                match self.attach_pod(kind, iface, None) {
                    Ok(how) => info!(iface, ?how, hook = kind, "TC program attached"),
                    Err(e) => warn!(iface, hook = kind, "cannot attach the TC program: {e:#}"),
                }
            }
        }
        self.find_overlay(&interfaces)
    }

    /// Attaches the pod program of link kind `kind` (ingress or egress) to
    /// `iface`, taking over the link pinned at `previous` (an earlier
    /// layout's), and notes it attached.
    fn attach_pod(
        &mut self,
        kind: &str,
        iface: &str,
        previous: Option<&Path>,
    ) -> Result<attach::Attached> {
        let pin = self.link_pin(kind, iface);
        let (program, direction) = if kind == LINK_POD_TC {
            (TC_PROGRAM, TcAttachType::Ingress)
        } else {
            (EGRESS_TC_PROGRAM, TcAttachType::Egress)
        };
        let how = attach::attach_tc(&mut self.ebpf, program, iface, direction, &pin, previous)?;
        if kind == LINK_POD_TC {
            self.tc_attached.insert(iface.to_string());
        } else {
            self.tc_egress_attached.insert(iface.to_string());
        }
        Ok(how)
    }

    /// Tells the programs the node's overlay device among `interfaces`
    /// ([`overlay_device`]) when it changed (a CNI creates its own after the
    /// agent may have started, or recreates it).
    fn find_overlay(&mut self, interfaces: &[String]) -> Result<()> {
        let found = overlay_device(&self.config, interfaces);
        if found == self.overlay {
            return Ok(());
        }
        let mut config = self.maps.config.get(&0, 0)?;
        config.overlay_ifindex = found.as_ref().map_or(0, |(_, index)| *index);
        self.maps.config.set(0, config, 0)?;
        if let Some((iface, index)) = &found {
            info!(
                iface,
                index, "overlay device: replies of pods behind it are accepted on the uplinks"
            );
        } else {
            info!("no overlay device any more");
        }
        self.overlay = found;
        Ok(())
    }

    /// Loads the XDP and TC programs of `family` the agent left unverified
    /// (the other uplink hook's, the baselines), for tests and benchmarks
    /// that run them through `BPF_PROG_TEST_RUN`; IPv6's then fill their
    /// prog-array slots. A packet test that sends frames of one family
    /// verifies half the code: until IPv6's are loaded, an IPv4 entry point
    /// passes IPv6 frames untouched (an empty slot).
    pub fn load_programs_of(&mut self, family: lb_common::Family) -> Result<()> {
        let ipv6 = family == lb_common::Family::Ipv6;
        let names: Vec<&str> = attach::EVERY_PROGRAM
            .into_iter()
            .filter(|name| attach::is_ipv6_program(name) == ipv6)
            .collect();
        attach::load_programs(&mut self.ebpf, &names)?;
        if ipv6 {
            attach::fill_ipv6_slots(&mut self.ebpf)?;
        }
        Ok(())
    }

    /// A program by name (for `BPF_PROG_TEST_RUN` in tests and benchmarks;
    /// see [`Datapath::load_programs_of`]).
    #[must_use]
    pub fn program(&self, name: &str) -> &aya::programs::Program {
        self.ebpf
            .program(name)
            .unwrap_or_else(|| panic!("the eBPF object has no program {name}"))
    }

    /// Names of the pod interfaces the TC program is attached to (at ingress;
    /// the egress program goes wherever it does).
    #[must_use]
    pub fn pod_interfaces(&self) -> &BTreeSet<String> {
        &self.tc_attached
    }

    /// Ends this agent's hold on the data path. With `detach_on_exit` the
    /// programs are detached, sysctls restored and pins removed; otherwise
    /// everything stays pinned and keeps serving for the next agent.
    pub fn shutdown(self) {
        let pin_dir = self.config.pin_dir.clone();
        let detach = self.config.detach_on_exit;
        let sysctls = self.sysctls.clone();
        drop(self);
        if detach {
            cleanup(&pin_dir);
            for (iface, value) in sysctls {
                attach::restore_accept_local(&iface, &value);
            }
            info!("detached and removed pins");
        } else {
            info!(dir = %pins_dir(&pin_dir).display(), "the data path keeps serving from its pins");
        }
    }
}

/// The node's overlay device among `interfaces`, with its index: the first
/// whose driver is an overlay's ([`OVERLAY_DRIVERS`]; uplinks and pod
/// interfaces are not looked at). The programs' reverse-path check accepts
/// on an uplink the replies of pods behind it (see
/// `NodeConfig::overlay_ifindex`).
fn overlay_device(config: &DatapathConfig, interfaces: &[String]) -> Option<(String, u32)> {
    interfaces
        .iter()
        .filter(|iface| {
            !config.xdp_ifaces.contains(iface)
                && !config.tc_patterns.iter().any(|p| glob_match(p, iface))
        })
        .find(|iface| uplink::driver(iface).is_ok_and(|d| OVERLAY_DRIVERS.contains(&d.as_str())))
        .and_then(|iface| Some((iface.clone(), attach::ifindex(iface)?)))
}

/// The node configuration the programs read, from the agent's settings.
#[must_use]
pub fn node_config(config: &DatapathConfig, hash_key: lb_common::HashKey) -> NodeConfig {
    let flows = &config.flows;
    NodeConfig {
        node_addr: u32::from_ne_bytes(config.node_addr.octets()),
        flags: if flows.reply_path_check {
            CONFIG_F_REPLY_PATH_CHECK
        } else {
            0
        },
        snat_port_min: *flows.snat_ports.0.start(),
        snat_port_max: *flows.snat_ports.0.end(),
        // Found among the interfaces (`overlay_device`).
        overlay_ifindex: 0,
        hash_key,
        timeouts: flows.timeouts,
        node_addr6: config
            .node_addr6
            .map_or([0; 4], |addr| lb_common::maps6::ipv6_words(addr.octets())),
    }
}

/// Subdirectory of the pinned links.
const LINKS_DIR: &str = "links";

/// Where the maps and links live under a `--pin-dir`.
#[must_use]
pub fn pins_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join(PIN_LAYOUT)
}

fn raise_memlock_limit() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const limit) };
    if ret != 0 {
        // Kernels since 5.11 charge BPF memory to the cgroup instead.
        tracing::debug!("cannot raise RLIMIT_MEMLOCK; fine on kernels >= 5.11");
    }
}

/// Matches `name` against a pattern where `*` stands for any run of characters.
#[must_use]
pub fn glob_match(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((prefix, rest)) => {
            let Some(tail) = name.strip_prefix(prefix) else {
                return false;
            };
            if rest.is_empty() {
                return true;
            }
            (0..=tail.len()).any(|i| tail.is_char_boundary(i) && glob_match(rest, &tail[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        attach::{programs_for, EVERY_PROGRAM},
        glob_match, UplinkHook, EGRESS_TC_PROGRAM, TC_PROGRAM, UPLINK_HANDOFF_TC_PROGRAM,
        UPLINK_TC_PROGRAM, XDP_PROGRAM,
    };
    use aya::programs::XdpMode;

    /// An agent verifies its hook's uplink program, never the other's; the
    /// pods' programs with either; tests can load all of them.
    #[test]
    fn an_agent_loads_only_its_hooks_uplink_program() {
        let xdp = programs_for(UplinkHook::Xdp(XdpMode::Driver));
        assert!(xdp.contains(&XDP_PROGRAM) && xdp.contains(&UPLINK_HANDOFF_TC_PROGRAM));
        assert!(!xdp.contains(&UPLINK_TC_PROGRAM));
        let tc = programs_for(UplinkHook::Tc);
        assert!(tc.contains(&UPLINK_TC_PROGRAM));
        assert!(!tc.contains(&XDP_PROGRAM) && !tc.contains(&UPLINK_HANDOFF_TC_PROGRAM));
        for hook in [xdp, tc] {
            assert!(hook.contains(&TC_PROGRAM) && hook.contains(&EGRESS_TC_PROGRAM));
            assert!(hook.iter().all(|p| EVERY_PROGRAM.contains(p)));
        }
    }

    #[test]
    fn glob_patterns() {
        assert!(glob_match("veth*", "veth12ab"));
        assert!(glob_match("vpod*", "vpod"));
        assert!(glob_match("*pod*", "vpod1a"));
        assert!(glob_match("eth0", "eth0"));
        assert!(!glob_match("eth0", "eth01"));
        assert!(!glob_match("veth*", "eth0"));
        assert!(glob_match("v*a", "vpod1a"));
        assert!(!glob_match("v*b", "vpod1a"));
    }
}
