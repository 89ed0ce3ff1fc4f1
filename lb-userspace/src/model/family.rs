//! IP families of Services: `ipFamilies`, `ipFamilyPolicy` and
//! `clusterIPs`, checked by the API server's rules, and the addresses of a
//! Service split by family.
//!
//! The same rules read Services from the API server (which has already
//! applied them, so they never fail there) and from manifests, where no API
//! server assigns families:
//! - `clusterIPs` is the list; `clusterIP` alone stands for
//!   `clusterIPs: [clusterIP]`; when both are set, `clusterIPs[0]` must be
//!   `clusterIP`. At most two; two must be of different families; `None`
//!   (headless) only alone.
//! - `ipFamilies`: at most two, each `IPv4` or `IPv6`, no family twice.
//!   When set, `clusterIPs[i]` must be of family `ipFamilies[i]` (so there
//!   are no more cluster IPs than families). When absent, the families are
//!   those of `clusterIPs` in order; with no cluster IP either, IPv4 for a
//!   Service that balances (a manifest Service with only external
//!   addresses) and none for a headless one.
//! - `ipFamilyPolicy`: `SingleStack`, `PreferDualStack` or
//!   `RequireDualStack`. When absent: `RequireDualStack` when two families
//!   are given, else `SingleStack` (the API server's defaults).
//!   `SingleStack` with two families is an error; `RequireDualStack` with
//!   fewer than two is an error (on disk nothing can add the second);
//!   `PreferDualStack` with one is fine.
//! - ExternalName Services may set none of the three.
//! - Any disagreement rejects the Service with an error naming the fields;
//!   its last valid version is kept as for any other invalid input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IP family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpFamily {
    /// The family of an address.
    #[must_use]
    pub const fn of(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    /// Reads `IPv4` or `IPv6` as Kubernetes spells them.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "IPv4" => Ok(Self::V4),
            "IPv6" => Ok(Self::V6),
            other => Err(format!(
                "unknown IP family {other:?} (expected IPv4 or IPv6)"
            )),
        }
    }
}

impl std::fmt::Display for IpFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        })
    }
}

/// `spec.ipFamilyPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum IpFamilyPolicy {
    /// One family.
    #[default]
    SingleStack,
    /// Both families where the cluster has them, else one.
    PreferDualStack,
    /// Both families.
    RequireDualStack,
}

impl IpFamilyPolicy {
    /// Reads the policy as Kubernetes spells it.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "SingleStack" => Ok(Self::SingleStack),
            "PreferDualStack" => Ok(Self::PreferDualStack),
            "RequireDualStack" => Ok(Self::RequireDualStack),
            other => Err(format!(
                "unknown ipFamilyPolicy {other:?} (expected SingleStack, PreferDualStack or RequireDualStack)"
            )),
        }
    }
}

/// A Service's families in order (primary first): none, one or two. Two
/// bytes, so an IPv4-only Service carries no list. The default is IPv4
/// alone, the family of a Service that says nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpFamilies([Option<IpFamily>; 2]);

impl Default for IpFamilies {
    fn default() -> Self {
        Self::V4
    }
}

impl IpFamilies {
    /// IPv4 alone.
    pub const V4: Self = Self([Some(IpFamily::V4), None]);
    /// No family (headless without families, ExternalName).
    pub const NONE: Self = Self([None, None]);

    /// The families in order.
    pub fn iter(&self) -> impl Iterator<Item = IpFamily> + '_ {
        self.0.iter().flatten().copied()
    }

    /// How many families (0-2).
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.iter().flatten().count()
    }

    /// Whether there is no family (headless without families, ExternalName).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0[0].is_none()
    }

    /// Whether `family` is one of them.
    #[must_use]
    pub fn contains(&self, family: IpFamily) -> bool {
        self.0.contains(&Some(family))
    }

    /// The primary family.
    #[must_use]
    pub fn primary(&self) -> Option<IpFamily> {
        self.0[0]
    }

    /// Builds the list, refusing a third family or one given twice.
    pub fn from_list(families: &[IpFamily]) -> Result<Self, String> {
        match families {
            [] => Ok(Self::NONE),
            [a] => Ok(Self([Some(*a), None])),
            [a, b] if a != b => Ok(Self([Some(*a), Some(*b)])),
            [a, _] => Err(format!("ipFamilies lists {a} twice")),
            _ => Err("ipFamilies may list at most two families".to_string()),
        }
    }
}

impl std::fmt::Display for IpFamilies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.iter().map(|x| x.to_string()).collect();
        write!(f, "[{}]", names.join(", "))
    }
}

/// An IPv6 CIDR of `loadBalancerSourceRanges`, its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRangeV6 {
    /// Network address.
    pub addr: Ipv6Addr,
    /// Prefix length, 0-128.
    pub prefix_len: u8,
}

impl SourceRangeV6 {
    /// A range from an address and prefix length (at most 128), host bits cleared.
    #[must_use]
    pub fn new(addr: Ipv6Addr, prefix_len: u8) -> Self {
        let mask = u128::MAX
            .checked_shl(128 - u32::from(prefix_len))
            .unwrap_or(0);
        Self {
            addr: Ipv6Addr::from(u128::from(addr) & mask),
            prefix_len,
        }
    }

    /// Whether `ip` falls in the range.
    #[must_use]
    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        Self::new(ip, self.prefix_len).addr == self.addr
    }
}

