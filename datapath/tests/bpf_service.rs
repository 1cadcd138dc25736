//! BPF_PROG_TEST_RUN tests of ClusterIP load balancing: DNAT to a backend with valid checksums,
//! stickiness through conntrack, reverse NAT of replies, and frontends without backends.

mod support;

use std::net::{Ipv4Addr, SocketAddrV4};

use datapath::maps::ct::CtTuple4;
use datapath::maps::lb::{
    BackendId, Lb4Backend, Lb4Key, Lb4ReverseNat, Lb4Service, LbSelection, RevNatIndex,
};
use datapath::maps::metrics::MetricDirection;
use datapath::maps::policy::{L4Match, PolicyPeer, TrafficDirection::*};
use support::packet::{self, ACK, SYN, TCP, UDP};
use support::{Fixture, TC_ACT_OK, TC_ACT_SHOT, policy};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const BACKENDS: [SocketAddrV4; 2] = [
    SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 20), 8080),
    SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 21), 8080),
];

fn client(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(CLIENT, port)
}

/// A client endpoint allowed to talk to anything, and a service with `backends` on `proto`.
fn fixture(proto: u8, backends: &[SocketAddrV4], selection: LbSelection) -> Fixture {
    let mut fx = Fixture::new();
    let mut map = fx.add_endpoint(CLIENT, 7, 1000);
    policy(&mut map, PolicyPeer::Any, Egress, L4Match::Any, false);
    fx.add_ipcache("10.0.2.0/24".parse().unwrap(), 2000);
    add_service(
        &mut fx,
        SocketAddrV4::new(VIP, 80),
        proto,
        1,
        backends,
        selection,
    );
    fx
}

fn add_service(
    fx: &mut Fixture,
    frontend: SocketAddrV4,
    proto: u8,
    rev_nat: u16,
    backends: &[SocketAddrV4],
    selection: LbSelection,
) {
    let maps = &mut fx.objs.maps;
    let rev = RevNatIndex::new(rev_nat);
    for (i, backend) in backends.iter().enumerate() {
        let id = BackendId::new(u32::from(rev_nat) * 100 + i as u32 + 1);
        maps.lb4_backends
            .insert(id.get(), Lb4Backend::new(*backend, proto), 0)
            .unwrap();
        maps.lb4_services
            .insert(
                Lb4Key::slot(frontend, proto, i as u16 + 1),
                Lb4Service::slot(id, rev),
                0,
            )
            .unwrap();
    }
    maps.lb4_services
        .insert(
            Lb4Key::master(frontend, proto),
            Lb4Service::master(backends.len() as u16, rev, selection),
            0,
        )
        .unwrap();
    maps.lb4_reverse_nat
        .insert(rev.to_key(), Lb4ReverseNat::new(frontend), 0)
        .unwrap();
}

#[test]
fn privileged_service_dnat_to_backend_and_rev_nat_on_reply() {
    let fx = fixture(TCP, &BACKENDS, LbSelection::Random);
    let request = packet::tcp(client(40000), SocketAddrV4::new(VIP, 80), SYN);

    let out = fx.run_from_container(&request);
    assert_eq!(out.verdict, TC_ACT_OK);
    let parsed = packet::parse(&out.packet);
    assert!(
        BACKENDS.contains(&parsed.dst),
        "DNAT to a backend, got {}",
        parsed.dst
    );
    assert_eq!(parsed.src, client(40000));
    assert!(
        parsed.ip_checksum_ok && parsed.l4_checksum_ok,
        "checksums after DNAT: {parsed:?}"
    );
    let backend = parsed.dst;

    // Stickiness: every later packet of the connection goes to the same backend.
    for _ in 0..8 {
        let again =
            fx.run_from_container(&packet::tcp(client(40000), SocketAddrV4::new(VIP, 80), ACK));
        assert_eq!(again.verdict, TC_ACT_OK);
        assert_eq!(packet::parse(&again.packet).dst, backend);
    }
    let svc_entry = fx
        .objs
        .maps
        .ct4
        .get(
            &CtTuple4::service(client(40000), SocketAddrV4::new(VIP, 80), TCP),
            0,
        )
        .unwrap();
    assert_eq!(svc_entry.rev_nat().map(|r| r.get()), Some(1));
    let conn = fx
        .objs
        .maps
        .ct4
        .get(&CtTuple4::connection(client(40000), backend, TCP, 0), 0)
        .unwrap();
    assert_eq!(conn.rev_nat().map(|r| r.get()), Some(1));

    // The backend's reply comes back from the frontend address.
    let reply = fx.run_to_container(&packet::tcp(backend, client(40000), SYN | ACK));
    assert_eq!(reply.verdict, TC_ACT_OK);
    let parsed = packet::parse(&reply.packet);
    assert_eq!(parsed.src, SocketAddrV4::new(VIP, 80));
    assert_eq!(parsed.dst, client(40000));
    assert!(
        parsed.ip_checksum_ok && parsed.l4_checksum_ok,
        "checksums after rev-NAT: {parsed:?}"
    );
}

