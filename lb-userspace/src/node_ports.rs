//! Where node ports are served: the node-port addresses. kube-proxy serves a
//! NodePort on every local address of the node by default, or on those
//! `--nodeport-addresses` picks (CIDRs matched against the local addresses,
//! or `primary`: the node's own addresses). The data path keys a node port
//! once, at address 0, and matches the destination against this set
//! (`NODE_PORT_ADDRS`), so frontends do not multiply by addresses.

use std::{collections::BTreeSet, net::Ipv4Addr};

use crate::model::SourceRange;

/// Which local addresses serve node ports (`--nodeport-addresses`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// Every local IPv4 address but loopback ones (kube-proxy's default).
    #[default]
    All,
    /// The node's own addresses (`--node-ip`, and its Node's `InternalIP`
    /// and `ExternalIP` addresses).
    Primary,
    /// The local addresses inside these CIDRs.
    Cidrs(Vec<SourceRange>),
}

impl NodePortAddresses {
    /// Parses `--nodeport-addresses`: empty for all, `primary`, or
    /// comma-separated IPv4 CIDRs (IPv6 ones are skipped: the data path is
    /// IPv4 only).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(Self::All);
        }
        if text == "primary" {
            return Ok(Self::Primary);
        }
        let mut ranges = Vec::new();
        for cidr in text.split(',').map(str::trim) {
            match SourceRange::parse(cidr) {
                Ok(Some(range)) => ranges.push(range),
                Ok(None) => {}
                Err(e) => return Err(format!("{e} (expected e.g. 10.0.0.0/8, or primary)")),
            }
        }
        if ranges.is_empty() {
            return Err(format!("{text:?} names no IPv4 CIDR"));
        }
        Ok(Self::Cidrs(ranges))
    }

    /// The node-port addresses among the node's `local` addresses, given its
    /// own (`primary`) ones, sorted and unique.
    #[must_use]
    pub fn select(&self, local: &[Ipv4Addr], primary: &[Ipv4Addr]) -> Vec<Ipv4Addr> {
        let chosen: BTreeSet<Ipv4Addr> = match self {
            Self::All => local
                .iter()
                .chain(primary)
                .copied()
                .filter(|a| !a.is_loopback() && !a.is_unspecified())
                .collect(),
            Self::Primary => primary.iter().copied().collect(),
            Self::Cidrs(ranges) => local
                .iter()
                .chain(primary)
                .copied()
                .filter(|&a| ranges.iter().any(|r| r.contains(a)))
                .collect(),
        };
        chosen.into_iter().collect()
    }
}

/// Every IPv4 address of every interface of this network namespace, with
/// the interface's name.
pub fn interface_addresses() -> std::io::Result<Vec<(String, Ipv4Addr)>> {
    let mut found = Vec::new();
    // SAFETY: getifaddrs fills a linked list that is freed below; each entry's
    // ifa_addr is checked for null and family before the cast.
    unsafe {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&raw mut list) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut entry = list;
        while !entry.is_null() {
            let addr = (*entry).ifa_addr;
            if !addr.is_null() && i32::from((*addr).sa_family) == libc::AF_INET {
                let name = std::ffi::CStr::from_ptr((*entry).ifa_name)
                    .to_string_lossy()
                    .into_owned();
                // An AF_INET entry is a sockaddr_in; read it unaligned to be safe.
                #[allow(clippy::cast_ptr_alignment)]
                let sin = addr.cast::<libc::sockaddr_in>().read_unaligned();
                found.push((name, Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
            }
            entry = (*entry).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    Ok(found)
}

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
            "primary,10.0.0.0/8",
            "fd00::/8",
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
