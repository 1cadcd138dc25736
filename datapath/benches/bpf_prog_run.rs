//! ns/packet of the datapath programs through BPF_PROG_TEST_RUN, as ratios to a program doing
//! one hash lookup (DESIGN.md 6). Run as root: `cargo bench -p datapath --bench bpf_prog_run`.
//!
//! Two measurements, each compared with the yardstick measured the same way:
//! - repeat: one syscall runs the program 1,000,000 times on the same skb and the kernel reports
//!   the mean. Only valid when the program leaves the packet and the flow state as they were:
//!   the empty and hash-lookup programs, an established connection, a denied packet.
//! - single: one run per syscall, the median of many. A program that rewrites the packet (service
//!   DNAT) would otherwise see its own output on the next repetition, and a new connection is new
//!   only once; every single run here uses a fresh source port (a new flow) or a fresh copy of the
//!   packet (an established service connection).
//!
//! Events are rate-limited (1000/s per CPU) so the ring buffer does not fill during the runs.

#[path = "../tests/support/packet.rs"]
mod packet;

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{Context, Result, bail};
use aya::EbpfLoader;
use aya::maps::HashMap;
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use datapath::loader::BENCH_OBJECT;
use datapath::maps::endpoint::{EndpointInfo, EndpointKey};
use datapath::maps::ipcache::{IpcacheKey, RemoteEndpointInfo};
use datapath::maps::lb::{
    BackendId, Lb4Backend, Lb4Key, Lb4ReverseNat, Lb4Service, LbSelection, RevNatIndex,
};
use datapath::maps::policy::{L4Match, PolicyEntry, PolicyKey, PolicyPeer, TrafficDirection};
use datapath::{BpfObjects, EndpointId, LoadOptions};
use model::identity::NumericIdentity;
use packet::{ACK, SYN, TCP};

const REPEAT: u32 = 1_000_000;
const SINGLE_RUNS: u32 = 20_000;
const POD: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);
const ALLOWED: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 20);
const DENIED: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 30);

fn repeat_ns(program: &SchedClassifier, frame: &[u8]) -> Result<f64> {
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat: REPEAT,
            ..TestRunOptions::new()
        })
        .context("BPF_PROG_TEST_RUN")?;
    Ok(result.duration.as_nanos() as f64)
}

/// Median of single runs; `frame_for(i)` gives the i-th packet.
fn single_ns(program: &SchedClassifier, mut frame_for: impl FnMut(u32) -> Vec<u8>) -> Result<f64> {
    let mut samples = Vec::with_capacity(SINGLE_RUNS as usize);
    for i in 0..SINGLE_RUNS {
        let frame = frame_for(i);
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                repeat: 1,
                ..TestRunOptions::new()
            })
            .context("BPF_PROG_TEST_RUN")?;
        if result.return_value != 0 {
            bail!("single run {i} returned {}", result.return_value);
        }
        samples.push(result.duration.as_nanos() as u64);
    }
    samples.sort_unstable();
    Ok(samples[samples.len() / 2] as f64)
}

/// The datapath with one endpoint allowed to TCP/80 of ALLOWED and TCP/8080 of the service
/// backends (policy applies after DNAT), and `services` ClusterIPs.
fn datapath(services: u32) -> Result<BpfObjects> {
    let mut objs = BpfObjects::load(&LoadOptions {
        lb_map_max_entries: 2 * 65536,
        ..LoadOptions::default()
    })?;
    let maps = &mut objs.maps;
    let info = EndpointInfo::new(
        1,
        EndpointId::new(1),
        NumericIdentity::new(1000),
        packet::POD_MAC,
        [2; 6],
    );
    maps.endpoints.insert(EndpointKey::ipv4(POD), info, 0)?;
    let world: ipnet::Ipv4Net = "0.0.0.0/0".parse()?;
    maps.ipcache.insert(
        &IpcacheKey::ipv4(world),
        RemoteEndpointInfo::new(NumericIdentity::new(2), None),
        0,
    )?;
    for (net, id) in [
        ("10.0.2.0/24", 2000),
        ("10.0.3.0/24", 3000),
        ("10.0.1.10/32", 1000),
    ] {
        let net: ipnet::Ipv4Net = net.parse()?;
        maps.ipcache.insert(
            &IpcacheKey::ipv4(net),
            RemoteEndpointInfo::new(NumericIdentity::new(id), None),
            0,
        )?;
    }
    let mut policy = maps.policy.create(EndpointId::new(1))?;
    let peer = PolicyPeer::Identity(NumericIdentity::new(2000));
    for l4 in [L4Match::port(TCP, 80), L4Match::port(TCP, 8080)] {
        policy.insert(
            &PolicyKey::new(peer, TrafficDirection::Egress, l4),
            PolicyEntry::allow(l4),
            0,
        )?;
    }

    for backend in 0..16u32 {
        let addr = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 100 + backend as u8), 8080);
        maps.lb4_backends
            .insert(backend + 1, Lb4Backend::new(addr, TCP), 0)?;
    }
    for i in 0..services {
        let frontend = service_frontend(i);
        let rev = RevNatIndex::new((i % 65535) as u16 + 1);
        maps.lb4_services.insert(
            Lb4Key::master(frontend, TCP),
            Lb4Service::master(1, rev, LbSelection::Random),
            0,
        )?;
        let slot = Lb4Service::slot(BackendId::new(i % 16 + 1), rev);
        maps.lb4_services
            .insert(Lb4Key::slot(frontend, TCP, 1), slot, 0)?;
        maps.lb4_reverse_nat
            .insert(rev.to_key(), Lb4ReverseNat::new(frontend), 0)?;
    }
    Ok(objs)
}

fn service_frontend(i: u32) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i),
        80,
    )
}

