//! Maglev over IPv6 backends: the rules the IPv4 tests check hold alike.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use super::{tests::reference_table, *};

/// Backend `[fd00:10:244::<i>]:8080`.
fn backend6(i: u128) -> SocketAddrV6 {
    let ip = Ipv6Addr::from(0xfd00_0010_0244_0000_0000_0000_0000_0000 + i);
    SocketAddrV6::new(ip, 8080, 0, 0)
}

/// The first `n` of [`backend6`].
fn backends6(n: usize) -> Vec<SocketAddrV6> {
    (0..n)
        .map(|i| backend6(u128::try_from(i).unwrap()))
        .collect()
}

/// `member`'s name as text.
fn name_of(member: &impl Member) -> String {
    let mut out = [0u8; 64];
    let len = member.name(&mut out);
    String::from_utf8(out[..len].to_vec()).unwrap()
}

/// Backends at the edges of the name format: the longest IPv6 name (47
/// bytes), a short one, and an IPv4-mapped one.
fn odd6() -> [SocketAddrV6; 3] {
    [
        SocketAddrV6::new(Ipv6Addr::from(u128::MAX), 65_535, 0, 0),
        SocketAddrV6::new(Ipv6Addr::LOCALHOST, 1, 0, 0),
        SocketAddrV6::new(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped(), 80, 0, 0),
    ]
}

#[test]
fn names_are_the_addresses_text_without_scope() {
    let v4 = SocketAddrV4::new(Ipv4Addr::BROADCAST, 65_535);
    assert_eq!(name_of(&v4), "255.255.255.255:65535");
    let [longest, short, mapped] = odd6();
    assert_eq!(
        name_of(&longest),
        "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
    );
    assert_eq!(name_of(&short), "[::1]:1");
    assert_eq!(name_of(&mapped), "[::ffff:10.0.0.1]:80");
    assert_eq!(name_of(&backends6(3)[2]), "[fd00:10:244::2]:8080");
    // A scope id or flow label does not rename a backend, nor move its slots.
    let link = |scope_id| SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 7, scope_id);
    assert_eq!(name_of(&link(3)), "[fe80::1]:53");
    assert_eq!(
        build_table(&[link(3), short], 251),
        build_table(&[link(0), short], 251)
    );
}

#[test]
fn ipv6_table_is_the_papers_permutation_walk() {
    for (n, size) in [
        (1, 251),
        (3, 251),
        (10, 1_021),
        (37, 4_093),
        (1_000, 131_071),
    ] {
        let b = backends6(n);
        assert_eq!(
            build_table(&b, size),
            reference_table(&b, size),
            "{n} backends"
        );
    }
    assert_eq!(build_table(&odd6(), 509), reference_table(&odd6(), 509));
}

#[test]
fn ipv6_tables_ignore_order_and_share_evenly() {
    for n in [1u32, 2, 3, 10, 100, 1_000] {
        let count = usize::try_from(n).unwrap();
        let b = backends6(count);
        let size = table_size_for(count, 0);
        let table = build_table(&b, size);
        let mut permuted = b.clone();
        permuted.reverse();
        permuted.rotate_left(count / 3);
        let members = |b: &[SocketAddrV6], table: Vec<u32>| -> Vec<SocketAddrV6> {
            table.into_iter().map(|i| b[i as usize]).collect()
        };
        assert_eq!(
            members(&permuted, build_table(&permuted, size)),
            members(&b, table.clone()),
            "{n} backends, permuted"
        );
        // Backends take one slot each per round until the table is full,
        // so their counts differ by at most one: each is within n / size
        // (at most 1 %, as the size gives 100 slots each) of an equal share.
        let deviation = max_share_deviation(&table, count);
        assert!(
            deviation < f64::from(n) / f64::from(size) && deviation <= 0.02,
            "{n} backends: deviation {deviation}"
        );
    }
}

#[test]
fn removing_or_adding_one_ipv6_backend_moves_few_other_flows() {
    let joining = SocketAddrV6::new("fd00:10:245::1".parse().unwrap(), 8080, 0, 0);
    for n in [10, 100] {
        let b = backends6(n);
        let removed = disruption(&b, b[n / 2], false);
        let added = disruption(&b, joining, true);
        assert!(removed < 0.05, "remove from {n}: {removed}");
        assert!(added < 0.05, "add to {n}: {added}");
    }
}

#[test]
fn ipv6_tables_built_on_threads_are_the_tables_built_one_by_one() {
    let jobs: Vec<(Vec<SocketAddrV6>, u32)> = (0..300u128)
        .map(|i| {
            let backends: Vec<SocketAddrV6> =
                (0..=(i % 12)).map(|b| backend6(i * 16 + b)).collect();
            let size = table_size_for(backends.len(), 0);
            (backends, size)
        })
        .collect();
    let one_by_one: Vec<Vec<u32>> = jobs.iter().map(|(b, s)| build_table(b, *s)).collect();
    assert!(jobs.iter().map(|(_, s)| u64::from(*s)).sum::<u64>() >= PARALLEL_SLOTS);
    for threads in [1, 2, 3, 8] {
        assert_eq!(
            build_tables(&jobs, threads),
            one_by_one,
            "{threads} threads"
        );
    }
    assert!(build_tables::<SocketAddrV6>(&[], 4).is_empty());
}
