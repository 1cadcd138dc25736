//! ns/packet of the datapath programs through BPF_PROG_TEST_RUN, as ratios to a program doing
//! one hash lookup (DESIGN.md 6). Run as root: `cargo bench -p datapath --bench bpf_prog_run`.
//!
//! Three ways of measuring, each compared with the yardstick measured the same way:
//! - repeat: one syscall runs the program 1,000,000 times on the same skb and the kernel reports
//!   the mean (median of several such calls). Only valid when the program leaves the packet and
//!   the flow state as they were: an established connection, a denied packet.
//! - replay: repeat mode through `bench_replay` (bpf/bench.c), which writes the headers back from
//!   a template before tail-calling the measured program, with a fresh source port per repetition
//!   for new flows. This is how new flows and service DNAT (which rewrites the packet) are
//!   measured warm. The replay's own cost (replaying into the empty program, minus the empty
//!   program) is subtracted, so the rows compare with the plain repeat yardstick; the yardstick
//!   replayed the same way is printed as a check of that subtraction.
//! - single: one run per syscall, the median of many, alternating with single runs of the
//!   yardstick so both see the same machine state. Cold caches and the timer's granularity
//!   dominate here; it is the pessimistic view.
//!
//! The "floor" rows measure, the same ways, what any new flow costs in a conntrack table of the
//! default size before any policy: `bench_ct_lookup` (a lookup that misses) and `bench_ct_create`
//! (the miss plus the insert) on `bench_ct`, a map of `cilium_ct4_global`'s type, key and value
//! sizes and default max_entries. A new flow's ratio cannot go below the insert's; the difference
//! between the two rows is what the programs add (parsing, endpoint, service, ipcache and policy
//! lookups, events).
//!
//! Events are rate-limited (1000/s per CPU) so the ring buffer does not fill during the runs, and
//! the monitor aggregation is the default (medium): established packets are not traced.
//!
//! Arguments that do not start with `-` select sections by substring (`established`, `new-flow`,
//! `deny`, `service`); the yardsticks always run. Without any, everything runs.

#[path = "../tests/support/packet.rs"]
mod packet;

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{Context, Result, bail};
use aya::maps::{Array, HashMap, MapData, ProgramArray};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use aya::{Ebpf, EbpfLoader};
use datapath::loader::{BENCH_OBJECT, DEFAULT_CT_TCP_MAX_ENTRIES};
use datapath::maps::ct::{CtEntry, CtTuple4};
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
/// Repeat-mode calls per measurement; the median is reported.
const REPEAT_CALLS: usize = 5;
/// Repetitions of a new-flow replay: every one must be a new connection, so fewer than
/// `REPLAY_FLOWS` and far below the conntrack map's size.
const REPLAY_NEW_REPEAT: u32 = 50_000;
const REPLAY_FLOWS: u16 = 60_000;
const FIRST_PORT: u16 = 1024;
/// Source port of the established connections: an ephemeral port, as clients use.
const CLIENT_PORT: u16 = 40_000;
/// A conntrack table small enough for the caches, to show what the default size costs.
const SMALL_CT_ENTRIES: u32 = 16_384;
const SINGLE_RUNS: u32 = 20_000;
/// Frames are padded to the Ethernet minimum so the replay template (56 bytes) fits.
const FRAME_LEN: usize = 60;
const TEMPLATE_LEN: usize = 56;
const POD: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);
const ALLOWED: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 20);
const DENIED: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 30);
const EP_IFINDEX: u32 = 1;

/// `struct bench_template` of bpf/bench.c.
#[repr(C)]
#[derive(Clone, Copy)]
struct BenchTemplate {
    hdr: [u8; TEMPLATE_LEN],
    first_port: u16,
    flows: u16,
    next: u32,
}

// SAFETY: repr(C), 56 + 2 + 2 + 4 bytes, no padding, any bit pattern valid.
unsafe impl aya::Pod for BenchTemplate {}

const _: () = assert!(size_of::<BenchTemplate>() == 64);

fn tcp_frame(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> Vec<u8> {
    let mut frame = packet::tcp(src, dst, flags);
    frame.resize(frame.len().max(FRAME_LEN), 0);
    frame
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn run_once(program: &SchedClassifier, frame: &[u8], repeat: u32) -> Result<(u32, f64)> {
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::new()
        })
        .context("BPF_PROG_TEST_RUN")?;
    Ok((result.return_value, result.duration.as_nanos() as f64))
}

