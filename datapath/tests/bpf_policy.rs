//! BPF_PROG_TEST_RUN tests of policy enforcement, conntrack, events and metrics. Each test loads
//! its own private instance of the programs (root needed: CAP_BPF).

mod support;

use std::net::{Ipv4Addr, SocketAddrV4};

use datapath::LoadOptions;
use datapath::maps::ct::{CtTuple4, TUPLE_F_IN, TUPLE_F_OUT};
use datapath::maps::events::{
    CT_NEW, CT_RELATED, NOTIFY_DROP, NOTIFY_POLICY_VERDICT, NOTIFY_TRACE, POLICY_EGRESS,
    POLICY_INGRESS, POLICY_MATCH_L3_L4, POLICY_MATCH_L3_ONLY, TRACE_TO_LXC, TRACE_TO_STACK,
};
use datapath::maps::metrics::{MetricDirection, REASON_FORWARDED};
use datapath::maps::policy::{L4Match, PolicyPeer, TrafficDirection::*};
use support::packet::{self, ACK, SYN, TCP, UDP};
use support::{Fixture, TC_ACT_OK, TC_ACT_SHOT, identity, policy};

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 20);
const POD_C: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 30);
const ID_A: u32 = 1000;
const ID_B: u32 = 2000;
const ID_C: u32 = 3000;
const EP_A: u16 = 42;

/// Endpoint A is local; B and C are remote peers known to the ipcache.
fn fixture() -> (Fixture, datapath::PolicyMap) {
    let mut fx = Fixture::new();
    let map = fx.add_endpoint(POD_A, EP_A, ID_A);
    fx.add_ipcache("10.0.2.20/32".parse().unwrap(), ID_B);
    fx.add_ipcache("10.0.3.0/24".parse().unwrap(), ID_C);
    (fx, map)
}

fn a(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(POD_A, port)
}

fn b(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(POD_B, port)
}

fn c(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(POD_C, port)
}

