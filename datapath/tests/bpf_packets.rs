//! BPF_PROG_TEST_RUN tests of malformed and unsupported packets, source validation and the ARP
//! responder. Nothing here may read out of bounds: the verifier guarantees that, these tests
//! check the verdict and the drop reason upstream uses.

mod support;

use std::net::{Ipv4Addr, SocketAddrV4};

use datapath::maps::metrics::MetricDirection;
use datapath::maps::policy::{L4Match, PolicyPeer, TrafficDirection::*};
use support::packet::{self, Ipv4Spec, SYN, TCP, UDP};
use support::{Fixture, NODE_MAC, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, policy};

const POD: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 20);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);

fn fixture(allow: L4Match) -> Fixture {
    let mut fx = Fixture::new();
    let mut map = fx.add_endpoint(POD, 9, 1000);
    policy(&mut map, PolicyPeer::Any, Egress, allow, false);
    policy(&mut map, PolicyPeer::Any, Ingress, allow, false);
    fx
}

/// Verdict of `from_container` and the drop reason it reported, if any.
fn egress(fx: &mut Fixture, frame: &[u8]) -> (u32, Option<u8>) {
    let verdict = fx.run_from_container(frame).verdict;
    let drop = fx
        .events()
        .into_iter()
        .find(|e| e.r#type == 1)
        .map(|e| e.subtype);
    (verdict, drop)
}

fn tcp_l4(dport: u16) -> Vec<u8> {
    packet::tcp_segment(
        SocketAddrV4::new(POD, 40000),
        SocketAddrV4::new(PEER, dport),
        SYN,
    )
}

#[test]
fn privileged_truncated_headers_are_invalid() {
    let mut fx = fixture(L4Match::Any);
    let full = packet::tcp(
        SocketAddrV4::new(POD, 40000),
        SocketAddrV4::new(PEER, 80),
        SYN,
    );
    // The kernel's test runner refuses IPv4 frames shorter than a minimal IPv4 header, so the
    // truncated-L3 cases are headers whose length field points past the end of the packet.
    // Full IPv4 header, half a TCP header: DROP_CT_INVALID_HDR.
    assert_eq!(
        egress(&mut fx, &full[..14 + 20 + 10]),
        (TC_ACT_SHOT, Some(135))
    );
    // IHL below 5 and a version other than 4.
    let mut bad_ihl = full.clone();
    bad_ihl[14] = 0x44;
    assert_eq!(egress(&mut fx, &bad_ihl), (TC_ACT_SHOT, Some(134)));
    let mut bad_version = full.clone();
    bad_version[14] = 0x65;
    assert_eq!(egress(&mut fx, &bad_version), (TC_ACT_SHOT, Some(134)));
    // IHL pointing past the end of the packet.
    let mut long_ihl = full[..14 + 24].to_vec();
    long_ihl[14] = 0x4f;
    assert_eq!(egress(&mut fx, &long_ihl), (TC_ACT_SHOT, Some(134)));
    // The intact packet passes.
    assert_eq!(egress(&mut fx, &full), (TC_ACT_OK, None));
    assert_eq!(
        fx.objs
            .maps
            .metric_count(134, MetricDirection::Egress)
            .unwrap(),
        3
    );
}

#[test]
fn privileged_ip_options_are_skipped_not_dropped() {
    let mut fx = Fixture::new();
    let mut map = fx.add_endpoint(POD, 9, 1000);
    policy(
        &mut map,
        PolicyPeer::Any,
        Egress,
        L4Match::port(TCP, 80),
        false,
    );
    let mut spec = Ipv4Spec::new(POD, PEER, TCP);
    // Record-route option, padded to 8 bytes with end-of-options.
    spec.options = vec![7, 7, 4, 0, 0, 0, 0, 0];
    let frame = packet::ipv4_frame(&spec, &tcp_l4(80));
    assert_eq!(egress(&mut fx, &frame), (TC_ACT_OK, None));
    // The port after the options is what policy sees.
    let frame = packet::ipv4_frame(&spec, &tcp_l4(81));
    assert_eq!(egress(&mut fx, &frame), (TC_ACT_SHOT, Some(133)));
}

#[test]
fn privileged_fragments() {
    let mut fx = Fixture::new();
    let mut map = fx.add_endpoint(POD, 9, 1000);
    policy(
        &mut map,
        PolicyPeer::Any,
        Egress,
        L4Match::port(UDP, 53),
        false,
    );

    // First fragment: has the UDP header, matched on its port.
    let mut first = Ipv4Spec::new(POD, PEER, UDP);
    first.frag = 0x2000;
    let l4 = packet::udp_datagram(SocketAddrV4::new(POD, 5000), SocketAddrV4::new(PEER, 53));
    assert_eq!(
        egress(&mut fx, &packet::ipv4_frame(&first, &l4)),
        (TC_ACT_OK, None)
    );
    // Later fragment: no ports, cannot match a port rule (DROP_FRAG_NOSUPPORT).
    let mut later = Ipv4Spec::new(POD, PEER, UDP);
    later.frag = 0x0003;
    assert_eq!(
        egress(&mut fx, &packet::ipv4_frame(&later, b"payload.")),
        (TC_ACT_SHOT, Some(157))
    );

    // With an L3-only rule the later fragment passes.
    let mut fx = Fixture::new();
    let mut map = fx.add_endpoint(POD, 9, 1000);
    policy(&mut map, PolicyPeer::Any, Egress, L4Match::Any, false);
    assert_eq!(
        egress(&mut fx, &packet::ipv4_frame(&later, b"payload.")),
        (TC_ACT_OK, None)
    );
}

#[test]
fn privileged_unsupported_protocols() {
    let mut fx = fixture(L4Match::Any);
    // IPv6 while the IPv6 path does not exist, and an 802.3 length field.
    assert_eq!(
        egress(&mut fx, &packet::ethernet(packet::ETH_P_IPV6, &[0x60; 40])),
        (TC_ACT_SHOT, Some(139))
    );
    assert_eq!(
        egress(&mut fx, &packet::ethernet(0x0100, &[0; 40])),
        (TC_ACT_SHOT, Some(166))
    );
    // GRE has no conntrack support upstream: DROP_CT_UNKNOWN_PROTO.
    let gre = packet::ipv4_frame(&Ipv4Spec::new(POD, PEER, 47), &[0; 8]);
    assert_eq!(egress(&mut fx, &gre), (TC_ACT_SHOT, Some(137)));
    // The same on the way in.
    assert_eq!(
        fx.run_to_container(&packet::ethernet(packet::ETH_P_IPV6, &[0x60; 40]))
            .verdict,
        TC_ACT_SHOT
    );
    assert_eq!(
        fx.objs
            .maps
            .metric_count(139, MetricDirection::Ingress)
            .unwrap(),
        1
    );
}

#[test]
fn privileged_spoofed_source_is_dropped_132() {
    let mut fx = fixture(L4Match::Any);
    let spoofed = packet::tcp(
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 11), 40000),
        SocketAddrV4::new(PEER, 80),
        SYN,
    );
    assert_eq!(egress(&mut fx, &spoofed), (TC_ACT_SHOT, Some(132)));
    // Traffic for an address that is not a local endpoint is not delivered into the pod.
    let stray = packet::tcp(
        SocketAddrV4::new(PEER, 80),
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 11), 40000),
        SYN,
    );
    assert_eq!(fx.run_to_container(&stray).verdict, TC_ACT_SHOT);
}