impl std::fmt::Display for SourceRangeV6 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// A Service's IPv6 side, boxed in [`super::ServiceSpec::v6`] only when the
/// Service has any IPv6 address (IPv4-only Services pay one pointer).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceV6 {
    /// IPv6 cluster IP (at most one: one per family).
    pub cluster_ips: Vec<Ipv6Addr>,
    /// IPv6 `spec.externalIPs`.
    pub external_ips: Vec<Ipv6Addr>,
    /// IPv6 `status.loadBalancer.ingress[].ip` (not `ipMode: Proxy`).
    pub load_balancer_ips: Vec<Ipv6Addr>,
    /// IPv6 `loadBalancerSourceRanges`, unique.
    pub source_ranges: Vec<SourceRangeV6>,
}

impl ServiceV6 {
    /// `None` when it holds nothing, so the Service keeps no box.
    #[must_use]
    pub fn boxed_if_any(self) -> Option<Box<Self>> {
        (self != Self::default()).then(|| Box::new(self))
    }
}

/// What the family fields of a Service resolve to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Families {
    /// Families in order.
    pub families: IpFamilies,
    /// Policy (defaulted as the API server does).
    pub policy: IpFamilyPolicy,
    /// IPv4 cluster IP (empty or one).
    pub v4: Vec<Ipv4Addr>,
    /// IPv6 cluster IP (empty or one).
    pub v6: Vec<Ipv6Addr>,
    /// `clusterIP(s)` is `None`.
    pub headless: bool,
}

/// Resolves `clusterIP`, `clusterIPs`, `ipFamilies` and `ipFamilyPolicy`
/// by the rules of this module; `external_name` for ExternalName Services.
pub fn resolve(
    cluster_ip: Option<&str>,
    cluster_ips: &[String],
    ip_families: &[String],
    policy: Option<&str>,
    external_name: bool,
) -> Result<Families, String> {
    if external_name {
        if !ip_families.is_empty() || policy.is_some() {
            return Err("ipFamilies and ipFamilyPolicy may not be set for ExternalName".into());
        }
        return Ok(Families {
            families: IpFamilies::NONE,
            ..Families::default()
        });
    }
    let ips: Vec<&str> = if cluster_ips.is_empty() {
        cluster_ip.into_iter().filter(|ip| !ip.is_empty()).collect()
    } else {
        if let Some(first) = cluster_ip.filter(|ip| !ip.is_empty()) {
            if first != cluster_ips[0] {
                return Err(format!(
                    "clusterIP {first:?} is not clusterIPs[0] {:?}",
                    cluster_ips[0]
                ));
            }
        }
        cluster_ips.iter().map(String::as_str).collect()
    };
    let headless = ips.contains(&"None");
    if headless && ips.len() > 1 {
        return Err("clusterIPs: \"None\" (headless) must be the only value".into());
    }
    let mut parsed: Vec<IpAddr> = Vec::new();
    if !headless {
        for ip in &ips {
            parsed.push(
                ip.parse()
                    .map_err(|_| format!("clusterIP {ip:?} is not a valid IP address"))?,
            );
        }
    }
    let ip_families_of: Vec<IpFamily> = parsed.iter().map(IpFamily::of).collect();
    match ip_families_of.as_slice() {
        [] | [_] => {}
        [a, b] if a != b => {}
        [_, _] => return Err("clusterIPs: two addresses must be of different families".into()),
        _ => return Err("clusterIPs may hold at most two addresses".into()),
    }
    let listed = ip_families
        .iter()
        .map(|f| IpFamily::parse(f).map_err(|e| format!("ipFamilies: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let families = if listed.is_empty() {
        if ip_families_of.is_empty() && !headless {
            IpFamilies::V4
        } else {
            IpFamilies::from_list(&ip_families_of)?
        }
    } else {
        let families = IpFamilies::from_list(&listed)?;
        for (i, (ip, family)) in parsed.iter().zip(&ip_families_of).enumerate() {
            match listed.get(i) {
                Some(want) if want == family => {}
                Some(want) => {
                    return Err(format!(
                        "clusterIPs[{i}] {ip} is not of family ipFamilies[{i}] {want}"
                    ))
                }
                None => {
                    return Err(format!(
                        "clusterIPs[{i}] {ip} has no family in ipFamilies {families}"
                    ))
                }
            }
        }
        families
    };
    let policy = match policy {
        Some(p) => IpFamilyPolicy::parse(p)?,
        None if families.len() == 2 => IpFamilyPolicy::RequireDualStack,
        None => IpFamilyPolicy::SingleStack,
    };
    if policy == IpFamilyPolicy::SingleStack && families.len() == 2 {
        return Err(format!(
            "ipFamilyPolicy SingleStack with two families {families} (use PreferDualStack or RequireDualStack)"
        ));
    }
    if policy == IpFamilyPolicy::RequireDualStack && families.len() < 2 {
        return Err(format!(
            "ipFamilyPolicy RequireDualStack needs two families, has {families} (list both in ipFamilies or clusterIPs)"
        ));
    }
    let mut out = Families {
        families,
        policy,
        headless,
        ..Families::default()
    };
    for ip in parsed {
        match ip {
            IpAddr::V4(v4) => out.v4.push(v4),
            IpAddr::V6(v6) => out.v6.push(v6),
        }
    }
    Ok(out)
}
