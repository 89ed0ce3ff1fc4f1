//! Where node ports are served: the node-port addresses. kube-proxy serves a
//! NodePort on every local address of the node by default, or on those
//! `--nodeport-addresses` picks (CIDRs matched against the local addresses,
//! or `primary`: the node's own addresses). The data path keys a node port
//! once, at address 0, and matches the destination against this set
//! (`NODE_PORT_ADDRS`, and `NODEPORT_ADDRS6` for IPv6), so frontends do not
//! multiply by addresses.
//!
//! Each family is picked apart, as kube-proxy's proxier of each family
//! does: a family's CIDRs pick among its addresses, and a family with no
//! CIDR of its own listed takes all its addresses (kube-proxy adds
//! `0.0.0.0/0` or `::/0` for it), so `--nodeport-addresses=fd00::/8` keeps
//! every IPv4 address. IPv6 link-local addresses never serve by default:
//! every node may hold the same one, and the data path leaves link-local
//! traffic to the stack.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr},
};

use crate::model::{SourceRange, SourceRangeV6};

/// One CIDR of `--nodeport-addresses`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cidr {
    /// An IPv4 CIDR.
    V4(SourceRange),
    /// An IPv6 CIDR.
    V6(SourceRangeV6),
}

impl Cidr {
    /// Parses one CIDR of either family, host bits cleared.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(range) = SourceRange::parse(text)? {
            return Ok(Self::V4(range));
        }
        // `SourceRange::parse` has checked it is an IPv6 CIDR.
        let (addr, len) = text.trim().split_once('/').unwrap_or_default();
        match (addr.parse(), len.parse()) {
            (Ok(addr), Ok(len)) => Ok(Self::V6(SourceRangeV6::new(addr, len))),
            _ => Err(format!("{:?} is not a valid CIDR", text.trim())),
        }
    }
}

/// Which local addresses serve node ports (`--nodeport-addresses`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// Every local address but loopback (and IPv6 link-local) ones
    /// (kube-proxy's default).
    #[default]
    All,
    /// The node's own addresses (`--node-ip`, and its Node's `InternalIP`
    /// and `ExternalIP` addresses).
    Primary,
    /// The local addresses inside these CIDRs, per family: a family with
    /// none listed takes all its addresses, as with [`NodePortAddresses::All`].
    Cidrs(Vec<Cidr>),
}

impl NodePortAddresses {
    /// Parses `--nodeport-addresses`: empty for all, `primary`, or
    /// comma-separated CIDRs of either family.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(Self::All);
        }
        if text == "primary" {
            return Ok(Self::Primary);
        }
        let mut cidrs = Vec::new();
        for cidr in text.split(',').map(str::trim) {
            let cidr = Cidr::parse(cidr)
                .map_err(|e| format!("{e} (expected e.g. 10.0.0.0/8, fd00::/8, or primary)"))?;
            if !cidrs.contains(&cidr) {
                cidrs.push(cidr);
            }
        }
        Ok(Self::Cidrs(cidrs))
    }

    /// The IPv4 node-port addresses among the node's `local` addresses,
    /// given its own (`primary`) ones, sorted and unique.
    #[must_use]
    pub fn select(&self, local: &[Ipv4Addr], primary: &[Ipv4Addr]) -> Vec<Ipv4Addr> {
        let all = |a: Ipv4Addr| !a.is_loopback() && !a.is_unspecified();
        match self {
            Self::All => chosen(local, primary, all),
            Self::Primary => chosen(&[], primary, |_| true),
            Self::Cidrs(cidrs) => {
                let ranges: Vec<SourceRange> = cidrs
                    .iter()
                    .filter_map(|c| match c {
                        Cidr::V4(range) => Some(*range),
                        Cidr::V6(_) => None,
                    })
                    .collect();
                if ranges.is_empty() {
                    chosen(local, primary, all)
                } else {
                    chosen(local, primary, |a| ranges.iter().any(|r| r.contains(a)))
                }
            }
        }
    }

    /// The IPv6 node-port addresses among the node's `local` IPv6
    /// addresses, given its own (`primary`) ones, sorted and unique.
    #[must_use]
    pub fn select6(&self, local: &[Ipv6Addr], primary: &[Ipv6Addr]) -> Vec<Ipv6Addr> {
        let all =
            |a: Ipv6Addr| !a.is_loopback() && !a.is_unspecified() && !a.is_unicast_link_local();
        match self {
            Self::All => chosen(local, primary, all),
            Self::Primary => chosen(&[], primary, |_| true),
            Self::Cidrs(cidrs) => {
                let ranges: Vec<SourceRangeV6> = cidrs
                    .iter()
                    .filter_map(|c| match c {
                        Cidr::V6(range) => Some(*range),
                        Cidr::V4(_) => None,
                    })
                    .collect();
                if ranges.is_empty() {
                    chosen(local, primary, all)
                } else {
                    chosen(local, primary, |a| ranges.iter().any(|r| r.contains(a)))
                }
            }
        }
    }
}