struct Row {
    name: String,
    ns: f64,
    yardstick: f64,
    target: Option<f64>,
}

fn main() -> Result<()> {
    let mut rows = Vec::new();

    let mut bench = EbpfLoader::new()
        .load(BENCH_OBJECT)
        .context("load bench.o (root needed)")?;
    for name in ["bench_empty", "bench_hash_lookup"] {
        let program: &mut SchedClassifier = bench
            .program_mut(name)
            .context("bench program")?
            .try_into()?;
        program.load()?;
    }
    let yard_frame = packet::tcp(
        SocketAddrV4::new(POD, 40000),
        SocketAddrV4::new(ALLOWED, 80),
        ACK,
    );
    let mut hash: HashMap<_, u32, u64> =
        HashMap::try_from(bench.map_mut("bench_hash").context("bench_hash")?)?;
    hash.insert(1, 1, 0)?;
    let empty: &SchedClassifier = bench
        .program("bench_empty")
        .context("bench_empty")?
        .try_into()?;
    let lookup: &SchedClassifier = bench
        .program("bench_hash_lookup")
        .context("bench_hash_lookup")?
        .try_into()?;
    let yard_repeat = repeat_ns(lookup, &yard_frame)?;
    let yard_single = single_ns(lookup, |_| yard_frame.clone())?;
    rows.push(Row {
        name: "empty program (repeat)".into(),
        ns: repeat_ns(empty, &yard_frame)?,
        yardstick: yard_repeat,
        target: None,
    });
    rows.push(Row {
        name: "one hash lookup (repeat) = yardstick".into(),
        ns: yard_repeat,
        yardstick: yard_repeat,
        target: None,
    });
    rows.push(Row {
        name: "empty program (single)".into(),
        ns: single_ns(empty, |_| yard_frame.clone())?,
        yardstick: yard_single,
        target: None,
    });
    rows.push(Row {
        name: "one hash lookup (single) = yardstick".into(),
        ns: yard_single,
        yardstick: yard_single,
        target: None,
    });

    // Policy paths, no services.
    let objs = datapath(0)?;
    let from = objs.from_container()?;
    let new_flow = |i: u32| {
        packet::tcp(
            SocketAddrV4::new(POD, 1024 + (i % 60000) as u16),
            SocketAddrV4::new(ALLOWED, 80),
            SYN,
        )
    };
    rows.push(Row {
        name: "allow, new flow: ipcache + policy + CT create (single)".into(),
        ns: single_ns(from, new_flow)?,
        yardstick: yard_single,
        target: Some(5.0),
    });
    let established = packet::tcp(
        SocketAddrV4::new(POD, 1024),
        SocketAddrV4::new(ALLOWED, 80),
        ACK,
    );
    rows.push(Row {
        name: "established CT, egress (repeat)".into(),
        ns: repeat_ns(from, &established)?,
        yardstick: yard_repeat,
        target: Some(2.0),
    });
    rows.push(Row {
        name: "established CT, egress (single)".into(),
        ns: single_ns(from, |_| established.clone())?,
        yardstick: yard_single,
        target: Some(2.0),
    });
    let denied = packet::tcp(
        SocketAddrV4::new(POD, 40000),
        SocketAddrV4::new(DENIED, 80),
        SYN,
    );
    let result = from.test_run(TestRunOptions {
        data_in: Some(&denied),
        ..TestRunOptions::new()
    })?;
    if result.return_value != 2 {
        bail!("the deny case was not dropped");
    }
    rows.push(Row {
        name: "deny: ipcache + policy + drop (repeat)".into(),
        ns: repeat_ns(from, &denied)?,
        yardstick: yard_repeat,
        target: None,
    });
    drop(objs);

    let mut service_rows = Vec::new();
    for services in [10u32, 1000, 65536] {
        let objs = datapath(services)?;
        let from = objs.from_container()?;
        let frontend = service_frontend(services / 2);
        let new_ns = single_ns(from, |i| {
            packet::tcp(
                SocketAddrV4::new(POD, 1024 + (i % 60000) as u16),
                frontend,
                SYN,
            )
        })?;
        let est_frame = packet::tcp(SocketAddrV4::new(POD, 999), frontend, ACK);
        let est_ns = single_ns(from, |_| est_frame.clone())?;
        rows.push(Row {
            name: format!("service DNAT, {services} services, new flow (single)"),
            ns: new_ns,
            yardstick: yard_single,
            target: Some(5.0),
        });
        rows.push(Row {
            name: format!("service DNAT, {services} services, established (single)"),
            ns: est_ns,
            yardstick: yard_single,
            target: Some(2.0),
        });
        service_rows.push((services, new_ns, est_ns));
    }

    println!(
        "{:<62} {:>9} {:>8} {:>8}",
        "case", "ns/pkt", "ratio", "target"
    );
    for row in &rows {
        let ratio = row.ns / row.yardstick;
        let target = row.target.map_or(String::new(), |t| {
            format!("<= {t:.0}x {}", if ratio <= t { "ok" } else { "MISSED" })
        });
        println!(
            "{:<62} {:>9.1} {:>7.2}x {:>8}",
            row.name, row.ns, ratio, target
        );
    }
    if let (Some(first), Some(last)) = (service_rows.first(), service_rows.last()) {
        for (label, a, b) in [
            ("new flow", first.1, last.1),
            ("established", first.2, last.2),
        ] {
            let change = (b - a) / a * 100.0;
            let verdict = if change.abs() <= 10.0 { "ok" } else { "MISSED" };
            println!(
                "service lookup flatness ({label}), {} -> {} services: {change:+.1}% (target within 10%: {verdict})",
                first.0, last.0
            );
        }
    }
    Ok(())
}
