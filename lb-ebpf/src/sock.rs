//! Socket-level balancing: cgroup `sock_addr` hooks that point a socket
//! aimed at a Service at a backend before any packet exists, so its packets
//! need no translation (Cilium's socket LB). `connect4` decides once per
//! connected socket (TCP, connected UDP), `sendmsg4` per send of an
//! unconnected UDP socket; `recvmsg4` and `getpeername4` show the Service
//! address back to the application, from `SOCK_REVERSE`. IPv6 sockets have
//! the twins in `sock6`, which share this module's IPv4 decision for a
//! v4-mapped destination ([`to_backend`]).
//!
//! Which sockets are balanced here is the agent's scope: those of the
//! node's own network namespace (`HOST_NETNS_COOKIE`; pods keep the
//! per-packet path), or every namespace's (`SOCK_ALL_NETNS`: pods too).
//! Every client is inside the cluster: it sees a frontend as pods do
//! ([`view::for_client`] at [`Hook::Pod`]), as kube-proxy sends the node's
//! own traffic to external frontends of `externalTrafficPolicy: Local`
//! Services to every node's endpoints. A socket's affinity key is its
//! network namespace (its cookie: one pod, or the node), as its address is
//! not known yet at `connect`. The backend is picked by a hash of the
//! socket's cookie (nor is its source port), so each socket keeps its
//! backend for every send.

use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
    EbpfContext,
};
use lb_common::{
    flow_hash, Event, SockRevEntry, SockRevKey, IPPROTO_TCP, IPPROTO_UDP, SERVICE_F_SOURCE_RANGES,
};

use crate::{
    affinity, config, counters, frontend,
    lb::Hook,
    maps::SOCK_REVERSE,
    select::{self, Chosen},
    view,
};

/// `AF_INET`.
const AF_INET: u32 = 2;
/// What a `sock_addr` program returns to let the call proceed.
pub const PROCEED: i32 = 1;
/// What it returns to fail the call (`EPERM`).
pub const REFUSE: i32 = 0;
/// `BPF_ANY`: create or replace.
pub const BPF_ANY: u64 = 0;

/// The node's network namespace cookie, set by the agent at load
/// (`SO_NETNS_COOKIE` of a socket of its own): sockets of other namespaces
/// (pods) are left to the per-packet path. Zero balances none.
#[unsafe(no_mangle)]
static HOST_NETNS_COOKIE: u64 = 0;

/// Nonzero: sockets of every network namespace are balanced (pods' too),
/// set by the agent at load (`--socket-lb all`).
#[unsafe(no_mangle)]
static SOCK_ALL_NETNS: u8 = 0;

/// The agent's scope: (the node's netns cookie, whether every namespace).
#[inline(always)]
fn scope() -> (u64, bool) {
    // SAFETY: reads of constants the loader may have rewritten; volatile so
    // the compiler does not fold the zeroes they were compiled with.
    unsafe {
        (
            core::ptr::read_volatile(&raw const HOST_NETNS_COOKIE),
            core::ptr::read_volatile(&raw const SOCK_ALL_NETNS) != 0,
        )
    }
}

/// The network namespace cookie of the socket of `ctx`, if the agent's
/// scope takes its sockets.
#[inline(always)]
pub fn netns_in_scope(ctx: &SockAddrContext) -> Option<u64> {
    let (host, all) = scope();
    // SAFETY: helper available to sock_addr programs; the context is ours.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    (all || (host != 0 && netns == host)).then_some(netns)
}

/// Whether the agent's scope takes the socket of `ctx`; with every
/// namespace in scope, without asking for its cookie (this runs on every
/// `recvmsg`).
#[inline(always)]
pub fn in_scope(ctx: &SockAddrContext) -> bool {
    let (host, all) = scope();
    // SAFETY: as in `netns_in_scope`.
    all || (host != 0 && unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } == host)
}

/// What a call aimed at an address comes to.
pub enum Aim<A> {
    /// No Service of ours there (or one the per-packet path serves): the
    /// call proceeds untouched.
    Untouched,
    /// The Service has no backend for the node: the call fails.
    Refused,
    /// Pointed at this backend address and port (network order).
    Backend(A, u16),
}