/// Median over `REPEAT_CALLS` calls of the kernel's mean over `REPEAT` runs.
fn repeat_ns(program: &SchedClassifier, frame: &[u8]) -> Result<f64> {
    let mut samples = Vec::with_capacity(REPEAT_CALLS);
    for _ in 0..REPEAT_CALLS {
        samples.push(run_once(program, frame, REPEAT)?.1);
    }
    Ok(median(samples))
}

/// Medians of single runs of `program` (the i-th on `frame_for(i)`) and of the yardstick,
/// alternating. Every run of `program` must return `expect`.
fn single_pair_ns(
    program: &SchedClassifier,
    yardstick: &SchedClassifier,
    yard_frame: &[u8],
    expect: u32,
    mut frame_for: impl FnMut(u32) -> Vec<u8>,
) -> Result<(f64, f64)> {
    let mut case = Vec::with_capacity(SINGLE_RUNS as usize);
    let mut yard = Vec::with_capacity(SINGLE_RUNS as usize);
    for i in 0..SINGLE_RUNS {
        yard.push(run_once(yardstick, yard_frame, 1)?.1);
        let (ret, ns) = run_once(program, &frame_for(i), 1)?;
        if ret != expect {
            bail!("single run {i} returned {ret}, expected {expect}");
        }
        case.push(ns);
    }
    Ok((median(case), median(yard)))
}

/// The benchmark's own programs (yardsticks, conntrack floor and replayer) and their maps.
struct Bench {
    ebpf: Ebpf,
    templates: Array<MapData, BenchTemplate>,
    targets: ProgramArray<MapData>,
    /// `bench_ct`: a conntrack table of the default size, for the floor of a new flow.
    ct: HashMap<MapData, CtTuple4, CtEntry>,
}

fn program<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a SchedClassifier> {
    Ok(ebpf.program(name).context("bench program")?.try_into()?)
}

impl Bench {
    fn load() -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("bench_ct", DEFAULT_CT_TCP_MAX_ENTRIES)
            .load(BENCH_OBJECT)
            .context("load bench.o (root needed)")?;
        for name in [
            "bench_empty",
            "bench_hash_lookup",
            "bench_replay",
            "bench_ct_lookup",
            "bench_ct_create",
        ] {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .context("bench program")?
                .try_into()?;
            program.load()?;
        }
        let mut hash: HashMap<_, u32, u64> =
            HashMap::try_from(ebpf.map_mut("bench_hash").context("bench_hash")?)?;
        hash.insert(1, 1, 0)?;
        let templates = Array::try_from(ebpf.take_map("bench_template").context("template")?)?;
        let targets = ProgramArray::try_from(ebpf.take_map("bench_target").context("target")?)?;
        let ct = HashMap::try_from(ebpf.take_map("bench_ct").context("bench_ct")?)?;
        Ok(Self {
            ebpf,
            templates,
            targets,
            ct,
        })
    }

    fn program(&self, name: &str) -> Result<&SchedClassifier> {
        program(&self.ebpf, name)
    }

    /// Points the replayer at `target` with `frame`'s headers; `flows` > 0 gives repetition i
    /// the source port FIRST_PORT + i % flows.
    fn set_replay(&mut self, target: &SchedClassifier, frame: &[u8], flows: u16) -> Result<()> {
        let mut hdr = [0u8; TEMPLATE_LEN];
        hdr.copy_from_slice(frame.get(..TEMPLATE_LEN).context("frame too short")?);
        self.templates.set(
            0,
            BenchTemplate {
                hdr,
                first_port: FIRST_PORT,
                flows,
                next: 0,
            },
            0,
        )?;
        self.targets.set(0, target.fd()?, 0)?;
        Ok(())
    }

    /// Replays `frame` into the target set by `set_replay`, `repeat` times per call; the median
    /// over calls of the kernel's mean. `before_call` runs before each call (clearing conntrack
    /// for new flows).
    fn replay_ns(
        &self,
        frame: &[u8],
        repeat: u32,
        mut before_call: impl FnMut() -> Result<()>,
    ) -> Result<f64> {
        let mut samples = Vec::with_capacity(REPEAT_CALLS);
        for _ in 0..REPEAT_CALLS {
            before_call()?;
            let (ret, ns) = run_once(self.program("bench_replay")?, frame, repeat)?;
            if ret != 0 {
                bail!("replay returned {ret}");
            }
            samples.push(ns);
        }
        Ok(median(samples))
    }

    /// New flows replayed into one of the benchmark's conntrack programs, emptying `bench_ct`
    /// before each call as the datapath rows empty the conntrack table.
    fn replay_ct_ns(&mut self, name: &str, frame: &[u8]) -> Result<f64> {
        let mut hdr = [0u8; TEMPLATE_LEN];
        hdr.copy_from_slice(frame.get(..TEMPLATE_LEN).context("frame too short")?);
        self.templates.set(
            0,
            BenchTemplate {
                hdr,
                first_port: FIRST_PORT,
                flows: REPLAY_FLOWS,
                next: 0,
            },
            0,
        )?;
        self.targets.set(0, program(&self.ebpf, name)?.fd()?, 0)?;
        let mut samples = Vec::with_capacity(REPEAT_CALLS);
        for _ in 0..REPEAT_CALLS {
            self.clear_ct()?;
            let (ret, ns) = run_once(self.program("bench_replay")?, frame, REPLAY_NEW_REPEAT)?;
            if ret != 0 {
                bail!("replay into {name} returned {ret}");
            }
            samples.push(ns);
        }
        Ok(median(samples))
    }

    /// Empties `bench_ct`.
    fn clear_ct(&mut self) -> Result<()> {
        let keys: Vec<_> = self.ct.keys().collect::<Result<_, _>>()?;
        for key in keys {
            self.ct.remove(&key)?;
        }
        Ok(())
    }

    /// Replays into one of the benchmark's own programs.
    fn replay_own_ns(&mut self, name: &str, frame: &[u8]) -> Result<f64> {
        let target = program(&self.ebpf, name)?;
        self.templates.set(
            0,
            BenchTemplate {
                hdr: frame
                    .get(..TEMPLATE_LEN)
                    .context("frame too short")?
                    .try_into()?,
                first_port: FIRST_PORT,
                flows: 0,
                next: 0,
            },
            0,
        )?;
        self.targets.set(0, target.fd()?, 0)?;
        self.replay_ns(frame, REPEAT, || Ok(()))
    }
}