#[test]
fn privileged_arp_responder_answers_for_the_gateway() {
    let fx = fixture(L4Match::Any);
    let request = packet::arp_request(packet::POD_MAC, POD, GATEWAY);
    let run = fx.run_from_container(&request);
    assert_eq!(run.verdict, TC_ACT_REDIRECT);
    let reply = run.packet;
    assert_eq!(&reply[0..6], &packet::POD_MAC, "to the asking pod");
    assert_eq!(&reply[6..12], &NODE_MAC, "from the host-side veth");
    assert_eq!(&reply[12..14], &[0x08, 0x06]);
    assert_eq!(&reply[20..22], &[0, 2], "an ARP reply");
    assert_eq!(&reply[22..28], &NODE_MAC, "sender hardware address");
    assert_eq!(&reply[28..32], &GATEWAY.octets(), "sender protocol address");
    assert_eq!(&reply[32..38], &packet::POD_MAC);
    assert_eq!(&reply[38..42], &POD.octets());

    // Requests from unknown senders, gratuitous ARP and replies go to the stack untouched.
    let unknown = packet::arp_request(packet::POD_MAC, Ipv4Addr::new(10, 0, 1, 99), GATEWAY);
    let run = fx.run_from_container(&unknown);
    assert_eq!((run.verdict, run.packet), (TC_ACT_OK, unknown));
    let gratuitous = packet::arp_request(packet::POD_MAC, POD, POD);
    assert_eq!(fx.run_from_container(&gratuitous).verdict, TC_ACT_OK);
    // ARP towards the pod (the host resolving it) passes.
    assert_eq!(
        fx.run_to_container(&packet::arp_request(NODE_MAC, GATEWAY, POD))
            .verdict,
        TC_ACT_OK
    );
}
