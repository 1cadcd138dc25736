//! BPF_PROG_TEST_RUN tests of the established-connection fast path: conntrack entries record the
//! device that validated the endpoint, packets on that device skip the endpoint lookup, packets
//! elsewhere are validated as before; the lookup order; forwarded-packet metrics in
//! `cilium_metrics_fwd`; and the monitor aggregation setting. Root needed (CAP_BPF).

mod support;

use std::net::{Ipv4Addr, SocketAddrV4};

use datapath::LoadOptions;
use datapath::maps::ct::{CtTuple4, TUPLE_F_IN, TUPLE_F_OUT};
use datapath::maps::endpoint::{EndpointInfo, EndpointKey};
use datapath::maps::events::{
    CT_ESTABLISHED, CT_NEW, CT_REPLY, MonitorAggregation, NOTIFY_DROP, NOTIFY_POLICY_VERDICT,
    NOTIFY_TRACE, TRACE_TO_LXC, TRACE_TO_STACK,
};
use datapath::maps::metrics::{MetricDirection, REASON_FORWARDED};
use datapath::maps::policy::{L4Match, TrafficDirection::*};
use datapath::{EndpointId, PolicyMap};
use model::identity::NumericIdentity;
use support::packet::{self, ACK, SYN, TCP};
use support::{Fixture, NODE_MAC, TC_ACT_OK, TC_ACT_SHOT, TEST_IFINDEX, identity, policy};

const FIN: u8 = 0x01;
const RST: u8 = 0x04;

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 20);
const ID_A: u32 = 1000;
const ID_B: u32 = 2000;
const EP_A: u16 = 42;
/// A host-side veth other than the one BPF_PROG_TEST_RUN runs on.
const OTHER_IFINDEX: u32 = 7;

fn a(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(POD_A, port)
}

fn b(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(POD_B, port)
}

/// Endpoint A, allowed to reach B on TCP/80 and TCP/50000, and B known to the ipcache.
fn fixture_with(options: LoadOptions) -> (Fixture, PolicyMap) {
    let mut fx = Fixture::with_options(options);
    let mut map = fx.add_endpoint(POD_A, EP_A, ID_A);
    fx.add_ipcache("10.0.2.20/32".parse().unwrap(), ID_B);
    for port in [80, 50000] {
        policy(
            &mut map,
            identity(ID_B),
            Egress,
            L4Match::port(TCP, port),
            false,
        );
    }
    (fx, map)
}

fn fixture() -> (Fixture, PolicyMap) {
    fixture_with(LoadOptions {
        events_rate_per_sec: 0,
        ..LoadOptions::default()
    })
}

/// Moves endpoint A's `cilium_lxc` entry to the veth `ifindex`.
fn move_endpoint(fx: &mut Fixture, ifindex: u32) {
    let info = EndpointInfo::new(
        ifindex,
        EndpointId::new(EP_A),
        NumericIdentity::new(ID_A),
        packet::POD_MAC,
        NODE_MAC,
    );
    fx.objs
        .maps
        .endpoints
        .insert(EndpointKey::ipv4(POD_A), info, 0)
        .unwrap();
}