fn drop_reasons(fx: &mut Fixture) -> Vec<u8> {
    fx.events()
        .iter()
        .filter(|e| e.r#type == NOTIFY_DROP)
        .map(|e| e.subtype)
        .collect()
}

#[test]
fn privileged_allow_by_identity_and_port() {
    let (mut fx, mut map) = fixture();
    policy(
        &mut map,
        identity(ID_B),
        Egress,
        L4Match::port(TCP, 80),
        false,
    );

    assert_eq!(
        fx.run_from_container(&packet::tcp(a(40000), b(80), SYN))
            .verdict,
        TC_ACT_OK
    );
    // The connection is tracked as upstream stores it.
    let key = CtTuple4::connection(a(40000), b(80), TCP, TUPLE_F_OUT);
    let entry = fx
        .objs
        .maps
        .ct4
        .get(&key, 0)
        .expect("conntrack entry for the allowed connection");
    assert_eq!(entry.source_identity().get(), ID_A);

    assert_eq!(
        fx.run_from_container(&packet::tcp(a(40001), b(81), SYN))
            .verdict,
        TC_ACT_SHOT
    );
    assert_eq!(
        fx.run_from_container(&packet::tcp(a(40002), c(80), SYN))
            .verdict,
        TC_ACT_SHOT
    );
    assert_eq!(
        fx.run_from_container(&packet::udp(a(40003), b(80))).verdict,
        TC_ACT_SHOT
    );
    assert_eq!(drop_reasons(&mut fx), vec![133, 133, 133]);
}

#[test]
fn privileged_l3_only_allow() {
    let (mut fx, mut map) = fixture();
    policy(&mut map, identity(ID_B), Ingress, L4Match::Any, false);

    assert_eq!(
        fx.run_to_container(&packet::udp(b(5353), a(53))).verdict,
        TC_ACT_OK
    );
    assert_eq!(
        fx.run_to_container(&packet::tcp(b(40000), a(22), SYN))
            .verdict,
        TC_ACT_OK
    );
    assert_eq!(
        fx.run_to_container(&packet::icmp_echo(POD_B, POD_A, 7, false))
            .verdict,
        TC_ACT_OK
    );
    // Another identity, and the same identity in the other direction, are not allowed.
    assert_eq!(
        fx.run_to_container(&packet::udp(c(5353), a(53))).verdict,
        TC_ACT_SHOT
    );
    assert_eq!(
        fx.run_from_container(&packet::udp(a(5353), b(53))).verdict,
        TC_ACT_SHOT
    );

    let verdicts: Vec<_> = fx
        .events()
        .into_iter()
        .filter(|e| e.r#type == NOTIFY_POLICY_VERDICT)
        .collect();
    assert_eq!(verdicts.len(), 5);
    assert_eq!(verdicts[0].match_type, POLICY_MATCH_L3_ONLY);
    assert_eq!(verdicts[0].verdict, 0);
    assert_eq!(verdicts[3].verdict, -133);
}

#[test]
fn privileged_wildcard_port_and_identity() {
    let (fx, mut map) = fixture();
    // Any identity, TCP, any port.
    policy(
        &mut map,
        PolicyPeer::Any,
        Egress,
        L4Match::Protocol(TCP),
        false,
    );

    assert_eq!(
        fx.run_from_container(&packet::tcp(a(40000), b(1), SYN))
            .verdict,
        TC_ACT_OK
    );
    assert_eq!(
        fx.run_from_container(&packet::tcp(a(40001), c(65535), SYN))
            .verdict,
        TC_ACT_OK
    );
    assert_eq!(
        fx.run_from_container(&packet::udp(a(40002), b(53))).verdict,
        TC_ACT_SHOT
    );
}

#[test]
fn privileged_port_range() {
    let (fx, mut map) = fixture();
    for l4 in L4Match::port_range(TCP, 8000, 8010) {
        policy(&mut map, identity(ID_B), Egress, l4, false);
    }

    for port in [8000, 8005, 8010] {
        let run = fx.run_from_container(&packet::tcp(a(40000 + port), b(port), SYN));
        assert_eq!(run.verdict, TC_ACT_OK, "port {port} is in the range");
    }
    for port in [7999, 8011, 80] {
        let run = fx.run_from_container(&packet::tcp(a(40000 + port), b(port), SYN));
        assert_eq!(run.verdict, TC_ACT_SHOT, "port {port} is outside the range");
    }
}

#[test]
fn privileged_deny_beats_allow() {
    let (mut fx, mut map) = fixture();
    // Allow B on TCP/80, but deny TCP/80 from anyone: the deny wins.
    policy(
        &mut map,
        identity(ID_B),
        Egress,
        L4Match::port(TCP, 80),
        false,
    );
    policy(
        &mut map,
        PolicyPeer::Any,
        Egress,
        L4Match::port(TCP, 80),
        true,
    );
    // Deny everything to C, allow TCP/443 to anyone: C is still denied on 443.
    policy(&mut map, identity(ID_C), Egress, L4Match::Any, true);
    policy(
        &mut map,
        PolicyPeer::Any,
        Egress,
        L4Match::port(TCP, 443),
        false,
    );

    assert_eq!(
        fx.run_from_container(&packet::tcp(a(40000), b(80), SYN))
            .verdict,
        TC_ACT_SHOT
    );
    assert_eq!(
        fx.run_from_container(&packet::tcp(a(40001), c(443), SYN))
            .verdict,
        TC_ACT_SHOT
    );
    assert_eq!(
        fx.run_from_container(&packet::tcp(a(40002), b(443), SYN))
            .verdict,
        TC_ACT_OK
    );
    assert_eq!(drop_reasons(&mut fx), vec![181, 181]);
    assert_eq!(
        fx.objs
            .maps
            .metric_count(181, MetricDirection::Egress)
            .unwrap(),
        2
    );
}

#[test]
fn privileged_default_deny_reports_reason_133_in_events_and_metrics() {
    let (mut fx, _map) = fixture();
    let frame = packet::tcp(a(40000), b(80), SYN);

    assert_eq!(
        fx.run_to_container(&packet::tcp(b(40000), a(80), SYN))
            .verdict,
        TC_ACT_SHOT
    );
    assert_eq!(fx.run_from_container(&frame).verdict, TC_ACT_SHOT);

    let events = fx.events();
    assert_eq!(
        events.len(),
        4,
        "a verdict and a drop per packet: {events:?}"
    );
    let (verdict, drop) = (&events[2], &events[3]);
    assert_eq!(verdict.r#type, NOTIFY_POLICY_VERDICT);
    assert_eq!(verdict.verdict, -133);
    assert_eq!(verdict.direction, POLICY_EGRESS);
    assert_eq!(drop.r#type, NOTIFY_DROP);
    assert_eq!(drop.subtype, 133);
    assert_eq!(drop.source, EP_A);
    assert_eq!(drop.src_label, ID_A);
    assert_eq!(drop.dst_label, ID_B);
    assert_eq!(drop.source_ipv4(), POD_A);
    assert_eq!(drop.destination_ipv4(), POD_B);
    assert_eq!(drop.source_port(), 40000);
    assert_eq!(drop.destination_port(), 80);
    assert_eq!(drop.protocol, TCP);
    assert_eq!(drop.len_orig as usize, frame.len());
    assert_eq!(drop.captured(), &frame[..]);
    assert_eq!(events[1].direction, POLICY_INGRESS);
    assert_eq!(events[1].dst_id, EP_A);
    assert_eq!(events[1].src_label, ID_B);

    assert_eq!(
        fx.objs
            .maps
            .metric_count(133, MetricDirection::Egress)
            .unwrap(),
        1
    );
    assert_eq!(
        fx.objs
            .maps
            .metric_count(133, MetricDirection::Ingress)
            .unwrap(),
        1
    );
    let totals = fx.objs.maps.metric_totals().unwrap();
    assert_eq!(
        totals[&(133, MetricDirection::Egress.code())].bytes,
        frame.len() as u64
    );
}

#[test]
fn privileged_conntrack_reply_bypasses_policy() {
    let (fx, mut map) = fixture();
    policy(
        &mut map,
        identity(ID_B),
        Egress,
        L4Match::port(TCP, 80),
        false,
    );

    assert_eq!(
        fx.run_from_container(&packet::tcp(a(40000), b(80), SYN))
            .verdict,
        TC_ACT_OK
    );
    // No ingress entry at all, yet the reply passes.
    assert_eq!(
        fx.run_to_container(&packet::tcp(b(80), a(40000), SYN | ACK))
            .verdict,
        TC_ACT_OK
    );
    assert_eq!(
        fx.run_from_container(&packet::tcp(a(40000), b(80), ACK))
            .verdict,
        TC_ACT_OK
    );
    // A new connection from B to the same port on A is not a reply.
    assert_eq!(
        fx.run_to_container(&packet::tcp(b(80), a(40001), SYN))
            .verdict,
        TC_ACT_SHOT
    );

    let reply_key = CtTuple4::connection(b(80), a(40000), TCP, TUPLE_F_IN);
    assert!(
        fx.objs.maps.ct4.get(&reply_key, 0).is_err(),
        "replies create no entry"
    );
    let entry = fx
        .objs
        .maps
        .ct4
        .get(&CtTuple4::connection(a(40000), b(80), TCP, TUPLE_F_OUT), 0)
        .unwrap();
    assert_eq!(entry.tx_flags_seen, SYN | ACK);
    assert_eq!(entry.rx_flags_seen, SYN | ACK);
}

#[test]
fn privileged_icmp_echo_reply_and_related_errors_pass() {
    let (mut fx, mut map) = fixture();
    policy(
        &mut map,
        identity(ID_B),
        Egress,
        L4Match::Protocol(packet::ICMP),
        false,
    );
    policy(
        &mut map,
        identity(ID_B),
        Egress,
        L4Match::port(UDP, 53),
        false,
    );

    assert_eq!(
        fx.run_from_container(&packet::icmp_echo(POD_A, POD_B, 99, false))
            .verdict,
        TC_ACT_OK
    );
    assert_eq!(
        fx.run_to_container(&packet::icmp_echo(POD_B, POD_A, 99, true))
            .verdict,
        TC_ACT_OK
    );
    // Another identifier is not a reply.
    assert_eq!(
        fx.run_to_container(&packet::icmp_echo(POD_B, POD_A, 98, true))
            .verdict,
        TC_ACT_SHOT
    );

    let query = packet::udp(a(41000), b(53));
    assert_eq!(fx.run_from_container(&query).verdict, TC_ACT_OK);
    fx.events();
    let unreachable = packet::icmp_unreachable(POD_B, POD_A, 3, &query);
    assert_eq!(fx.run_to_container(&unreachable).verdict, TC_ACT_OK);
    let traces: Vec<_> = fx
        .events()
        .into_iter()
        .filter(|e| e.r#type == NOTIFY_TRACE)
        .collect();
    assert_eq!(traces.len(), 1);
    assert_eq!(traces[0].reason, CT_RELATED);
    // An error about a connection that never existed is subject to policy.
    let stray = packet::icmp_unreachable(POD_B, POD_A, 3, &packet::udp(a(41001), b(53)));
    assert_eq!(fx.run_to_container(&stray).verdict, TC_ACT_SHOT);
}

#[test]
fn privileged_trace_and_verdict_event_fields() {
    let (mut fx, mut map) = fixture();
    let entry = datapath::maps::policy::PolicyEntry::allow(L4Match::port(TCP, 80)).with_cookie(77);
    map.insert(
        &datapath::maps::policy::PolicyKey::new(identity(ID_B), Egress, L4Match::port(TCP, 80)),
        entry,
        0,
    )
    .unwrap();
    policy(
        &mut map,
        identity(ID_B),
        Ingress,
        L4Match::port(TCP, 8080),
        false,
    );

    let frame = packet::tcp(a(40000), b(80), SYN);
    assert_eq!(fx.run_from_container(&frame).verdict, TC_ACT_OK);
    assert_eq!(
        fx.run_to_container(&packet::tcp(b(50000), a(8080), SYN))
            .verdict,
        TC_ACT_OK
    );
    let events = fx.events();
    assert_eq!(events.len(), 4);

    let verdict = &events[0];
    assert_eq!(verdict.r#type, NOTIFY_POLICY_VERDICT);
    assert_eq!(verdict.verdict, 0);
    assert_eq!(verdict.match_type, POLICY_MATCH_L3_L4);
    assert_eq!(verdict.cookie, 77);
    assert_eq!(verdict.direction, POLICY_EGRESS);

    let trace = &events[1];
    assert_eq!(trace.r#type, NOTIFY_TRACE);
    assert_eq!(trace.obs_point, TRACE_TO_STACK);
    assert_eq!(trace.subtype, TRACE_TO_STACK);
    assert_eq!(trace.reason, CT_NEW);
    assert_eq!(trace.source, EP_A);
    assert_eq!((trace.src_label, trace.dst_label), (ID_A, ID_B));
    assert_eq!((trace.source_ipv4(), trace.source_port()), (POD_A, 40000));
    assert_eq!(
        (trace.destination_ipv4(), trace.destination_port()),
        (POD_B, 80)
    );
    assert_eq!(trace.protocol, TCP);
    assert_eq!(trace.family, 2);
    assert_eq!(trace.len_orig as usize, frame.len());
    assert_eq!(trace.ifindex, support::TEST_IFINDEX);
    assert!(trace.ktime_ns > 0);

    let ingress = &events[3];
    assert_eq!(ingress.obs_point, TRACE_TO_LXC);
    assert_eq!(ingress.dst_id, EP_A);
    assert_eq!((ingress.src_label, ingress.dst_label), (ID_B, ID_A));

    // An established packet inside the report interval is not traced again.
    assert_eq!(
        fx.run_from_container(&packet::tcp(a(40000), b(80), ACK))
            .verdict,
        TC_ACT_OK
    );
    assert_eq!(
        fx.run_from_container(&packet::tcp(a(40000), b(80), ACK))
            .verdict,
        TC_ACT_OK
    );
    let later = fx.events();
    assert_eq!(
        later.len(),
        1,
        "only the first ACK (new TCP flag) is traced: {later:?}"
    );
}

#[test]
fn privileged_metrics_count_forwarded_and_dropped() {
    let (fx, mut map) = fixture();
    policy(&mut map, identity(ID_B), Egress, L4Match::Any, false);
    let allowed = packet::tcp(a(40000), b(80), SYN);
    for _ in 0..3 {
        assert_eq!(fx.run_from_container(&allowed).verdict, TC_ACT_OK);
    }
    for port in 0..2 {
        assert_eq!(
            fx.run_from_container(&packet::tcp(a(40000 + port), c(80), SYN))
                .verdict,
            TC_ACT_SHOT
        );
    }
    let maps = &fx.objs.maps;
    assert_eq!(
        maps.metric_count(REASON_FORWARDED, MetricDirection::Egress)
            .unwrap(),
        3
    );
    assert_eq!(maps.metric_count(133, MetricDirection::Egress).unwrap(), 2);
    assert_eq!(
        maps.metric_count(REASON_FORWARDED, MetricDirection::Ingress)
            .unwrap(),
        0
    );
    let totals = maps.metric_totals().unwrap();
    assert_eq!(
        totals[&(REASON_FORWARDED, 2)].bytes,
        3 * allowed.len() as u64
    );
}

#[test]
fn privileged_events_are_rate_limited_and_suppressions_counted() {
    let mut fx = Fixture::with_options(LoadOptions {
        events_rate_per_sec: 1,
        events_burst: 3,
        ..LoadOptions::default()
    });
    fx.add_endpoint(POD_A, EP_A, ID_A);
    for port in 0..10 {
        assert_eq!(
            fx.run_from_container(&packet::tcp(a(40000 + port), b(80), SYN))
                .verdict,
            TC_ACT_SHOT
        );
    }
    let events = fx.events();
    // Two events per denied packet (verdict and drop); within the test the bucket refills by at
    // most one token a second.
    assert!(
        (3..=5).contains(&events.len()),
        "burst of 3 expected, got {}",
        events.len()
    );
    let dropped = fx.objs.maps.events_dropped().unwrap();
    assert_eq!(dropped.suppressed as usize + events.len(), 20);
    assert_eq!(dropped.lost, 0);
    // Metrics are not rate limited.
    assert_eq!(
        fx.objs
            .maps
            .metric_count(133, MetricDirection::Egress)
            .unwrap(),
        10
    );
}

#[test]
fn privileged_endpoint_without_policy_map_is_not_ready() {
    let mut fx = Fixture::new();
    fx.add_endpoint(POD_A, EP_A, ID_A);
    fx.objs
        .maps
        .policy
        .remove(datapath::EndpointId::new(EP_A))
        .unwrap();
    assert!(
        fx.objs
            .maps
            .policy
            .get(datapath::EndpointId::new(EP_A))
            .unwrap()
            .is_none()
    );
    assert_eq!(
        fx.run_from_container(&packet::tcp(a(40000), b(80), SYN))
            .verdict,
        TC_ACT_SHOT
    );
    assert_eq!(drop_reasons(&mut fx), vec![203]);
}
