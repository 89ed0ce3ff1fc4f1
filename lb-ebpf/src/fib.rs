//! Route lookups in the kernel's forwarding table (`bpf_fib_lookup`), shared
//! by the reverse-path checks (`spoof.rs`, `spoof6.rs`) and the forwarding
//! past the stack (`forward.rs`, `forward6.rs`).

use core::mem::MaybeUninit;

use aya_ebpf::{bindings::bpf_fib_lookup, helpers::bpf_fib_lookup as fib_lookup, EbpfContext};

use crate::mem::zero;

/// `AF_INET`.
const AF_INET: u8 = 2;
/// `AF_INET6`.
const AF_INET6: u8 = 10;

/// What to look up: the route a packet `src` -> `dst` (protocol and ports,
/// raw network-order words) arriving on `ifindex` would take.
pub struct Query {
    /// The interface the packet arrives on (also gives the namespace).
    pub ifindex: u32,
    /// Source address.
    pub src: u32,
    /// Destination address.
    pub dst: u32,
    /// IP protocol.
    pub proto: u8,
    /// Source port (0 where none).
    pub sport: u16,
    /// Destination port (0 where none).
    pub dport: u16,
    /// The packet's IP length, checked against the route's MTU (0: unchecked).
    pub tot_len: u16,
}

/// Looks `query` up with the `BPF_FIB_LOOKUP_*` `flags`: the helper's
/// return code (`BPF_FIB_LKUP_RET_*`) and its filled parameters (egress
/// interface, and the neighbour's and the interface's Ethernet addresses
/// unless the neighbour was skipped or is unresolved).
#[inline(always)]
pub fn lookup<C: EbpfContext>(ctx: &C, query: &Query, flags: u32) -> (i64, bpf_fib_lookup) {
    let mut slot = MaybeUninit::<bpf_fib_lookup>::uninit();
    // SAFETY: a plain C struct of integers and unions of integers: all zeros is valid.
    let params = unsafe { zero(&mut slot) };
    params.family = AF_INET;
    params.l4_protocol = query.proto;
    params.ifindex = query.ifindex;
    params.sport = query.sport;
    params.dport = query.dport;
    params.__bindgen_anon_1.tot_len = query.tot_len;
    params.__bindgen_anon_3.ipv4_src = query.src;
    params.__bindgen_anon_4.ipv4_dst = query.dst;
    let ret = run(ctx, params, flags);
    (ret, *params)
}

/// [`Query`] for IPv6: addresses as `maps6::ipv6_words` stores them.
pub struct Query6 {
    /// The interface the packet arrives on (also gives the namespace).
    pub ifindex: u32,
    /// Source address.
    pub src: [u32; 4],
    /// Destination address.
    pub dst: [u32; 4],
    /// Upper-layer protocol.
    pub proto: u8,
    /// Source port (0 where none).
    pub sport: u16,
    /// Destination port (0 where none).
    pub dport: u16,
    /// The packet's IPv6 length, fixed header included, checked against
    /// the route's MTU (0: unchecked).
    pub tot_len: u16,
}

/// [`lookup`] of an IPv6 route.
#[inline(always)]
pub fn lookup6<C: EbpfContext>(ctx: &C, query: &Query6, flags: u32) -> (i64, bpf_fib_lookup) {
    let mut slot = MaybeUninit::<bpf_fib_lookup>::uninit();
    // SAFETY: a plain C struct of integers and unions of integers: all zeros is valid.
    let params = unsafe { zero(&mut slot) };
    params.family = AF_INET6;
    params.l4_protocol = query.proto;
    params.ifindex = query.ifindex;
    params.sport = query.sport;
    params.dport = query.dport;
    params.__bindgen_anon_1.tot_len = query.tot_len;
    params.__bindgen_anon_3.ipv6_src = query.src;
    params.__bindgen_anon_4.ipv6_dst = query.dst;
    let ret = run(ctx, params, flags);
    (ret, *params)
}

/// The `bpf_fib_lookup` helper on `params`, with `flags`: its return code.
#[inline(always)]
fn run<C: EbpfContext>(ctx: &C, params: &mut bpf_fib_lookup, flags: u32) -> i64 {
    // SAFETY: the helper reads and writes `params` within its size; ctx is
    // the program's context.
    unsafe {
        fib_lookup(
            ctx.as_ptr(),
            params,
            // The struct is 64 bytes.
            #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
            {
                size_of::<bpf_fib_lookup>() as i32
            },
            flags,
        )
    }
}
