//! Socket-level balancing: cgroup `sock_addr` hooks that point a socket
//! aimed at a Service at a backend before any packet exists, so its packets
//! need no translation (Cilium's socket LB). `connect4` decides once per
//! connected socket (TCP, connected UDP), `sendmsg4` per send of an
//! unconnected UDP socket; `recvmsg4` and `getpeername4` show the Service
//! address back to the application, from `SOCK_REVERSE`.
//!
//! Only sockets of the node's own network namespace are balanced here
//! (`HOST_NETNS_COOKIE`): pods keep the per-packet path. The node is a
//! client inside the cluster: it sees a frontend as pods do
//! ([`view::for_client`] at [`Hook::Pod`]), as kube-proxy sends the node's
//! own traffic to external frontends of `externalTrafficPolicy: Local`
//! Services to every node's endpoints. Its affinity key is the node's
//! address. The backend is picked by a hash of the socket's cookie (the
//! source port is not chosen yet at `connect`), so each socket keeps its
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
const BPF_ANY: u64 = 0;

/// The node's network namespace cookie, set by the agent at load
/// (`SO_NETNS_COOKIE` of a socket of its own): sockets of other namespaces
/// (pods) are left to the per-packet path. Zero balances none.
#[unsafe(no_mangle)]
static HOST_NETNS_COOKIE: u64 = 0;

/// Whether the socket of `ctx` belongs to the node's own namespace.
#[inline(always)]
fn in_host_netns(ctx: &SockAddrContext) -> bool {
    // SAFETY: a read of a constant the loader may have rewritten; volatile
    // so the compiler does not fold the zero it was compiled with.
    let host = unsafe { core::ptr::read_volatile(&raw const HOST_NETNS_COOKIE) };
    // SAFETY: helper available to sock_addr programs; the context is ours.
    host != 0 && unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } == host
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
    let Ok(proto) = u8::try_from(proto) else {
        return PROCEED;
    };
    if family != AF_INET
        || !(proto == IPPROTO_TCP || proto == IPPROTO_UDP)
        || (udp_only && proto != IPPROTO_UDP)
        || !in_host_netns(ctx)
    {
        return PROCEED;
    }
    // The port is the socket address's, network order, in a 32-bit field.
    #[allow(clippy::cast_possible_truncation)]
    let port = port as u16;
    let Some(svc) = frontend::lookup_at(addr, port, proto) else {
        return PROCEED;
    };
    // Source ranges are checked on packets, by the per-packet path.
    if svc.flags & SERVICE_F_SOURCE_RANGES != 0 {
        return PROCEED;
    }
    let Some(svc) = view::for_client(svc, Hook::Pod) else {
        return PROCEED;
    };
    let Some(cfg) = config::get() else {
        return PROCEED;
    };
    // SAFETY: helper available to sock_addr programs; the context is ours.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let chosen: Option<Chosen> = affinity::recall(&svc, cfg.node_addr, view::selected_flag(&svc))
        .or_else(|| {
            #[allow(clippy::cast_possible_truncation)]
            let (low, high) = (cookie as u32, (cookie >> 32) as u32);
            let picked = select::by_hash(&svc, flow_hash(&cfg.hash_key, low, high, 0, 0, proto))?;
            affinity::remember(&svc, cfg.node_addr, &picked);
            Some(picked)
        });
    let Some(chosen) = chosen else {
        // No backend for the node: kube-proxy rejects (no endpoints) or
        // drops (none it may use); a refused call tells the application at once.
        counters::event(Event::SocketRefused);
        return REFUSE;
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
    // SAFETY: the kernel lets these programs rewrite the destination; each
    // store is a whole 32-bit field.
    unsafe {
        (*sa).user_ip4 = chosen.backend.addr;
        (*sa).user_port = u32::from(chosen.backend.port);
    }
    counters::event(Event::SocketTranslated);
    PROCEED
}

/// `recvmsg4` and `getpeername4`: a backend's address, as a socket pointed
/// at it sees it, becomes the Service's again.
#[inline(always)]
pub fn reverse(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel's context for this program type; plain reads.
    let (family, addr, port) = unsafe { ((*sa).user_family, (*sa).user_ip4, (*sa).user_port) };
    if family != AF_INET || !in_host_netns(ctx) {
        return PROCEED;
    }
    // SAFETY: helper available to sock_addr programs; the context is ours.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    #[allow(clippy::cast_possible_truncation)]
    let key = SockRevKey {
        cookie,
        backend_addr: addr,
        backend_port: port as u16,
        pad: 0,
    };
    // SAFETY: the LRU value is copied out at once.
    if let Some(entry) = unsafe { SOCK_REVERSE.get(key) }.copied() {
        // SAFETY: as in `forward`.
        unsafe {
            (*sa).user_ip4 = entry.svc_addr;
            (*sa).user_port = u32::from(entry.svc_port);
        }
    }
    PROCEED
}