#[test]
fn privileged_udp_service_checksums_and_hash_selection() {
    let mut fx = fixture(UDP, &BACKENDS, LbSelection::Hash);
    let frontend = SocketAddrV4::new(VIP, 80);
    let mut seen = std::collections::BTreeSet::new();
    for port in 0..64 {
        let request = packet::udp(client(30000 + port), frontend);
        let first = packet::parse(&fx.run_from_container(&request).packet);
        assert!(first.ip_checksum_ok && first.l4_checksum_ok);
        seen.insert(first.dst);
        // Hash selection does not depend on conntrack: forget the flow, get the same backend.
        let key = CtTuple4::service(client(30000 + port), frontend, UDP);
        fx.objs.maps.ct_any4.remove(&key).unwrap();
        let second = packet::parse(&fx.run_from_container(&request).packet);
        assert_eq!(first.dst, second.dst);

        let reply = fx.run_to_container(&packet::udp(first.dst, client(30000 + port)));
        assert_eq!(reply.verdict, TC_ACT_OK);
        let parsed = packet::parse(&reply.packet);
        assert_eq!(parsed.src, frontend);
        assert!(parsed.l4_checksum_ok);
    }
    assert_eq!(seen.len(), 2, "64 flows spread over both backends");
}

#[test]
fn privileged_random_selection_uses_every_backend() {
    let fx = fixture(TCP, &BACKENDS, LbSelection::Random);
    let mut seen = std::collections::BTreeSet::new();
    for port in 0..64 {
        let out = fx.run_from_container(&packet::tcp(
            client(20000 + port),
            SocketAddrV4::new(VIP, 80),
            SYN,
        ));
        seen.insert(packet::parse(&out.packet).dst);
    }
    assert_eq!(seen.len(), 2);
}

#[test]
fn privileged_service_without_backends_drops_158() {
    let mut fx = fixture(TCP, &[], LbSelection::Random);
    let out = fx.run_from_container(&packet::tcp(client(40000), SocketAddrV4::new(VIP, 80), SYN));
    assert_eq!(out.verdict, TC_ACT_SHOT);
    assert_eq!(
        fx.objs
            .maps
            .metric_count(158, MetricDirection::Egress)
            .unwrap(),
        1
    );
    let drops: Vec<_> = fx
        .events()
        .into_iter()
        .filter(|e| e.r#type == 1)
        .map(|e| e.subtype)
        .collect();
    assert_eq!(drops, vec![158]);
    // Other ports of the same address are not the service.
    let other = fx.run_from_container(&packet::tcp(
        client(40001),
        SocketAddrV4::new(VIP, 443),
        SYN,
    ));
    assert_eq!(other.verdict, TC_ACT_OK);
    assert_eq!(
        packet::parse(&other.packet).dst,
        SocketAddrV4::new(VIP, 443)
    );
}

#[test]
fn privileged_removed_backend_is_replaced() {
    let mut fx = fixture(TCP, &BACKENDS, LbSelection::Random);
    let frontend = SocketAddrV4::new(VIP, 80);
    let first = packet::parse(
        &fx.run_from_container(&packet::tcp(client(40000), frontend, SYN))
            .packet,
    )
    .dst;
    let index = BACKENDS.iter().position(|b| *b == first).unwrap();
    let survivor = BACKENDS[1 - index];
    // Leave only the other backend in both slots.
    let maps = &mut fx.objs.maps;
    maps.lb4_backends.remove(&(100 + index as u32 + 1)).unwrap();
    let survivor_id = BackendId::new(100 + (1 - index) as u32 + 1);
    for slot in 1..=2 {
        maps.lb4_services
            .insert(
                Lb4Key::slot(frontend, TCP, slot),
                Lb4Service::slot(survivor_id, RevNatIndex::new(1)),
                0,
            )
            .unwrap();
    }
    let next = packet::parse(
        &fx.run_from_container(&packet::tcp(client(40000), frontend, ACK))
            .packet,
    )
    .dst;
    assert_eq!(next, survivor);
}

#[test]
fn privileged_connection_older_than_its_service_keeps_its_destination() {
    // A plain connection to 10.96.0.10:80 before any service has that address.
    let mut fx = Fixture::new();
    let mut map = fx.add_endpoint(CLIENT, 7, 1000);
    policy(&mut map, PolicyPeer::Any, Egress, L4Match::Any, false);
    let frontend = SocketAddrV4::new(VIP, 80);
    let first = fx.run_from_container(&packet::tcp(client(40000), frontend, SYN));
    assert_eq!(first.verdict, TC_ACT_OK);
    assert_eq!(packet::parse(&first.packet).dst, frontend);

    add_service(&mut fx, frontend, TCP, 1, &BACKENDS, LbSelection::Random);
    // Conntrack is consulted before the service map: the existing connection is not moved to a
    // backend mid-stream (upstream would translate it); a new one is load-balanced.
    let again = fx.run_from_container(&packet::tcp(client(40000), frontend, ACK));
    assert_eq!(again.verdict, TC_ACT_OK);
    assert_eq!(packet::parse(&again.packet).dst, frontend);
    let fresh = fx.run_from_container(&packet::tcp(client(40001), frontend, SYN));
    assert_eq!(fresh.verdict, TC_ACT_OK);
    assert!(BACKENDS.contains(&packet::parse(&fresh.packet).dst));
}
