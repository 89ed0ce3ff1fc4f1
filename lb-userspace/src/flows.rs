//! How the data path tracks and translates flows: the SNAT port pool, the
//! conntrack idle timeouts, the flow-hash key and the reverse-path check of
//! replies. Parsing of their flags and the checks made before the agent
//! starts are pure functions; `datapath` writes the result into `CONFIG`.

use std::{fmt, ops::RangeInclusive, path::Path, str::FromStr};

use anyhow::{bail, Context, Result};
use lb_common::{
    conntrack::{CtTimeouts, CT_TIMEOUT_COUNT, DEFAULT_TIMEOUTS, TIMEOUT_NAMES},
    HashKey, SNAT_PORT_MAX, SNAT_PORT_MIN,
};

/// Kubernetes' default NodePort range (`--service-node-port-range`).
pub const DEFAULT_NODE_PORTS: RangeInclusive<u16> = 30_000..=32_767;

/// Where Linux keeps the node's ephemeral port range.
pub const EPHEMERAL_SYSCTL: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// Flow tracking and translation settings (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowSettings {
    /// The SNAT port pool, host order, inclusive.
    pub snat_ports: PortRange,
    /// Idle timeouts in seconds, by `lb_common::conntrack` `T_*` index.
    pub timeouts: CtTimeouts,
    /// The flow-hash key; `None`: keep the one pinned by an earlier agent,
    /// or make a random one (this node alone then hashes that way).
    pub hash_key: Option<HashKey>,
    /// Reverse-translate a reply only if the route to its source leaves
    /// through the interface it arrived on.
    pub reply_path_check: bool,
}

impl Default for FlowSettings {
    fn default() -> Self {
        Self {
            snat_ports: PortRange(SNAT_PORT_MIN..=SNAT_PORT_MAX),
            timeouts: DEFAULT_TIMEOUTS,
            hash_key: None,
            reply_path_check: true,
        }
    }
}

/// An inclusive port range, written `MIN-MAX`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortRange(pub RangeInclusive<u16>);

impl PortRange {
    /// Whether the two ranges share a port.
    #[must_use]
    pub fn overlaps(&self, other: &RangeInclusive<u16>) -> bool {
        self.0.start() <= other.end() && other.start() <= self.0.end()
    }

    /// Number of ports.
    #[must_use]
    pub fn len(&self) -> u32 {
        u32::from(*self.0.end()) + 1 - u32::from(*self.0.start())
    }

    /// Whether the range holds no port (never, once parsed).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.0.start(), self.0.end())
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?} is not a port range MIN-MAX"))?;
        let parse = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|e| format!("{p:?} in {s:?} is not a port: {e}"))
        };
        let (a, b) = (parse(a)?, parse(b)?);
        if a == 0 || a > b {
            return Err(format!("{s:?}: the range must be 1 <= MIN <= MAX"));
        }
        Ok(PortRange(a..=b))
    }
}

/// Applies one `NAME=SECONDS` timeout override (names: [`TIMEOUT_NAMES`]).
pub fn set_timeout(timeouts: &mut CtTimeouts, spec: &str) -> Result<(), String> {
    let (name, secs) = spec
        .split_once('=')
        .ok_or_else(|| format!("{spec:?} is not NAME=SECONDS"))?;
    let index = TIMEOUT_NAMES
        .iter()
        .position(|n| *n == name.trim())
        .ok_or_else(|| {
            format!(
                "unknown conntrack timeout {name:?} (one of {})",
                TIMEOUT_NAMES.join(", ")
            )
        })?;
    let secs: u32 = secs
        .trim()
        .parse()
        .map_err(|e| format!("{secs:?} in {spec:?} is not a number of seconds: {e}"))?;
    if secs == 0 {
        return Err(format!("{spec:?}: a timeout is at least 1 second"));
    }
    timeouts[index] = secs;
    Ok(())
}

/// The timeouts as `name=seconds` pairs, for logs.
#[must_use]
pub fn describe_timeouts(timeouts: &CtTimeouts) -> String {
    (0..CT_TIMEOUT_COUNT)
        .map(|i| format!("{}={}", TIMEOUT_NAMES[i], timeouts[i]))
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses a hash key: 32 hexadecimal digits (128 bits).
pub fn parse_hash_key(s: &str) -> Result<HashKey, String> {
    let s = s.trim();
    if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(
            "the hash seed must be 32 hexadecimal digits (128 bits), e.g. from `openssl rand -hex 16`"
                .to_string(),
        );
    }
    let word =
        |r: std::ops::Range<usize>| u64::from_str_radix(&s[r], 16).map_err(|e| e.to_string());
    Ok([word(0..16)?, word(16..32)?])
}

