//! Socket-level balancing of IPv6 sockets, the twin of [`sock`]: `connect6`
//! decides once per connected socket (TCP, connected UDP), `sendmsg6` per
//! send of an unconnected UDP socket, over `SERVICES6`, `BACKENDS6` and the
//! shared Maglev slab; `recvmsg6` and `getpeername6` show the Service
//! address back, from `SOCK_REVERSE6`. Which sockets, which Services and
//! what is skipped are IPv4's rules ([`sock`]'s doc): the agent's scope,
//! frontends without source ranges, the pods' view of a frontend, the
//! namespace's affinity, a refused call when no backend is left. The
//! backend is picked by the IPv6 flow hash of the socket's cookie (its two
//! halves as the first words of the source and destination addresses, as
//! IPv4 takes them as the addresses).
//!
//! A dual-stack socket aimed at a v4-mapped address (`::ffff:a.b.c.d`)
//! reaches IPv4's Service there: it is decided by IPv4's rules
//! ([`sock::to_backend`], with its `SOCK_REVERSE` entry and IPv4 counters),
//! and only the mapped word changes, so the address stays v4-mapped. The
//! kernel hands such a socket's unconnected sends to `sendmsg4` itself
//! (as an IPv4 address), and its replies and peer name to these programs
//! (v4-mapped), which read them back from `SOCK_REVERSE`.

use aya_ebpf::{helpers::bpf_get_socket_cookie, programs::SockAddrContext, EbpfContext};
use lb_common::{
    flow_hash6,
    maps6::{SockRevEntry6, SockRevKey6},
    Event, Family, SERVICE_F_SOURCE_RANGES,
};

use crate::{
    affinity, config, counters, frontend6,
    lb::Hook,
    maps6::SOCK_REVERSE6,
    select6::{self, Chosen6},
    sock::{self, Aim, BPF_ANY, PROCEED, REFUSE},
    view,
};

/// `AF_INET6`.
const AF_INET6: u32 = 10;
/// The first three words of a v4-mapped address (`::ffff:0:0/96`), as a
/// map stores an address (`lb_common::maps6::ipv6_words`).
const V4_MAPPED: [u32; 3] = [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff])];

/// Whether `addr` is v4-mapped: its last word is then an IPv4 address.
#[inline(always)]
fn is_v4_mapped(addr: &[u32; 4]) -> bool {
    addr[0] == V4_MAPPED[0] && addr[1] == V4_MAPPED[1] && addr[2] == V4_MAPPED[2]
}

/// The destination of the call of `ctx`: (family, address, port).
#[inline(always)]
fn destination(ctx: &SockAddrContext) -> (u32, [u32; 4], u16) {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel's context for this program type; plain 32-bit
    // reads of each field.
    let (family, addr, port) = unsafe {
        (
            (*sa).user_family,
            [
                (*sa).user_ip6[0],
                (*sa).user_ip6[1],
                (*sa).user_ip6[2],
                (*sa).user_ip6[3],
            ],
            (*sa).user_port,
        )
    };
    // The port is the socket address's, network order, in a 32-bit field.
    #[allow(clippy::cast_possible_truncation)]
    (family, addr, port as u16)
}

/// Points the call of `ctx` at `addr`:`port` (network order).
#[inline(always)]
fn set_destination(ctx: &SockAddrContext, addr: &[u32; 4], port: u16) {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel lets these programs rewrite the destination; each
    // store is a whole 32-bit field.
    unsafe {
        (*sa).user_ip6[0] = addr[0];
        (*sa).user_ip6[1] = addr[1];
        (*sa).user_ip6[2] = addr[2];
        (*sa).user_ip6[3] = addr[3];
        (*sa).user_port = u32::from(port);
    }
}

/// Points the v4-mapped call of `ctx` at the IPv4 `addr`:`port`: only the
/// mapped word and the port change.
#[inline(always)]
fn set_mapped_destination(ctx: &SockAddrContext, addr: u32, port: u16) {
    let sa = ctx.sock_addr;
    // SAFETY: as in `set_destination`.
    unsafe {
        (*sa).user_ip6[3] = addr;
        (*sa).user_port = u32::from(port);
    }
}

