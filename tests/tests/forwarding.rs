//! Flows translated to the node's address are forwarded past the stack
//! (`forward.rs`, `handoff.rs`), exact bytes out of `BPF_PROG_TEST_RUN` in a
//! namespace whose routes and neighbours the programs' lookups see: XDP
//! sends a frame back out of its uplink itself (`XDP_TX`, TTL one less,
//! the neighbour's Ethernet addresses); what it cannot send (a next hop
//! behind another device, or without a neighbour entry) it hands to the
//! uplink's TC program untranslated, marked in the frame's metadata; TC
//! redirects (`bpf_redirect_neigh`). Needs root.

use std::net::Ipv4Addr;

use lb_tests::{
    fixture::{frontend, setup},
    netns::{ifindex, in_netns, Netns},
    packet::{
        forwarded, handed_over, src_of, test_flows, with_macs, Packet, TestDatapath,
        TC_ACT_REDIRECT, XDP_PASS, XDP_TX,
    },
};
use lb_userspace::{datapath::uplink::xdp_metadata_supported, desired::Protocol};

/// `TC_ACT_UNSPEC` as the test run reports it (-1): TCX's "next program".
const TC_ACT_UNSPEC: u32 = u32::MAX;

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 10);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
/// A backend on the LAN, behind the uplink, with a neighbour entry.
const NEIGHBOUR: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 12);
/// A backend on the LAN without a neighbour entry.
const UNRESOLVED: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 13);
/// A backend behind the other device (as an overlay's pods are).
const BEHIND_OVERLAY: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
const VIP_NEIGHBOUR: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 12);
const VIP_UNRESOLVED: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 13);
const VIP_OVERLAY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 14);
/// The neighbours' Ethernet addresses (permanent entries).
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
const NEIGHBOUR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x12];
/// The uplink's own Ethernet address.
const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];

/// A node: `upl` the uplink (192.168.50.0/24, its address `NODE`, permanent
/// neighbours for the client and `NEIGHBOUR`), `ovl` another device
/// (10.244.2.0/24); forwarding on.
fn node() -> Netns {
    let ns = Netns::new("fwd").expect("creating a namespace");
    let name = ns.name().to_string();
    let ip = |args: &str| {
        let mut full = vec!["ip", "-n", name.as_str()];
        full.extend(args.split(' '));
        lb_tests::netns::sh(&full).unwrap_or_else(|e| panic!("ip {args}: {e:#}"));
    };
    for (dev, peer) in [("upl", "uplp"), ("ovl", "ovlp")] {
        ip(&format!("link add {dev} type veth peer name {peer}"));
        ip(&format!("link set {peer} up"));
    }
    ip("link set dev upl address 02:00:00:00:00:11");
    ip("link set dev upl up");
    ip("link set ovl up");
    ip("addr add 192.168.50.11/24 dev upl");
    ip("route add 10.244.2.0/24 dev ovl");
    ip("neigh add 192.168.50.10 lladdr 02:00:00:00:00:10 dev upl nud permanent");
    ip("neigh add 192.168.50.12 lladdr 02:00:00:00:00:12 dev upl nud permanent");
    ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        .expect("forwarding on");
    ns
}

fn datapath() -> TestDatapath {
    setup(
        "fwd",
        NODE,
        test_flows(),
        &[
            frontend(
                VIP_NEIGHBOUR,
                80,
                Protocol::Tcp,
                &[(NEIGHBOUR, 8080, false)],
            ),
            frontend(
                VIP_UNRESOLVED,
                80,
                Protocol::Tcp,
                &[(UNRESOLVED, 8080, false)],
            ),
            frontend(
                VIP_OVERLAY,
                80,
                Protocol::Tcp,
                &[(BEHIND_OVERLAY, 8080, false)],
            ),
        ],
    )
    .0
}

/// A TCP segment with the client's and the uplink's Ethernet addresses.
fn from_client(packet: &Packet) -> Vec<u8> {
    with_macs(&packet.build(), UPLINK_MAC, CLIENT_MAC)
}

