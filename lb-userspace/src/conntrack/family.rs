//! What the flow maps of each family hold, for reading and collecting
//! them with one piece of code: [`FlowFamily`], implemented by each
//! family's flow key (`FlowKey`, `FlowKey6`), names its conntrack and
//! reverse-NAT entries and what the collector reads from them. The states,
//! timeouts and claims are the same for both (`lb_common::conntrack`).

use std::{
    fmt::Debug,
    hash::Hash,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
};

use aya::Pod;
use lb_common::{
    maps6::{ipv6_octets, CtEntry6, FlowKey6, RevNatEntry6, MAP_CONNTRACK6, MAP_REVNAT6},
    BackendKey, CtEntry, Family, FlowKey, RevNatEntry, CT_F_SNAT, MAP_CONNTRACK, MAP_REVNAT,
};

/// The fields of a conntrack entry both families share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtCommon {
    /// `CtState` value.
    pub state: u8,
    /// `CT_F_*` bits.
    pub flags: u16,
    /// Monotonic seconds of the client's last packet.
    pub last_seen_s: u32,
    /// Monotonic time the flow was created.
    pub created_ns: u64,
}

/// The sockets of one tracked flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSockets {
    /// The client.
    pub client: SocketAddr,
    /// The frontend it talks to.
    pub service: SocketAddr,
    /// The backend it is pinned to.
    pub backend: SocketAddr,
    /// Where the client was translated to, if it was.
    pub snat: Option<SocketAddr>,
}

/// A family's flow key, and with it the family's flow maps.
pub trait FlowFamily: Pod + Copy + Eq + Hash + Debug + Send + Sync + 'static {
    /// The conntrack map's value.
    type Ct: Pod + Copy + PartialEq + Debug + Send + Sync;
    /// The reverse-NAT map's value.
    type Rev: Pod + Copy + PartialEq + Debug + Send + Sync;
    /// The conntrack map's name.
    const CONNTRACK: &'static str;
    /// The reverse-NAT map's name.
    const REVNAT: &'static str;
    /// The family's block of the event counters.
    const FAMILY: Family;

    /// The reply tuple of this client flow tracked as `ct`.
    #[must_use]
    fn reply_of(&self, ct: &Self::Ct) -> Self;
    /// The client flow a reverse entry restores.
    #[must_use]
    fn client_of(rev: &Self::Rev, proto: u8) -> Self;
    /// A reverse entry restoring this client flow.
    fn restoring(&self, now_s: u32, claim: u64) -> Self::Rev;
    /// Whether `rev` restores this client flow.
    fn restored_by(&self, rev: &Self::Rev) -> bool;
    /// The IP protocol.
    fn proto(&self) -> u8;
    /// An order of keys (source, destination, ports) for stable output.
    fn order(&self) -> ([u32; 4], [u32; 4], u16, u16);
    /// A claim tag for a restored entry (distinct per flow).
    fn restore_claim(&self) -> u64;
    /// The shared fields of a conntrack entry.
    fn common(ct: &Self::Ct) -> CtCommon;
    /// A reverse entry's (`created_s`, `last_seen_s`).
    fn rev_times(rev: &Self::Rev) -> (u32, u32);
    /// The sockets of this flow tracked as `ct`.
    fn sockets(&self, ct: &Self::Ct) -> FlowSockets;
    /// The backend a translated flow holds a SNAT port toward (IPv4's
    /// pool is counted per backend; IPv6 translates no source yet).
    fn snat_backend(&self, ct: &Self::Ct) -> Option<BackendKey>;
}

fn v4(addr: u32, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::from(addr.to_ne_bytes()),
        u16::from_be(port),
    ))
}

fn v6(addr: [u32; 4], port: u16) -> SocketAddr {
    SocketAddr::V6(SocketAddrV6::new(
        Ipv6Addr::from(ipv6_octets(addr)),
        u16::from_be(port),
        0,
        0,
    ))
}

impl FlowFamily for FlowKey {
    type Ct = CtEntry;
    type Rev = RevNatEntry;
    const CONNTRACK: &'static str = MAP_CONNTRACK;
    const REVNAT: &'static str = MAP_REVNAT;
    const FAMILY: Family = Family::Ipv4;

