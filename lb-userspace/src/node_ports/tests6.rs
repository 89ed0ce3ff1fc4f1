//! IPv6 node-port addresses: each family picked apart, as kube-proxy's
//! per-family proxiers pick them.

use super::*;

fn v6(text: &str) -> Ipv6Addr {
    text.parse().unwrap()
}

fn list(texts: &[&str]) -> Vec<Ipv6Addr> {
    texts.iter().map(|t| v6(t)).collect()
}

#[test]
fn ipv6_node_port_addresses_as_kube_proxy_picks_them() {
    let local = list(&[
        "::1",
        "fe80::1",
        "2001:db8:50::11",
        "fd00:244:1::1",
        "fd00:50::11",
    ]);
    let primary = list(&["2001:db8:50::11", "2001:db8:60::11"]);
    let cases = [
        (
            "",
            list(&[
                "2001:db8:50::11",
                "2001:db8:60::11",
                "fd00:50::11",
                "fd00:244:1::1",
            ]),
        ),
        ("primary", list(&["2001:db8:50::11", "2001:db8:60::11"])),
        ("fd00::/8", list(&["fd00:50::11", "fd00:244:1::1"])),
        (
            "fd00:244::/32, 2001:db8:60::/48",
            list(&["2001:db8:60::11", "fd00:244:1::1"]),
        ),
        // Only IPv4 CIDRs: IPv6 takes all its addresses.
        (
            "10.0.0.0/8,192.168.0.0/16",
            list(&[
                "2001:db8:50::11",
                "2001:db8:60::11",
                "fd00:50::11",
                "fd00:244:1::1",
            ]),
        ),
        ("10.0.0.0/8,2001:db8:50::/48", list(&["2001:db8:50::11"])),
        ("fe80::/10", list(&["fe80::1"])),
        ("2001:db8:70::/48", list(&[])),
    ];
    for (flag, want) in cases {
        let rule = NodePortAddresses::parse(flag).unwrap();
        assert_eq!(
            rule.select6(&local, &primary),
            want,
            "--nodeport-addresses={flag:?}"
        );
    }
}

#[test]
fn each_family_keeps_its_own_cidrs() {
    let rule = NodePortAddresses::parse("10.0.0.0/8, fd00::/8, 10.0.0.0/8").unwrap();
    assert_eq!(
        rule,
        NodePortAddresses::Cidrs(vec![
            Cidr::V4(SourceRange {
                addr: Ipv4Addr::new(10, 0, 0, 0),
                prefix_len: 8,
            }),
            Cidr::V6(SourceRangeV6::new(v6("fd00::"), 8)),
        ]),
        "in order, each once"
    );
    assert_eq!(
        Cidr::parse("fd00:1:2::5/40").unwrap(),
        Cidr::V6(SourceRangeV6::new(v6("fd00:1::"), 40)),
        "host bits cleared"
    );
    let local4 = [Ipv4Addr::new(10, 1, 1, 1), Ipv4Addr::new(172, 17, 0, 1)];
    let local6 = list(&["fd00::1", "2001:db8::1"]);
    assert_eq!(rule.select(&local4, &[]), [Ipv4Addr::new(10, 1, 1, 1)]);
    assert_eq!(rule.select6(&local6, &[]), [v6("fd00::1")]);
    assert!(
        NodePortAddresses::Primary.select6(&local6, &[]).is_empty(),
        "primary without an IPv6 address of its own"
    );
}

#[test]
fn the_scan_finds_the_kernel_s_ipv6_addresses() {
    // /proc/net/if_inet6: the address in 32 hex digits first, the interface last.
    let Ok(table) = std::fs::read_to_string("/proc/net/if_inet6") else {
        // IPv6 is off in this kernel: nothing to find.
        assert!(interface_addresses6().unwrap().is_empty());
        return;
    };
    let mut want: Vec<(String, Ipv6Addr)> = table
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let bits = u128::from_str_radix(fields.first()?, 16).ok()?;
            Some(((*fields.last()?).to_string(), Ipv6Addr::from(bits)))
        })
        .collect();
    let mut found = interface_addresses6().unwrap();
    want.sort();
    found.sort();
    assert_eq!(found, want);
}