/// The `local` and `primary` addresses that `keep` keeps, sorted and unique.
fn chosen<A: Copy + Ord>(local: &[A], primary: &[A], keep: impl Fn(A) -> bool) -> Vec<A> {
    let chosen: BTreeSet<A> = local
        .iter()
        .chain(primary)
        .copied()
        .filter(|&a| keep(a))
        .collect();
    chosen.into_iter().collect()
}

/// Every IPv4 address of every interface of this network namespace, with
/// the interface's name.
pub fn interface_addresses() -> std::io::Result<Vec<(String, Ipv4Addr)>> {
    scan(libc::AF_INET, |addr| {
        // SAFETY: `scan` hands over AF_INET entries only, which are
        // sockaddr_in; read unaligned to be safe.
        #[allow(clippy::cast_ptr_alignment)]
        let sin = unsafe { addr.cast::<libc::sockaddr_in>().read_unaligned() };
        Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))
    })
}

/// Every IPv6 address of every interface of this network namespace, with
/// the interface's name.
pub fn interface_addresses6() -> std::io::Result<Vec<(String, Ipv6Addr)>> {
    scan(libc::AF_INET6, |addr| {
        // SAFETY: `scan` hands over AF_INET6 entries only, which are
        // sockaddr_in6; read unaligned to be safe.
        #[allow(clippy::cast_ptr_alignment)]
        let sin6 = unsafe { addr.cast::<libc::sockaddr_in6>().read_unaligned() };
        Ipv6Addr::from(sin6.sin6_addr.s6_addr)
    })
}

/// Every address of `family` of every interface, read by `read` from its
/// non-null `sockaddr`, with the interface's name.
fn scan<T>(
    family: i32,
    read: impl Fn(*const libc::sockaddr) -> T,
) -> std::io::Result<Vec<(String, T)>> {
    let mut found = Vec::new();
    // SAFETY: getifaddrs fills a linked list that is freed below; each entry's
    // ifa_addr is checked for null and family before `read` sees it.
    unsafe {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&raw mut list) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut entry = list;
        while !entry.is_null() {
            let addr = (*entry).ifa_addr;
            if !addr.is_null() && i32::from((*addr).sa_family) == family {
                let name = std::ffi::CStr::from_ptr((*entry).ifa_name)
                    .to_string_lossy()
                    .into_owned();
                found.push((name, read(addr)));
            }
            entry = (*entry).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    Ok(found)
}

#[cfg(test)]
mod tests6;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_port_addresses_as_kube_proxy_picks_them() {
        let local = [
            Ipv4Addr::LOCALHOST,
            Ipv4Addr::new(192, 168, 50, 11),
            Ipv4Addr::new(10, 244, 1, 1),
            Ipv4Addr::new(172, 17, 0, 1),
        ];
        let primary = [Ipv4Addr::new(192, 168, 50, 11)];
        let v4 = |a: &[[u8; 4]]| a.iter().map(|&o| Ipv4Addr::from(o)).collect::<Vec<_>>();
        let cases = [
            (
                "",
                v4(&[[10, 244, 1, 1], [172, 17, 0, 1], [192, 168, 50, 11]]),
            ),
            ("primary", v4(&[[192, 168, 50, 11]])),
            ("192.168.0.0/16", v4(&[[192, 168, 50, 11]])),
            (
                "10.0.0.0/8, 172.16.0.0/12",
                v4(&[[10, 244, 1, 1], [172, 17, 0, 1]]),
            ),
            ("127.0.0.0/8,fd00::/8", v4(&[[127, 0, 0, 1]])),
            (
                "fd00::/8",
                v4(&[[10, 244, 1, 1], [172, 17, 0, 1], [192, 168, 50, 11]]),
            ),
        ];
        for (flag, want) in cases {
            let picked = NodePortAddresses::parse(flag)
                .unwrap()
                .select(&local, &primary);
            assert_eq!(picked, want, "--nodeport-addresses={flag:?}");
        }
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "fd00::/129",
            "primary,10.0.0.0/8",
            "10.0.0.0/8,",
            "x/8",
        ] {
            let err = NodePortAddresses::parse(bad).unwrap_err();
            assert!(err.contains(bad) || err.contains("CIDR"), "{bad}: {err}");
        }
    }

    #[test]
    fn this_namespace_has_a_loopback_address() {
        let found = interface_addresses().unwrap();
        assert!(found.iter().any(|(_, a)| a.is_loopback()), "{found:?}");
    }
}