    fn reply_of(&self, ct: &CtEntry) -> Self {
        FlowKey::reply_of(self, ct)
    }
    fn client_of(rev: &RevNatEntry, proto: u8) -> Self {
        FlowKey::client_of(rev, proto)
    }
    fn restoring(&self, now_s: u32, claim: u64) -> RevNatEntry {
        RevNatEntry::restoring(self, now_s, claim)
    }
    fn restored_by(&self, rev: &RevNatEntry) -> bool {
        rev.restores(self)
    }
    fn proto(&self) -> u8 {
        self.proto
    }
    fn order(&self) -> ([u32; 4], [u32; 4], u16, u16) {
        (
            [self.src_addr, 0, 0, 0],
            [self.dst_addr, 0, 0, 0],
            self.src_port,
            self.dst_port,
        )
    }
    fn restore_claim(&self) -> u64 {
        (u64::from(self.src_addr) << 32)
            ^ (u64::from(self.src_port) << 16)
            ^ u64::from(self.dst_port)
            ^ (1 << 63)
    }
    fn common(ct: &CtEntry) -> CtCommon {
        CtCommon {
            state: ct.state,
            flags: ct.flags,
            last_seen_s: ct.last_seen_s,
            created_ns: ct.created_ns,
        }
    }
    fn rev_times(rev: &RevNatEntry) -> (u32, u32) {
        (rev.created_s, rev.last_seen_s)
    }
    fn sockets(&self, ct: &CtEntry) -> FlowSockets {
        FlowSockets {
            client: v4(self.src_addr, self.src_port),
            service: v4(self.dst_addr, self.dst_port),
            backend: v4(ct.backend_addr, ct.backend_port),
            snat: (ct.flags & CT_F_SNAT != 0).then(|| v4(ct.snat_addr, ct.snat_port)),
        }
    }
    fn snat_backend(&self, ct: &CtEntry) -> Option<BackendKey> {
        (ct.flags & CT_F_SNAT != 0).then_some(BackendKey {
            addr: ct.backend_addr,
            port: ct.backend_port,
            proto: self.proto,
            pad: 0,
        })
    }
}

impl FlowFamily for FlowKey6 {
    type Ct = CtEntry6;
    type Rev = RevNatEntry6;
    const CONNTRACK: &'static str = MAP_CONNTRACK6;
    const REVNAT: &'static str = MAP_REVNAT6;
    const FAMILY: Family = Family::Ipv6;

    fn reply_of(&self, ct: &CtEntry6) -> Self {
        FlowKey6::reply_of(self, ct)
    }
    fn client_of(rev: &RevNatEntry6, proto: u8) -> Self {
        FlowKey6::client_of(rev, proto)
    }
    fn restoring(&self, now_s: u32, claim: u64) -> RevNatEntry6 {
        RevNatEntry6::restoring(self, now_s, claim)
    }
    fn restored_by(&self, rev: &RevNatEntry6) -> bool {
        rev.restores(self)
    }
    fn proto(&self) -> u8 {
        self.proto
    }
    fn order(&self) -> ([u32; 4], [u32; 4], u16, u16) {
        (self.src_addr, self.dst_addr, self.src_port, self.dst_port)
    }
    fn restore_claim(&self) -> u64 {
        let fold = self.src_addr.iter().fold(0u32, |a, w| a ^ w);
        (u64::from(fold) << 32)
            ^ (u64::from(self.src_port) << 16)
            ^ u64::from(self.dst_port)
            ^ (1 << 63)
    }
    fn common(ct: &CtEntry6) -> CtCommon {
        CtCommon {
            state: ct.state,
            flags: ct.flags,
            last_seen_s: ct.last_seen_s,
            created_ns: ct.created_ns,
        }
    }
    fn rev_times(rev: &RevNatEntry6) -> (u32, u32) {
        (rev.created_s, rev.last_seen_s)
    }
    fn sockets(&self, ct: &CtEntry6) -> FlowSockets {
        FlowSockets {
            client: v6(self.src_addr, self.src_port),
            service: v6(self.dst_addr, self.dst_port),
            backend: v6(ct.backend_addr, ct.backend_port),
            snat: (ct.flags & CT_F_SNAT != 0).then(|| v6(ct.snat_addr, ct.snat_port)),
        }
    }
    fn snat_backend(&self, _: &CtEntry6) -> Option<BackendKey> {
        None
    }
}
