//! Shared fixture of the BPF_PROG_TEST_RUN tests: a private load of the programs (no pinning,
//! so tests run in parallel), endpoint/ipcache/policy setup and program runs.

#![allow(dead_code)]

pub mod packet;

use std::net::Ipv4Addr;

use aya::programs::{TestRun, TestRunOptions};
use datapath::maps::endpoint::{EndpointInfo, EndpointKey};
use datapath::maps::events::EventRecord;
use datapath::maps::ipcache::{IpcacheKey, RemoteEndpointInfo};
use datapath::maps::policy::{L4Match, PolicyEntry, PolicyKey, PolicyPeer, TrafficDirection};
use datapath::{BpfObjects, EndpointId, LoadOptions, PolicyMap};
use ipnet::Ipv4Net;
use model::identity::NumericIdentity;

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// BPF_PROG_TEST_RUN runs on the loopback device, so that is the endpoints' "veth".
pub const TEST_IFINDEX: u32 = 1;
pub const NODE_MAC: [u8; 6] = [0x0a, 0x58, 0x00, 0x00, 0x00, 0x01];

pub struct Fixture {
    pub objs: BpfObjects,
}

/// What a program run returned.
pub struct Run {
    pub verdict: u32,
    pub packet: Vec<u8>,
}

impl Fixture {
    /// Programs with an unlimited event rate, so every event can be asserted.
    pub fn new() -> Self {
        Self::with_options(LoadOptions {
            events_rate_per_sec: 0,
            ..LoadOptions::default()
        })
    }

    pub fn with_options(options: LoadOptions) -> Self {
        let objs = BpfObjects::load(&options).expect("load datapath programs");
        Self { objs }
    }

    /// A local endpoint behind the test interface, with an empty policy map.
    pub fn add_endpoint(&mut self, ip: Ipv4Addr, id: u16, identity: u32) -> PolicyMap {
        let info = EndpointInfo::new(
            TEST_IFINDEX,
            EndpointId::new(id),
            NumericIdentity::new(identity),
            packet::POD_MAC,
            NODE_MAC,
        );
        self.objs
            .maps
            .endpoints
            .insert(EndpointKey::ipv4(ip), info, 0)
            .expect("insert endpoint");
        self.add_ipcache(Ipv4Net::new(ip, 32).expect("/32"), identity);
        self.objs
            .maps
            .policy
            .create(EndpointId::new(id))
            .expect("create policy map")
    }

    pub fn add_ipcache(&mut self, net: Ipv4Net, identity: u32) {
        self.objs
            .maps
            .ipcache
            .insert(
                &IpcacheKey::ipv4(net),
                RemoteEndpointInfo::new(NumericIdentity::new(identity), None),
                0,
            )
            .expect("insert ipcache");
    }

    pub fn run_from_container(&self, frame: &[u8]) -> Run {
        run(self.objs.from_container().expect("program"), frame)
    }

    pub fn run_to_container(&self, frame: &[u8]) -> Run {
        run(self.objs.to_container().expect("program"), frame)
    }

    /// Drains the ring buffer.
    pub fn events(&mut self) -> Vec<EventRecord> {
        let mut out = Vec::new();
        while let Some(item) = self.objs.maps.events.next() {
            out.push(EventRecord::from_bytes(&item).expect("event record"));
        }
        out
    }
}

fn run(program: &aya::programs::SchedClassifier, frame: &[u8]) -> Run {
    let mut out = vec![0u8; frame.len() + 256];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::new()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(result.data_size_out as usize);
    Run {
        verdict: result.return_value,
        packet: out,
    }
}

/// Installs an allow (or deny) entry in an endpoint's policy map.
pub fn policy(
    map: &mut PolicyMap,
    peer: PolicyPeer,
    dir: TrafficDirection,
    l4: L4Match,
    deny: bool,
) {
    let entry = if deny {
        PolicyEntry::deny(l4)
    } else {
        PolicyEntry::allow(l4)
    };
    map.insert(&PolicyKey::new(peer, dir, l4), entry, 0)
        .expect("insert policy entry");
}

pub fn identity(id: u32) -> PolicyPeer {
    PolicyPeer::Identity(NumericIdentity::new(id))
}
