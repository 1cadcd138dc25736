//! Pinning under `<bpf-root>/tc/globals/`: a second load adopts the first one's maps and
//! per-endpoint policy maps, and an incompatible pin is replaced. Uses a private bpffs mount.

mod support;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;

use datapath::maps::names;
use datapath::maps::policy::{L4Match, PolicyEntry, PolicyKey, TrafficDirection::*};
use datapath::{EndpointId, LoadOptions};
use support::packet::{self, SYN, TCP};
use support::{Fixture, TC_ACT_OK, identity, policy};

/// A bpffs mounted on a temp dir, unmounted on drop.
struct BpfFs {
    dir: tempfile::TempDir,
}

impl BpfFs {
    fn mount() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let status = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount bpffs at {}", dir.path().display());
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn options(root: &Path) -> LoadOptions {
    LoadOptions {
        bpf_root: Some(root.to_path_buf()),
        events_rate_per_sec: 0,
        ..LoadOptions::default()
    }
}

const POD: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);

#[test]
fn privileged_second_load_adopts_pinned_maps() {
    let fs = BpfFs::mount();
    let globals: PathBuf = fs.path().join("tc/globals");
    {
        let mut fx = Fixture::with_options(options(fs.path()));
        let mut map = fx.add_endpoint(POD, 5, 1000);
        fx.add_ipcache("10.0.2.0/24".parse().unwrap(), 2000);
        policy(
            &mut map,
            identity(2000),
            Egress,
            L4Match::port(TCP, 80),
            false,
        );
        let run = fx.run_from_container(&packet::tcp(
            SocketAddrV4::new(POD, 40000),
            "10.0.2.2:80".parse().unwrap(),
            SYN,
        ));
        assert_eq!(run.verdict, TC_ACT_OK);
    }
    for name in [
        names::ENDPOINTS,
        names::IPCACHE,
        names::CT4,
        names::POLICY,
        "cilium_policy_v2_00005",
    ] {
        assert!(globals.join(name).exists(), "{name} is pinned");
    }

    // A new agent: same maps, same policy, and the connection is still established.
    let mut fx = Fixture::with_options(options(fs.path()));
    let map = fx
        .objs
        .maps
        .policy
        .get(EndpointId::new(5))
        .unwrap()
        .expect("policy map installed");
    let key = PolicyKey::new(identity(2000), Egress, L4Match::port(TCP, 80));
    assert_eq!(
        map.get(&key, 0).unwrap(),
        PolicyEntry::allow(L4Match::port(TCP, 80))
    );
    let adopted = fx.objs.maps.policy.create(EndpointId::new(5)).unwrap();
    assert_eq!(
        adopted.get(&key, 0).unwrap(),
        PolicyEntry::allow(L4Match::port(TCP, 80))
    );
    assert_eq!(fx.objs.maps.ct4.keys().count(), 1);
    // The ring buffer is pinned too: the first agent's unread events are still there.
    let unread: Vec<u8> = fx.events().iter().map(|e| e.r#type).collect();
    assert_eq!(unread, vec![5, 4], "the first load's verdict and trace");
    let run = fx.run_from_container(&packet::tcp(
        SocketAddrV4::new(POD, 40000),
        "10.0.2.2:80".parse().unwrap(),
        SYN,
    ));
    assert_eq!(run.verdict, TC_ACT_OK);
    assert!(
        fx.events().is_empty(),
        "established within the report interval: no events"
    );

    fx.objs.maps.policy.remove(EndpointId::new(5)).unwrap();
    assert!(!globals.join("cilium_policy_v2_00005").exists());
}

#[test]
fn privileged_incompatible_pin_is_replaced() {
    let fs = BpfFs::mount();
    let globals = fs.path().join("tc/globals");
    std::fs::create_dir_all(&globals).unwrap();
    // A stale cilium_lxc with another value size, as an older layout would have.
    let stale = aya::maps::HashMap::<_, u32, u32>::create(16, 0).unwrap();
    stale.pin(globals.join(names::ENDPOINTS)).unwrap();

    let mut fx = Fixture::with_options(options(fs.path()));
    fx.add_endpoint(POD, 5, 1000);
    let info = aya::maps::MapInfo::from_pin(globals.join(names::ENDPOINTS)).unwrap();
    assert_eq!(info.value_size(), 48);
    assert_eq!(fx.objs.maps.endpoints.keys().count(), 1);
}