#[test]
fn a_flow_to_a_backend_behind_the_uplink_goes_back_out_with_xdp_tx_both_ways() {
    let ns = node();
    in_netns(&ns, || {
        let dp = datapath();
        let up = ifindex("upl");
        let syn = Packet::tcp(CLIENT, 40_000, VIP_NEIGHBOUR, 80).syn();
        let (ret, out) = dp.run_xdp_on(up, &from_client(&syn));
        assert_eq!(ret, XDP_TX, "sent back out of the uplink");
        let port = src_of(&out).1;
        let sent = Packet::tcp(NODE, port, NEIGHBOUR, 8080).syn().build();
        assert_eq!(
            out,
            with_macs(&forwarded(&sent), NEIGHBOUR_MAC, UPLINK_MAC),
            "SNATed, TTL one less, to the backend's neighbour entry"
        );
        let reply = Packet::tcp(NEIGHBOUR, 8080, NODE, port).synack();
        let (ret, out) = dp.run_xdp_on(up, &with_macs(&reply.build(), UPLINK_MAC, NEIGHBOUR_MAC));
        assert_eq!(ret, XDP_TX);
        let back = Packet::tcp(VIP_NEIGHBOUR, 80, CLIENT, 40_000)
            .synack()
            .build();
        assert_eq!(out, with_macs(&forwarded(&back), CLIENT_MAC, UPLINK_MAC));
    });
}

#[test]
fn what_xdp_cannot_send_it_translates_and_hands_to_the_tc_program() {
    let ns = node();
    in_netns(&ns, || {
        let dp = datapath();
        let up = ifindex("upl");
        for (vip, backend, why) in [
            (
                VIP_OVERLAY,
                BEHIND_OVERLAY,
                "next hop behind another device",
            ),
            (
                VIP_UNRESOLVED,
                UNRESOLVED,
                "next hop without a neighbour entry",
            ),
        ] {
            let syn = from_client(&Packet::tcp(CLIENT, 40_001, vip, 80).syn());
            let (ret, out) = dp.run_xdp_on(up, &syn);
            assert_eq!(ret, XDP_PASS, "{why}");
            let handed = handed_over(&out).unwrap_or_else(|| panic!("{why}: marked for TC"));
            let port = src_of(handed).1;
            let sent = Packet::tcp(NODE, port, backend, 8080).syn().build();
            assert_eq!(
                handed,
                with_macs(&sent, UPLINK_MAC, CLIENT_MAC),
                "{why}: translated (SNATed), TTL and Ethernet addresses left to TC"
            );
            let (ret, routed) = dp.run_tc_uplink_handoff_on(up, handed);
            if xdp_metadata_supported() {
                // The TC hand-off program routes only marked frames: a test
                // run carries no metadata, so it hands this one untouched to
                // the next program of the hook.
                assert_eq!(
                    (ret, routed),
                    (TC_ACT_UNSPEC, handed.to_vec()),
                    "{why}: unmarked, on to the next program"
                );
            } else {
                // Without XDP metadata, the program knows XDP's translations
                // by the node's address as source, and routes them.
                assert_eq!(ret, TC_ACT_REDIRECT, "{why}: routed past the stack");
                assert_eq!(routed, forwarded(handed), "{why}: TTL one less");
            }
        }
        if !xdp_metadata_supported() {
            // Only those: a fragment from the node's address goes to the
            // stack as XDP meant it, and so does what another host sent.
            let syn = Packet::tcp(NODE, 40_002, BEHIND_OVERLAY, 8080).syn();
            for (frame, what) in [
                (syn.clone().fragment(true, 0).build(), "a first fragment"),
                (
                    Packet::tcp(CLIENT, 40_003, BEHIND_OVERLAY, 8080)
                        .syn()
                        .build(),
                    "another host's packet",
                ),
            ] {
                let frame = with_macs(&frame, UPLINK_MAC, CLIENT_MAC);
                assert_eq!(
                    dp.run_tc_uplink_handoff_on(up, &frame),
                    (TC_ACT_UNSPEC, frame.clone()),
                    "{what}: on to the next program"
                );
            }
        }
    });
}