fn traces(fx: &mut Fixture) -> Vec<datapath::maps::events::EventRecord> {
    fx.events()
        .into_iter()
        .filter(|e| e.r#type == NOTIFY_TRACE)
        .collect()
}

#[test]
fn privileged_entries_record_the_validating_device() {
    let (fx, _map) = fixture();
    let frame = packet::tcp(a(40000), b(80), SYN);
    assert_eq!(fx.run_from_container(&frame).verdict, TC_ACT_OK);
    let out = fx
        .objs
        .maps
        .ct4
        .get(&CtTuple4::connection(a(40000), b(80), TCP, TUPLE_F_OUT), 0)
        .unwrap();
    assert_eq!(u32::from(out.ifindex), TEST_IFINDEX);
}

#[test]
fn privileged_established_packets_from_another_device_are_validated() {
    let (mut fx, _map) = fixture();
    let key = CtTuple4::connection(a(40000), b(80), TCP, TUPLE_F_OUT);
    assert_eq!(
        fx.run_from_container(&packet::tcp(a(40000), b(80), SYN))
            .verdict,
        TC_ACT_OK
    );
    // As if the entry had been created on A's veth 7 and the test device were another pod's.
    let mut entry = fx.objs.maps.ct4.get(&key, 0).unwrap();
    entry.ifindex = OTHER_IFINDEX as u16;
    fx.objs.maps.ct4.insert(key, entry, 0).unwrap();
    move_endpoint(&mut fx, OTHER_IFINDEX);
    fx.events();

    let spoofed = packet::tcp(a(40000), b(80), ACK | RST);
    let run = fx.run_from_container(&spoofed);
    assert_eq!(
        run.verdict, TC_ACT_SHOT,
        "a spoofed packet of a live connection"
    );
    let drops: Vec<u8> = fx
        .events()
        .iter()
        .filter(|e| e.r#type == NOTIFY_DROP)
        .map(|e| e.subtype)
        .collect();
    assert_eq!(drops, vec![132]);
    let after = fx.objs.maps.ct4.get(&key, 0).unwrap();
    assert_eq!(
        (after.flags, after.tx_flags_seen),
        (entry.flags, entry.tx_flags_seen),
        "the dropped packet did not touch the connection"
    );

    // Back on this device the endpoint lookup vouches for the packet instead of the entry.
    move_endpoint(&mut fx, TEST_IFINDEX);
    assert_eq!(
        fx.run_from_container(&packet::tcp(a(40000), b(80), ACK))
            .verdict,
        TC_ACT_OK
    );
    let traced = traces(&mut fx);
    assert_eq!(traced.len(), 1, "the first ACK is traced: {traced:?}");
    assert_eq!(traced[0].reason, CT_ESTABLISHED);
}

#[test]
fn privileged_fast_path_events_name_the_endpoint() {
    let (mut fx, _map) = fixture();
    assert_eq!(
        fx.run_from_container(&packet::tcp(a(40000), b(80), SYN))
            .verdict,
        TC_ACT_OK
    );
    assert_eq!(
        fx.run_to_container(&packet::tcp(b(80), a(40000), SYN | ACK))
            .verdict,
        TC_ACT_OK
    );
    fx.events();
    // New TCP flags in each direction: traced, through the fast path.
    assert_eq!(
        fx.run_from_container(&packet::tcp(a(40000), b(80), ACK | FIN))
            .verdict,
        TC_ACT_OK
    );
    assert_eq!(
        fx.run_to_container(&packet::tcp(b(80), a(40000), ACK | FIN))
            .verdict,
        TC_ACT_OK
    );
    let traced = traces(&mut fx);
    assert_eq!(traced.len(), 2, "{traced:?}");
    let (out, reply) = (&traced[0], &traced[1]);
    assert_eq!(
        (out.obs_point, out.reason, out.source),
        (TRACE_TO_STACK, CT_ESTABLISHED, EP_A)
    );
    assert_eq!((out.src_label, out.dst_label), (ID_A, ID_B));
    assert_eq!(
        (reply.obs_point, reply.reason, reply.dst_id),
        (TRACE_TO_LXC, CT_REPLY, EP_A)
    );
    assert_eq!((reply.src_label, reply.dst_label), (ID_B, ID_A));
}

#[test]
fn privileged_established_flows_outlive_the_endpoint_entry_new_ones_do_not() {
    let (mut fx, _map) = fixture();
    assert_eq!(
        fx.run_from_container(&packet::tcp(a(40000), b(80), SYN))
            .verdict,
        TC_ACT_OK
    );
    fx.objs
        .maps
        .endpoints
        .remove(&EndpointKey::ipv4(POD_A))
        .unwrap();
    // The connection's entry was created on this veth: its packets keep flowing until the veth
    // (and with it the programs) goes, as with upstream's per-endpoint programs.
    assert_eq!(
        fx.run_from_container(&packet::tcp(a(40000), b(80), ACK))
            .verdict,
        TC_ACT_OK
    );
    assert_eq!(
        fx.run_to_container(&packet::tcp(b(80), a(40000), ACK))
            .verdict,
        TC_ACT_OK
    );
    assert_eq!(
        fx.run_from_container(&packet::tcp(a(40001), b(80), SYN))
            .verdict,
        TC_ACT_SHOT
    );
    assert_eq!(
        fx.run_to_container(&packet::tcp(b(80), a(40001), SYN))
            .verdict,
        TC_ACT_SHOT
    );
}

#[test]
fn privileged_replies_are_found_whichever_port_is_lower() {
    let (mut fx, _map) = fixture();
    // Client port above the server's (the usual case) and below it.
    for (client, server) in [(a(40000), b(80)), (a(1000), b(50000))] {
        assert_eq!(
            fx.run_from_container(&packet::tcp(client, server, SYN))
                .verdict,
            TC_ACT_OK
        );
        fx.events();
        // No ingress policy at all: only a reply passes.
        assert_eq!(
            fx.run_to_container(&packet::tcp(server, client, SYN | ACK))
                .verdict,
            TC_ACT_OK,
            "reply {server} -> {client}"
        );
        assert_eq!(
            fx.run_from_container(&packet::tcp(client, server, ACK))
                .verdict,
            TC_ACT_OK
        );
        let reasons: Vec<u8> = traces(&mut fx).iter().map(|e| e.reason).collect();
        assert_eq!(
            reasons,
            vec![CT_REPLY, CT_ESTABLISHED],
            "{client} -> {server}"
        );
    }
    // An ingress entry, found from both sides as well.
    let mut map = fx
        .objs
        .maps
        .policy
        .get(EndpointId::new(EP_A))
        .unwrap()
        .unwrap();
    policy(
        &mut map,
        identity(ID_B),
        Ingress,
        L4Match::port(TCP, 8080),
        false,
    );
    assert_eq!(
        fx.run_to_container(&packet::tcp(b(45000), a(8080), SYN))
            .verdict,
        TC_ACT_OK
    );
    assert!(
        fx.objs
            .maps
            .ct4
            .get(&CtTuple4::connection(b(45000), a(8080), TCP, TUPLE_F_IN), 0)
            .is_ok()
    );
    assert_eq!(
        fx.run_from_container(&packet::tcp(a(8080), b(45000), SYN | ACK))
            .verdict,
        TC_ACT_OK
    );
}

#[test]
fn privileged_syn_on_a_closed_connection_is_new_again() {
    let (mut fx, mut map) = fixture();
    for (client, server) in [(a(40000), b(80)), (a(1000), b(50000))] {
        assert_eq!(
            fx.run_from_container(&packet::tcp(client, server, SYN))
                .verdict,
            TC_ACT_OK
        );
        assert_eq!(
            fx.run_to_container(&packet::tcp(server, client, ACK | RST))
                .verdict,
            TC_ACT_OK
        );
    }
    fx.events();
    // A retransmitted SYN on an open connection stays established; on a reset one it is
    // evaluated again: with the allow rules gone, denied.
    for port in [80, 50000] {
        map.remove(&datapath::maps::policy::PolicyKey::new(
            identity(ID_B),
            Egress,
            L4Match::port(TCP, port),
        ))
        .unwrap();
    }
    for (client, server) in [(a(40000), b(80)), (a(1000), b(50000))] {
        assert_eq!(
            fx.run_from_container(&packet::tcp(client, server, SYN))
                .verdict,
            TC_ACT_SHOT,
            "{client} -> {server}"
        );
    }
    let kinds: Vec<(u8, u8)> = fx.events().iter().map(|e| (e.r#type, e.subtype)).collect();
    assert_eq!(
        kinds,
        vec![
            (NOTIFY_POLICY_VERDICT, 0),
            (NOTIFY_DROP, 133),
            (NOTIFY_POLICY_VERDICT, 0),
            (NOTIFY_DROP, 133)
        ]
    );
}

#[test]
fn privileged_forwarded_packets_are_counted_in_the_array() {
    let (fx, _map) = fixture();
    let frame = packet::tcp(a(40000), b(80), SYN);
    for _ in 0..3 {
        assert_eq!(fx.run_from_container(&frame).verdict, TC_ACT_OK);
    }
    let reply = packet::tcp(b(80), a(40000), SYN | ACK);
    assert_eq!(fx.run_to_container(&reply).verdict, TC_ACT_OK);
    let maps = &fx.objs.maps;
    let egress: u64 = maps
        .metrics_fwd
        .get(&u32::from(MetricDirection::Egress.code()), 0)
        .unwrap()
        .iter()
        .map(|v| v.count)
        .sum();
    assert_eq!(egress, 3);
    assert!(
        maps.metrics
            .keys()
            .all(|key| key.unwrap().reason != REASON_FORWARDED),
        "cilium_metrics keeps drops only"
    );
    let totals = maps.metric_totals().unwrap();
    assert_eq!(
        totals[&(REASON_FORWARDED, MetricDirection::Egress.code())].count,
        3
    );
    assert_eq!(
        totals[&(REASON_FORWARDED, MetricDirection::Ingress.code())].bytes,
        reply.len() as u64
    );
}

#[test]
fn privileged_monitor_aggregation_none_traces_every_packet() {
    for (aggregation, expected) in [
        (
            MonitorAggregation::None,
            vec![CT_NEW, CT_ESTABLISHED, CT_ESTABLISHED],
        ),
        (
            MonitorAggregation::Lowest,
            vec![CT_NEW, CT_ESTABLISHED, CT_ESTABLISHED],
        ),
        (MonitorAggregation::Medium, vec![CT_NEW, CT_ESTABLISHED]),
        (MonitorAggregation::Maximum, vec![CT_NEW, CT_ESTABLISHED]),
    ] {
        let (mut fx, _map) = fixture_with(LoadOptions {
            events_rate_per_sec: 0,
            monitor_aggregation: aggregation,
            ..LoadOptions::default()
        });
        for flags in [SYN, ACK, ACK] {
            assert_eq!(
                fx.run_from_container(&packet::tcp(a(40000), b(80), flags))
                    .verdict,
                TC_ACT_OK
            );
        }
        let reasons: Vec<u8> = traces(&mut fx).iter().map(|e| e.reason).collect();
        assert_eq!(reasons, expected, "{aggregation:?}");
    }
}

/// The (type, subtype) of every event, draining the ring buffer.
fn event_kinds(fx: &mut Fixture) -> Vec<(u8, u8)> {
    fx.events().iter().map(|e| (e.r#type, e.subtype)).collect()
}

fn policy_map(fx: &Fixture) -> PolicyMap {
    fx.objs
        .maps
        .policy
        .get(EndpointId::new(EP_A))
        .unwrap()
        .expect("endpoint A has a policy map")
}

/// A SYN without ACK opens a connection and is never looked up as a reply (see
/// `ct_may_be_reply()` in bpf/lib/conntrack.h): the peer's SYN on the reversed tuple of A's
/// connection (simultaneous open) is a new connection subject to ingress policy, while SYN-ACK
/// is still the reply. Both port orders, since the lookup order depends on them.
#[test]
fn privileged_a_syn_on_the_reversed_tuple_is_not_a_reply() {
    let (mut fx, _map) = fixture();
    for (client, server) in [(a(40000), b(80)), (a(1000), b(50000))] {
        assert_eq!(
            fx.run_from_container(&packet::tcp(client, server, SYN))
                .verdict,
            TC_ACT_OK
        );
        fx.events();
        // No ingress policy: the peer's own SYN is denied like any new connection.
        assert_eq!(
            fx.run_to_container(&packet::tcp(server, client, SYN))
                .verdict,
            TC_ACT_SHOT,
            "SYN {server} -> {client}"
        );
        assert_eq!(
            event_kinds(&mut fx),
            vec![(NOTIFY_POLICY_VERDICT, 0), (NOTIFY_DROP, 133)]
        );
        assert!(
            fx.objs
                .maps
                .ct4
                .get(&CtTuple4::connection(server, client, TCP, TUPLE_F_IN), 0)
                .is_err(),
            "the denied SYN created no entry"
        );
        // The answer to A's SYN is SYN-ACK, a reply as before.
        assert_eq!(
            fx.run_to_container(&packet::tcp(server, client, SYN | ACK))
                .verdict,
            TC_ACT_OK
        );
        let reasons: Vec<u8> = traces(&mut fx).iter().map(|e| e.reason).collect();
        assert_eq!(reasons, vec![CT_REPLY], "SYN-ACK {server} -> {client}");
    }

    // Allowed by ingress policy, the peer's SYN is a new connection with an entry of its own,
    // next to A's (which it does not touch).
    let mut map = policy_map(&fx);
    policy(
        &mut map,
        identity(ID_B),
        Ingress,
        L4Match::port(TCP, 40000),
        false,
    );
    let out_key = CtTuple4::connection(a(40000), b(80), TCP, TUPLE_F_OUT);
    let before = fx.objs.maps.ct4.get(&out_key, 0).unwrap();
    assert_eq!(
        fx.run_to_container(&packet::tcp(b(80), a(40000), SYN))
            .verdict,
        TC_ACT_OK
    );
    let events = fx.events();
    let verdicts: Vec<i32> = events
        .iter()
        .filter(|e| e.r#type == NOTIFY_POLICY_VERDICT)
        .map(|e| e.verdict)
        .collect();
    assert_eq!(verdicts, vec![0], "evaluated and allowed");
    let reasons: Vec<u8> = events
        .iter()
        .filter(|e| e.r#type == NOTIFY_TRACE)
        .map(|e| e.reason)
        .collect();
    assert_eq!(reasons, vec![CT_NEW]);
    assert!(
        fx.objs
            .maps
            .ct4
            .get(&CtTuple4::connection(b(80), a(40000), TCP, TUPLE_F_IN), 0)
            .is_ok()
    );
    let after = fx.objs.maps.ct4.get(&out_key, 0).unwrap();
    assert_eq!(
        (after.flags, after.rx_flags_seen),
        (before.flags, before.rx_flags_seen)
    );
}

/// The same on the way out: A's SYN on the reversed tuple of a connection B opened to A is
/// subject to egress policy; A's SYN-ACK is the reply.
#[test]
fn privileged_a_pod_syn_on_the_reversed_tuple_is_not_a_reply() {
    let (mut fx, _map) = fixture();
    let mut map = policy_map(&fx);
    policy(
        &mut map,
        identity(ID_B),
        Ingress,
        L4Match::port(TCP, 8080),
        false,
    );
    assert_eq!(
        fx.run_to_container(&packet::tcp(b(45000), a(8080), SYN))
            .verdict,
        TC_ACT_OK
    );
    fx.events();
    // A may reach B only on TCP/80 and TCP/50000.
    assert_eq!(
        fx.run_from_container(&packet::tcp(a(8080), b(45000), SYN))
            .verdict,
        TC_ACT_SHOT
    );
    assert_eq!(
        event_kinds(&mut fx),
        vec![(NOTIFY_POLICY_VERDICT, 0), (NOTIFY_DROP, 133)]
    );
    assert_eq!(
        fx.run_from_container(&packet::tcp(a(8080), b(45000), SYN | ACK))
            .verdict,
        TC_ACT_OK
    );
    let reasons: Vec<u8> = traces(&mut fx).iter().map(|e| e.reason).collect();
    assert_eq!(reasons, vec![CT_REPLY]);
}

/// A retransmitted SYN finds its connection's entry (the forward lookup is not skipped): it
/// passes without a policy decision, even after the rule that allowed it is gone, as upstream.
#[test]
fn privileged_a_retransmitted_syn_is_established() {
    let (mut fx, mut map) = fixture();
    policy(
        &mut map,
        identity(ID_B),
        Ingress,
        L4Match::port(TCP, 8080),
        false,
    );
    assert_eq!(
        fx.run_from_container(&packet::tcp(a(40000), b(80), SYN))
            .verdict,
        TC_ACT_OK
    );
    assert_eq!(
        fx.run_to_container(&packet::tcp(b(45000), a(8080), SYN))
            .verdict,
        TC_ACT_OK
    );
    fx.events();
    for (dir, port) in [(Egress, 80), (Ingress, 8080)] {
        map.remove(&datapath::maps::policy::PolicyKey::new(
            identity(ID_B),
            dir,
            L4Match::port(TCP, port),
        ))
        .unwrap();
    }
    assert_eq!(
        fx.run_from_container(&packet::tcp(a(40000), b(80), SYN))
            .verdict,
        TC_ACT_OK
    );
    assert_eq!(
        fx.run_to_container(&packet::tcp(b(45000), a(8080), SYN))
            .verdict,
        TC_ACT_OK
    );
    let kinds = event_kinds(&mut fx);
    assert!(
        kinds
            .iter()
            .all(|(t, _)| *t != NOTIFY_POLICY_VERDICT && *t != NOTIFY_DROP),
        "no policy decision for a retransmission: {kinds:?}"
    );
    // A SYN of a new connection on the same rules is now denied: the rules really are gone.
    assert_eq!(
        fx.run_from_container(&packet::tcp(a(40001), b(80), SYN))
            .verdict,
        TC_ACT_SHOT
    );
}