/// `connect6` (`udp_only` false) and `sendmsg6` (true): points an IPv6
/// socket aimed at a Service at a backend, or refuses the call when the
/// Service has no backend for it.
#[inline(always)]
pub fn forward(ctx: &SockAddrContext, udp_only: bool) -> i32 {
    // SAFETY: the kernel's context for this program type; a plain read.
    let proto = unsafe { (*ctx.sock_addr).protocol };
    let Some(proto) = sock::balanced_proto(proto, udp_only) else {
        return PROCEED;
    };
    let (family, addr, port) = destination(ctx);
    if family != AF_INET6 {
        return PROCEED;
    }
    let Some(netns) = sock::netns_in_scope(ctx) else {
        return PROCEED;
    };
    if is_v4_mapped(&addr) {
        return match sock::to_backend(ctx, netns, addr[3], port, proto) {
            Aim::Untouched => PROCEED,
            Aim::Refused => REFUSE,
            Aim::Backend(addr, port) => {
                set_mapped_destination(ctx, addr, port);
                PROCEED
            }
        };
    }
    match to_backend(ctx, netns, &addr, port, proto) {
        Aim::Untouched => PROCEED,
        Aim::Refused => REFUSE,
        Aim::Backend(addr, port) => {
            set_destination(ctx, &addr, port);
            PROCEED
        }
    }
}

/// [`sock::to_backend`] for an IPv6 address: the backend of the IPv6
/// Service at `addr`:`port`, remembered in `SOCK_REVERSE6`.
#[inline(always)]
fn to_backend(
    ctx: &SockAddrContext,
    netns: u64,
    addr: &[u32; 4],
    port: u16,
    proto: u8,
) -> Aim<[u32; 4]> {
    let Some(svc) = frontend6::lookup_at(addr, port, proto) else {
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
    let chosen: Option<Chosen6> = affinity::recall_netns6(&svc, netns, view::selected_flag(&svc))
        .or_else(|| {
            #[allow(clippy::cast_possible_truncation)]
            let (low, high) = ([cookie as u32, 0, 0, 0], [(cookie >> 32) as u32, 0, 0, 0]);
            let hash = flow_hash6(&cfg.hash_key, &low, &high, 0, 0, proto);
            let picked = select6::by_hash(&svc, hash)?;
            affinity::remember_netns_id(&svc, netns, picked.id);
            Some(picked)
        });
    let Some(chosen) = chosen else {
        // As IPv4's: a refused call tells the application at once.
        counters::event_in(Family::Ipv6, Event::SocketRefused);
        return Aim::Refused;
    };
    let key = SockRevKey6 {
        cookie,
        backend_addr: chosen.backend.addr,
        backend_port: chosen.backend.port,
        pad: [0, 0, 0],
    };
    let entry = SockRevEntry6 {
        svc_addr: *addr,
        svc_port: port,
        pad: 0,
    };
    // An LRU map: an insert cannot fail for want of room.
    let _ = SOCK_REVERSE6.insert(key, entry, BPF_ANY);
    counters::event_in(Family::Ipv6, Event::SocketTranslated);
    Aim::Backend(chosen.backend.addr, chosen.backend.port)
}

/// `recvmsg6` and `getpeername6`: a backend's address, as an IPv6 socket
/// pointed at it sees it, becomes the Service's again (a v4-mapped one
/// from IPv4's entry).
#[inline(always)]
pub fn reverse(ctx: &SockAddrContext) -> i32 {
    let (family, addr, port) = destination(ctx);
    if family != AF_INET6 || !sock::in_scope(ctx) {
        return PROCEED;
    }
    if is_v4_mapped(&addr) {
        if let Some(entry) = sock::service_of(ctx, addr[3], port) {
            set_mapped_destination(ctx, entry.svc_addr, entry.svc_port);
        }
        return PROCEED;
    }
    // SAFETY: helper available to sock_addr programs; the context is ours.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockRevKey6 {
        cookie,
        backend_addr: addr,
        backend_port: port,
        pad: [0, 0, 0],
    };
    // SAFETY: the LRU value is copied out at once.
    if let Some(entry) = unsafe { SOCK_REVERSE6.get(key) }.copied() {
        set_destination(ctx, &entry.svc_addr, entry.svc_port);
    }
    PROCEED
}