/// `connect4` (`udp_only` false) and `sendmsg4` (true): points a socket
/// aimed at a Service at a backend, or refuses the call when the Service
/// has no backend for it.
#[inline(always)]
pub fn forward(ctx: &SockAddrContext, udp_only: bool) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel's context for this program type; plain reads.
    let (family, proto, addr, port) = unsafe {
        (
            (*sa).user_family,
            (*sa).protocol,
            (*sa).user_ip4,
            (*sa).user_port,
        )
    };
    let Some(proto) = balanced_proto(proto, udp_only) else {
        return PROCEED;
    };
    if family != AF_INET {
        return PROCEED;
    }
    let Some(netns) = netns_in_scope(ctx) else {
        return PROCEED;
    };
    // The port is the socket address's, network order, in a 32-bit field.
    #[allow(clippy::cast_possible_truncation)]
    let port = port as u16;
    match to_backend(ctx, netns, addr, port, proto) {
        Aim::Untouched => PROCEED,
        Aim::Refused => REFUSE,
        Aim::Backend(addr, port) => {
            // SAFETY: the kernel lets these programs rewrite the
            // destination; each store is a whole 32-bit field.
            unsafe {
                (*sa).user_ip4 = addr;
                (*sa).user_port = u32::from(port);
            }
            PROCEED
        }
    }
}

/// The protocol of a socket the programs balance: TCP or UDP (UDP only
/// for `sendmsg`).
#[inline(always)]
pub fn balanced_proto(proto: u32, udp_only: bool) -> Option<u8> {
    let proto = u8::try_from(proto).ok()?;
    (proto == IPPROTO_UDP || (proto == IPPROTO_TCP && !udp_only)).then_some(proto)
}

/// Where a socket of `ctx` in namespace `netns`, aimed at the IPv4 address
/// `addr`:`port` (network order) of protocol `proto`, goes: the backend
/// of the Service there, remembered in `SOCK_REVERSE` for the reverse
/// programs. Shared by IPv4's sockets and IPv6's aimed at a v4-mapped
/// address (`sock6`).
#[inline(always)]
pub fn to_backend(ctx: &SockAddrContext, netns: u64, addr: u32, port: u16, proto: u8) -> Aim<u32> {
    let Some(svc) = frontend::lookup_at(addr, port, proto) else {
        return Aim::Untouched;
    };
    // Source ranges are checked on packets, by the per-packet path.
    if svc.flags & SERVICE_F_SOURCE_RANGES != 0 {
        return Aim::Untouched;
    }
    let Some(svc) = view::for_client(svc, Hook::Pod) else {
        return Aim::Untouched;
    };
    let Some(cfg) = config::get() else {
        return Aim::Untouched;
    };
    // SAFETY: helper available to sock_addr programs; the context is ours.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let chosen: Option<Chosen> = affinity::recall_netns(&svc, netns, view::selected_flag(&svc))
        .or_else(|| {
            #[allow(clippy::cast_possible_truncation)]
            let (low, high) = (cookie as u32, (cookie >> 32) as u32);
            let picked = select::by_hash(&svc, flow_hash(&cfg.hash_key, low, high, 0, 0, proto))?;
            affinity::remember_netns(&svc, netns, &picked);
            Some(picked)
        });
    let Some(chosen) = chosen else {
        // No backend for the node: kube-proxy rejects (no endpoints) or
        // drops (none it may use); a refused call tells the application at once.
        counters::event(Event::SocketRefused);
        return Aim::Refused;
    };
    let key = SockRevKey {
        cookie,
        backend_addr: chosen.backend.addr,
        backend_port: chosen.backend.port,
        pad: 0,
    };
    let entry = SockRevEntry {
        svc_addr: addr,
        svc_port: port,
        pad: 0,
    };
    // An LRU map: an insert cannot fail for want of room.
    let _ = SOCK_REVERSE.insert(key, entry, BPF_ANY);
    counters::event(Event::SocketTranslated);
    Aim::Backend(chosen.backend.addr, chosen.backend.port)
}

/// `recvmsg4` and `getpeername4`: a backend's address, as a socket pointed
/// at it sees it, becomes the Service's again.
#[inline(always)]
pub fn reverse(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel's context for this program type; plain reads.
    let (family, addr, port) = unsafe { ((*sa).user_family, (*sa).user_ip4, (*sa).user_port) };
    if family != AF_INET || !in_scope(ctx) {
        return PROCEED;
    }
    #[allow(clippy::cast_possible_truncation)]
    if let Some(entry) = service_of(ctx, addr, port as u16) {
        // SAFETY: as in `forward`.
        unsafe {
            (*sa).user_ip4 = entry.svc_addr;
            (*sa).user_port = u32::from(entry.svc_port);
        }
    }
    PROCEED
}

/// The Service address the socket of `ctx` asked for when it was pointed
/// at the IPv4 backend `addr`:`port` (network order), if it was.
#[inline(always)]
pub fn service_of(ctx: &SockAddrContext, addr: u32, port: u16) -> Option<SockRevEntry> {
    // SAFETY: helper available to sock_addr programs; the context is ours.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockRevKey {
        cookie,
        backend_addr: addr,
        backend_port: port,
        pad: 0,
    };
    // SAFETY: the LRU value is copied out at once.
    unsafe { SOCK_REVERSE.get(key) }.copied()
}