/// Removes every conntrack entry, so the next packets are new flows again.
fn clear_conntrack(objs: &mut BpfObjects) -> Result<()> {
    let keys: Vec<_> = objs.maps.ct4.keys().collect::<Result<_, _>>()?;
    for key in keys {
        objs.maps.ct4.remove(&key)?;
    }
    Ok(())
}

/// The datapath (upstream's default map sizes) with one endpoint allowed to TCP/80 of ALLOWED and TCP/8080 of the service
/// backends (policy applies after DNAT), and `services` ClusterIPs.
fn datapath(services: u32) -> Result<BpfObjects> {
    datapath_with(services, LoadOptions::default().ct_tcp_max_entries)
}

/// As `datapath`, with a TCP conntrack table of `ct_entries`.
fn datapath_with(services: u32, ct_entries: u32) -> Result<BpfObjects> {
    let mut objs = BpfObjects::load(&LoadOptions {
        lb_map_max_entries: 2 * 65536,
        ct_tcp_max_entries: ct_entries,
        ..LoadOptions::default()
    })?;
    let maps = &mut objs.maps;
    let info = EndpointInfo::new(
        EP_IFINDEX,
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

#[derive(Clone, Copy)]
enum Target {
    /// Within this many times the yardstick.
    Ratio(f64),
    /// Reported for information (service rows: their target is flatness).
    None,
}

struct Row {
    name: String,
    ns: f64,
    yardstick: f64,
    target: Target,
}

/// Replays must be corrected by the replayer's own cost.
struct Replay {
    overhead: f64,
}

impl Replay {
    fn net(&self, ns: f64) -> f64 {
        ns - self.overhead
    }
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; everything else not starting with `-` is a section filter.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    let wanted = |section: &str| filters.is_empty() || filters.iter().any(|f| section.contains(f));
    let mut rows = Vec::new();
    let mut bench = Bench::load()?;

    let yard_frame = tcp_frame(
        SocketAddrV4::new(POD, CLIENT_PORT),
        SocketAddrV4::new(ALLOWED, 80),
        ACK,
    );
    let empty_ns = repeat_ns(bench.program("bench_empty")?, &yard_frame)?;
    let yard_repeat = repeat_ns(bench.program("bench_hash_lookup")?, &yard_frame)?;
    // The replayer's cost: replaying into the empty program, beyond the empty program itself.
    let replay_empty = bench.replay_own_ns("bench_empty", &yard_frame)?;
    let replay = Replay {
        overhead: replay_empty - empty_ns,
    };
    let replay_yard = replay.net(bench.replay_own_ns("bench_hash_lookup", &yard_frame)?);

    rows.push(Row {
        name: "empty program (repeat)".into(),
        ns: empty_ns,
        yardstick: yard_repeat,
        target: Target::None,
    });
    rows.push(Row {
        name: "one hash lookup (repeat) = yardstick".into(),
        ns: yard_repeat,
        yardstick: yard_repeat,
        target: Target::None,
    });
    rows.push(Row {
        name: "one hash lookup (replay, check of the subtraction)".into(),
        ns: replay_yard,
        yardstick: yard_repeat,
        target: Target::None,
    });

    // Policy paths, no services.
    let mut objs = datapath(0)?;
    let established = tcp_frame(
        SocketAddrV4::new(POD, CLIENT_PORT),
        SocketAddrV4::new(ALLOWED, 80),
        ACK,
    );
    let reply = tcp_frame(
        SocketAddrV4::new(ALLOWED, 80),
        SocketAddrV4::new(POD, CLIENT_PORT),
        ACK,
    );
    let new_flow = |i: u32| {
        tcp_frame(
            SocketAddrV4::new(POD, FIRST_PORT + (i % u32::from(REPLAY_FLOWS)) as u16),
            SocketAddrV4::new(ALLOWED, 80),
            SYN,
        )
    };
    if wanted("established") {
        let from = objs.from_container()?;
        let to = objs.to_container()?;
        if run_once(from, &established, 1)?.0 != 0 || run_once(to, &reply, 1)?.0 != 0 {
            bail!("the established connection was not allowed");
        }
        rows.push(Row {
            name: "established CT, egress (repeat)".into(),
            ns: repeat_ns(from, &established)?,
            yardstick: yard_repeat,
            target: Target::Ratio(2.0),
        });
        rows.push(Row {
            name: "established CT, ingress reply (repeat)".into(),
            ns: repeat_ns(to, &reply)?,
            yardstick: yard_repeat,
            target: Target::Ratio(2.0),
        });
        let (ns, yard) = single_pair_ns(
            from,
            bench.program("bench_hash_lookup")?,
            &yard_frame,
            0,
            |_| established.clone(),
        )?;
        rows.push(Row {
            name: "established CT, egress (single)".into(),
            ns,
            yardstick: yard,
            target: Target::Ratio(2.0),
        });
    }

    if wanted("new-flow") {
        bench.set_replay(objs.from_container()?, &new_flow(0), REPLAY_FLOWS)?;
        let new_replay = bench.replay_ns(&new_flow(0), REPLAY_NEW_REPEAT, || {
            clear_conntrack(&mut objs)
        })?;
        rows.push(Row {
            name: "allow, new flow: ipcache + policy + CT create (replay)".into(),
            ns: replay.net(new_replay),
            yardstick: yard_repeat,
            target: Target::Ratio(5.0),
        });
        clear_conntrack(&mut objs)?;
        // The floor under that row: a lookup that misses and an insert in a table of the same
        // type and size, with no parsing, policy or events around them.
        let floor_lookup = replay.net(bench.replay_ct_ns("bench_ct_lookup", &new_flow(0))?);
        let floor_create = replay.net(bench.replay_ct_ns("bench_ct_create", &new_flow(0))?);
        rows.push(Row {
            name: "floor: CT lookup miss only, default-size table (replay)".into(),
            ns: floor_lookup,
            yardstick: yard_repeat,
            target: Target::None,
        });
        rows.push(Row {
            name: "floor: CT lookup miss + insert, default-size table (replay)".into(),
            ns: floor_create,
            yardstick: yard_repeat,
            target: Target::None,
        });
        {
            // The same with a table that fits the caches: most of a new flow's cost in the default
            // table is cache and TLB misses on its 8 MiB of buckets and 60 MiB of entries.
            let mut small = datapath_with(0, SMALL_CT_ENTRIES)?;
            bench.set_replay(small.from_container()?, &new_flow(0), REPLAY_FLOWS)?;
            let small_ns = bench.replay_ns(&new_flow(0), SMALL_CT_ENTRIES / 2, || {
                clear_conntrack(&mut small)
            })?;
            rows.push(Row {
                name: format!("allow, new flow (replay), {SMALL_CT_ENTRIES}-entry CT table"),
                ns: replay.net(small_ns),
                yardstick: yard_repeat,
                target: Target::None,
            });
        }
        {
            let from = objs.from_container()?;
            let (ns, yard) = single_pair_ns(
                from,
                bench.program("bench_hash_lookup")?,
                &yard_frame,
                0,
                new_flow,
            )?;
            rows.push(Row {
                name: "allow, new flow: ipcache + policy + CT create (single)".into(),
                ns,
                yardstick: yard,
                target: Target::Ratio(5.0),
            });
            bench.clear_ct()?;
            let (ns, yard) = single_pair_ns(
                bench.program("bench_ct_create")?,
                bench.program("bench_hash_lookup")?,
                &yard_frame,
                0,
                new_flow,
            )?;
            rows.push(Row {
                name: "floor: CT lookup miss + insert, default-size table (single)".into(),
                ns,
                yardstick: yard,
                target: Target::None,
            });
        }
    }
    if wanted("deny") {
        let from = objs.from_container()?;
        let denied = tcp_frame(
            SocketAddrV4::new(POD, 40000),
            SocketAddrV4::new(DENIED, 80),
            SYN,
        );
        if run_once(from, &denied, 1)?.0 != 2 {
            bail!("the deny case was not dropped");
        }
        rows.push(Row {
            name: "deny: ipcache + policy + drop (repeat)".into(),
            ns: repeat_ns(from, &denied)?,
            yardstick: yard_repeat,
            target: Target::None,
        });
    }
    drop(objs);

    let mut service_rows = Vec::new();
    let service_counts: &[u32] = if wanted("service") {
        &[10, 1000, 65536]
    } else {
        &[]
    };
    for &services in service_counts {
        let mut objs = datapath(services)?;
        let frontend = service_frontend(services / 2);
        let new_frame = tcp_frame(SocketAddrV4::new(POD, FIRST_PORT), frontend, SYN);
        let est_frame = tcp_frame(SocketAddrV4::new(POD, CLIENT_PORT), frontend, ACK);
        bench.set_replay(objs.from_container()?, &new_frame, REPLAY_FLOWS)?;
        let new_ns = replay
            .net(bench.replay_ns(&new_frame, REPLAY_NEW_REPEAT, || clear_conntrack(&mut objs))?);
        let from = objs.from_container()?;
        if run_once(from, &est_frame, 1)?.0 != 0 {
            bail!("the service connection was not allowed");
        }
        bench.set_replay(from, &est_frame, 0)?;
        let est_ns = replay.net(bench.replay_ns(&est_frame, REPEAT, || Ok(()))?);
        clear_conntrack(&mut objs)?;
        let from = objs.from_container()?;
        let (new_single, new_yard) = single_pair_ns(
            from,
            bench.program("bench_hash_lookup")?,
            &yard_frame,
            0,
            |i| {
                tcp_frame(
                    SocketAddrV4::new(POD, FIRST_PORT + (i % u32::from(REPLAY_FLOWS)) as u16),
                    frontend,
                    SYN,
                )
            },
        )?;
        run_once(from, &est_frame, 1)?;
        let (est_single, est_yard) = single_pair_ns(
            from,
            bench.program("bench_hash_lookup")?,
            &yard_frame,
            0,
            |_| est_frame.clone(),
        )?;
        for (kind, ns, yard) in [
            ("new flow (replay)", new_ns, yard_repeat),
            ("established (replay)", est_ns, yard_repeat),
            ("new flow (single)", new_single, new_yard),
            ("established (single)", est_single, est_yard),
        ] {
            rows.push(Row {
                name: format!("service DNAT, {services} services, {kind}"),
                ns,
                yardstick: yard,
                target: Target::None,
            });
        }
        service_rows.push((services, [new_ns, est_ns, new_single, est_single]));
    }

    println!("{:<62} {:>9} {:>8}  target", "case", "ns/pkt", "ratio");
    for row in &rows {
        let ratio = row.ns / row.yardstick;
        let target = match row.target {
            Target::Ratio(t) => format!("<= {t:.0}x {}", if ratio <= t { "ok" } else { "MISSED" }),
            Target::None => String::new(),
        };
        println!("{:<62} {:>9.1} {:>7.2}x  {target}", row.name, row.ns, ratio);
    }
    println!(
        "replay overhead subtracted: {:.1} ns (replay into the empty program {replay_empty:.1} ns, empty {empty_ns:.1} ns)",
        replay.overhead
    );
    if let (Some(first), Some(last)) = (service_rows.first(), service_rows.last()) {
        let labels = [
            "new flow, replay",
            "established, replay",
            "new flow, single",
            "established, single",
        ];
        for (i, label) in labels.iter().enumerate() {
            let (a, b) = (first.1[i], last.1[i]);
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