/// Reads a hash key from a file (a mounted Secret): its 32 hex digits.
pub fn read_hash_key(path: &Path) -> Result<HashKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the hash seed from {}", path.display()))?;
    parse_hash_key(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// A random hash key from the kernel's random source (`getrandom`, which
/// needs no `/dev`: an image from scratch run without one still starts).
pub fn random_hash_key() -> Result<HashKey> {
    let mut bytes = [0u8; 16];
    // SAFETY: a valid buffer and its length; 16 bytes never come back
    // short from the initialised pool (at most 256 are atomic).
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if usize::try_from(got).ok() != Some(bytes.len()) {
        return Err(std::io::Error::last_os_error()).context("getrandom for a hash key");
    }
    let (a, b) = bytes.split_at(8);
    Ok([
        u64::from_le_bytes(a.try_into().expect("8 bytes")),
        u64::from_le_bytes(b.try_into().expect("8 bytes")),
    ])
}

/// Parses the kernel's `ip_local_port_range` ("32768\t60999").
pub fn parse_ephemeral_range(text: &str) -> Result<RangeInclusive<u16>, String> {
    let mut parts = text.split_whitespace().map(str::parse::<u16>);
    match (parts.next(), parts.next()) {
        (Some(Ok(a)), Some(Ok(b))) if a <= b => Ok(a..=b),
        _ => Err(format!("unexpected ip_local_port_range {text:?}")),
    }
}

/// Refuses a SNAT pool that shares ports with the node's ephemeral range
/// (its own connections to a backend could take the tuple of a translated
/// flow) or the NodePort range (a reply to a SNAT port would meet a node
/// port), naming what to change.
pub fn check_snat_pool(
    pool: &PortRange,
    ephemeral: &RangeInclusive<u16>,
    node_ports: &RangeInclusive<u16>,
) -> Result<(), String> {
    if pool.overlaps(ephemeral) {
        return Err(format!(
            "the SNAT port pool {pool} overlaps the node's ephemeral port range {}-{} \
             (sysctl net.ipv4.ip_local_port_range): choose another pool with \
             --snat-port-range, or move the ephemeral range with \
             `sysctl -w net.ipv4.ip_local_port_range=\"32768 60999\"`",
            ephemeral.start(),
            ephemeral.end()
        ));
    }
    if pool.overlaps(node_ports) {
        return Err(format!(
            "the SNAT port pool {pool} overlaps the NodePort range {}-{} (--node-port-range, \
             the API server's --service-node-port-range): choose another pool with \
             --snat-port-range",
            node_ports.start(),
            node_ports.end()
        ));
    }
    Ok(())
}

/// Reads the node's ephemeral range and checks the pool against it and the
/// NodePort range.
pub fn check_snat_pool_on_node(pool: &PortRange, node_ports: &RangeInclusive<u16>) -> Result<()> {
    let text = std::fs::read_to_string(EPHEMERAL_SYSCTL)
        .with_context(|| format!("reading {EPHEMERAL_SYSCTL}"))?;
    let ephemeral = parse_ephemeral_range(&text).map_err(anyhow::Error::msg)?;
    if let Err(why) = check_snat_pool(pool, &ephemeral, node_ports) {
        bail!("{why}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use lb_common::conntrack::{T_ESTABLISHED, T_TIME_WAIT};

    use super::*;

    #[test]
    fn the_default_pool_fits_between_the_default_ranges() {
        let pool = FlowSettings::default().snat_ports;
        assert_eq!(pool.len(), 28_976);
        assert!(
            pool.len() >= 28_000,
            "kube-proxy's per-destination capacity"
        );
        assert_eq!(
            check_snat_pool(&pool, &(32_768..=60_999), &DEFAULT_NODE_PORTS),
            Ok(())
        );
    }

    #[test]
    fn overlaps_are_refused_with_what_to_change() {
        let pool: PortRange = "40000-40100".parse().unwrap();
        let e = check_snat_pool(&pool, &(32_768..=60_999), &DEFAULT_NODE_PORTS).unwrap_err();
        assert!(
            e.contains("net.ipv4.ip_local_port_range") && e.contains("--snat-port-range"),
            "{e}"
        );
        let pool: PortRange = "29000-30000".parse().unwrap();
        let e = check_snat_pool(&pool, &(32_768..=60_999), &DEFAULT_NODE_PORTS).unwrap_err();
        assert!(
            e.contains("NodePort") && e.contains("--node-port-range"),
            "{e}"
        );
        // A node whose ephemeral range was widened down to 1024 leaves no room.
        let e = check_snat_pool(
            &FlowSettings::default().snat_ports,
            &(1_024..=65_535),
            &DEFAULT_NODE_PORTS,
        )
        .unwrap_err();
        assert!(e.contains("ephemeral"), "{e}");
    }

    #[test]
    fn port_ranges_parse_strictly() {
        assert_eq!("1024-29999".parse::<PortRange>().unwrap().len(), 28_976);
        assert_eq!("5-5".parse::<PortRange>().unwrap().len(), 1);
        for bad in ["", "100", "0-10", "20-10", "1-70000", "a-b"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
        assert_eq!(parse_ephemeral_range("32768\t60999\n"), Ok(32_768..=60_999));
        assert!(parse_ephemeral_range("x").is_err());
    }

    #[test]
    fn timeouts_are_set_by_name() {
        let mut t = DEFAULT_TIMEOUTS;
        set_timeout(&mut t, "tcp-time-wait=5").unwrap();
        set_timeout(&mut t, " tcp-established = 7 ").unwrap();
        assert_eq!((t[T_TIME_WAIT], t[T_ESTABLISHED]), (5, 7));
        assert!(set_timeout(&mut t, "tcp-nope=5")
            .unwrap_err()
            .contains("udp-stream"));
        assert!(set_timeout(&mut t, "udp=0").is_err());
        assert!(set_timeout(&mut t, "udp").is_err());
        assert!(describe_timeouts(&t).contains("tcp-time-wait=5"));
    }

    #[test]
    fn hash_keys_are_32_hex_digits() {
        assert_eq!(
            parse_hash_key("000102030405060708090a0b0c0d0e0f\n"),
            Ok([0x0001_0203_0405_0607, 0x0809_0a0b_0c0d_0e0f])
        );
        assert!(parse_hash_key("0011").is_err());
        assert!(parse_hash_key("zz0102030405060708090a0b0c0d0e0f").is_err());
        let a = random_hash_key().unwrap();
        let b = random_hash_key().unwrap();
        assert_ne!(a, b);
    }
}
