//! IPAM actor tests: exhaustion, no double allocation under random allocate/release sequences,
//! restore after a restart from the state file, and refusal of a corrupt state file.

use actors::persist::SnapshotStore;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use actix::Actor;
use actors::ipam::{
    AllocateIp, Dump, FileIpamStore, IpamActor, IpamError, IpamState, IpamStoreError,
    MemoryIpamStore, ReleaseIp, ReservedAddress,
};
use ipnet::Ipv4Net;
use proptest::prelude::*;

fn range(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn alloc(owner: &str) -> AllocateIp {
    AllocateIp {
        owner: owner.to_owned(),
        ip: None,
    }
}

#[actix::test]
async fn a_29_range_hands_out_five_addresses_then_reports_exhaustion() {
    let addr = IpamActor::new(range("10.1.0.0/29"), Box::new(MemoryIpamStore::new()))
        .unwrap()
        .start();
    let mut got = Vec::new();
    for n in 0..5 {
        got.push(
            addr.send(alloc(&format!("pod-{n}")))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(
        got,
        ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"].map(ip)
    );
    match addr.send(alloc("one-too-many")).await.unwrap() {
        Err(IpamError::Exhausted { range: r, capacity }) => {
            assert_eq!((r, capacity), (range("10.1.0.0/29"), 5));
        }
        other => panic!("expected exhaustion, got {other:?}"),
    }
    // A release makes room again.
    addr.send(ReleaseIp { ip: ip("10.1.0.4") })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        addr.send(alloc("late")).await.unwrap().unwrap(),
        ip("10.1.0.4")
    );
    let dump = addr.send(Dump).await.unwrap();
    assert_eq!(dump.router, ip("10.1.0.1"));
    assert_eq!(dump.allocations.len(), 5);
    assert_eq!(dump.allocations[&ip("10.1.0.4")], "late");
}

#[actix::test]
async fn the_router_address_is_never_handed_out_or_released() {
    let addr = IpamActor::new(range("10.1.0.0/24"), Box::new(MemoryIpamStore::new()))
        .unwrap()
        .start();
    let asked = AllocateIp {
        owner: "pod".to_owned(),
        ip: Some(ip("10.1.0.1")),
    };
    assert!(matches!(
        addr.send(asked).await.unwrap(),
        Err(IpamError::Reserved {
            reserved: ReservedAddress::Router,
            ..
        })
    ));
    assert!(matches!(
        addr.send(ReleaseIp { ip: ip("10.1.0.1") }).await.unwrap(),
        Err(IpamError::Reserved { .. })
    ));
}

#[actix::test]
async fn allocations_survive_a_restart_through_the_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let cidr = range("10.2.0.0/24");
    let first = IpamActor::new(cidr, Box::new(FileIpamStore::in_state_dir(dir.path())))
        .unwrap()
        .start();
    let a = first.send(alloc("default/a")).await.unwrap().unwrap();
    let b = first
        .send(AllocateIp {
            owner: "default/b".to_owned(),
            ip: Some(ip("10.2.0.200")),
        })
        .await
        .unwrap()
        .unwrap();
    let c = first.send(alloc("default/c")).await.unwrap().unwrap();
    first.send(ReleaseIp { ip: c }).await.unwrap().unwrap();
    let before = first.send(Dump).await.unwrap();
    drop(first);

    let second = IpamActor::new(cidr, Box::new(FileIpamStore::in_state_dir(dir.path())))
        .unwrap()
        .start();
    let after = second.send(Dump).await.unwrap();
    assert_eq!(after, before);
    assert_eq!(
        after.allocations,
        BTreeMap::from([(a, "default/a".to_owned()), (b, "default/b".to_owned())])
    );
    // The restored addresses are taken; the same owner may claim its own again.
    assert!(matches!(
        second
            .send(AllocateIp {
                owner: "default/x".to_owned(),
                ip: Some(b)
            })
            .await
            .unwrap(),
        Err(IpamError::AlreadyAllocated { .. })
    ));
    assert_eq!(
        second
            .send(AllocateIp {
                owner: "default/b".to_owned(),
                ip: Some(b)
            })
            .await
            .unwrap()
            .unwrap(),
        b
    );
    for n in 0..10 {
        let fresh = second.send(alloc(&format!("n{n}"))).await.unwrap().unwrap();
        assert!(fresh != a && fresh != b);
    }
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["ipam-host-scope.json"]);
}

#[test]
fn a_corrupt_state_file_is_an_error_not_a_reset() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileIpamStore::in_state_dir(dir.path());
    std::fs::write(
        store.path(),
        b"{\"version\":1,\"range\":\"10.0.0.0/24\",\"allocati",
    )
    .unwrap();
    match IpamActor::new(range("10.0.0.0/24"), Box::new(store.clone())) {
        Err(IpamError::Store(IpamStoreError::Corrupt { path, .. })) => {
            assert_eq!(path, store.path());
        }
        other => panic!("expected a corrupt-file error, got {other:?}"),
    }
    // The file is left for the operator to inspect.
    assert!(store.path().exists());

    // A well-formed file naming an impossible allocation is refused as well.
    std::fs::write(
        store.path(),
        br#"{"version":1,"range":"10.0.0.0/24","allocations":{"10.0.0.255":"pod"}}"#,
    )
    .unwrap();
    assert!(matches!(
        IpamActor::new(range("10.0.0.0/24"), Box::new(store.clone())),
        Err(IpamError::CorruptSnapshot { .. })
    ));
    // And so is a file for another range.
    assert!(matches!(
        IpamActor::new(range("10.9.0.0/24"), Box::new(store)),
        Err(IpamError::RangeChanged { .. })
    ));
}

#[actix::test]
async fn an_allocation_that_cannot_be_persisted_is_undone() {
    let store = MemoryIpamStore::new();
    let addr = IpamActor::new(range("10.3.0.0/24"), Box::new(store.clone()))
        .unwrap()
        .start();
    let kept = addr.send(alloc("kept")).await.unwrap().unwrap();
    store.set_fail_saves(true);
    assert!(matches!(
        addr.send(alloc("lost")).await.unwrap(),
        Err(IpamError::Store(IpamStoreError::Injected))
    ));
    assert!(matches!(
        addr.send(ReleaseIp { ip: kept }).await.unwrap(),
        Err(IpamError::Store(IpamStoreError::Injected))
    ));
    let dump = addr.send(Dump).await.unwrap();
    assert_eq!(
        dump.allocations,
        BTreeMap::from([(kept, "kept".to_owned())])
    );
    store.set_fail_saves(false);
    let saved = store.saved().unwrap();
    assert_eq!(saved.allocations, dump.allocations);
}

#[derive(Debug, Clone)]
enum Op {
    Next,
    Specific(u8),
    Release(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Next),
        1 => any::<u8>().prop_map(Op::Specific),
        2 => any::<u8>().prop_map(Op::Release),
    ]
}

proptest! {
    /// Against a model of the held addresses: the allocator never hands out an address that is
    /// held, never a reserved one, reports exhaustion exactly when the range is full, and a
    /// restore from its snapshot reproduces it.
    #[test]
    fn never_hands_out_an_address_twice(ops in proptest::collection::vec(op(), 1..200)) {
        let cidr = range("10.4.0.0/27");
        let mut state = IpamState::new(cidr).unwrap();
        let mut held: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
        for (n, op) in ops.into_iter().enumerate() {
            let owner = format!("o{n}");
            match op {
                Op::Next => match state.allocate(&owner, None) {
                    Ok(got) => {
                        prop_assert!(!held.contains_key(&got), "{got} handed out twice");
                        prop_assert!(cidr.contains(&got));
                        prop_assert!(got != cidr.network() && got != cidr.broadcast());
                        prop_assert!(got != state.router());
                        held.insert(got, owner);
                    }
                    Err(IpamError::Exhausted { .. }) => {
                        prop_assert_eq!(held.len(), state.capacity() as usize);
                    }
                    Err(other) => prop_assert!(false, "unexpected {other}"),
                },
                Op::Specific(last) => {
                    let want = Ipv4Addr::new(10, 4, 0, last % 40);
                    match state.allocate(&owner, Some(want)) {
                        Ok(got) => {
                            prop_assert_eq!(got, want);
                            prop_assert!(!held.contains_key(&got));
                            held.insert(got, owner);
                        }
                        Err(IpamError::AlreadyAllocated { owner: current, .. }) => {
                            prop_assert_eq!(held.get(&want), Some(&current));
                        }
                        Err(IpamError::OutOfRange { .. }) => prop_assert!(!cidr.contains(&want)),
                        Err(IpamError::Reserved { .. }) => prop_assert!(
                            want == cidr.network() || want == cidr.broadcast()
                                || want == state.router()
                        ),
                        Err(other) => prop_assert!(false, "unexpected {other}"),
                    }
                }
                Op::Release(last) => {
                    let target = Ipv4Addr::new(10, 4, 0, last % 32);
                    match state.release(target) {
                        Ok(owner) => prop_assert_eq!(held.remove(&target), Some(owner)),
                        Err(IpamError::NotAllocated { .. }) => {
                            prop_assert!(!held.contains_key(&target));
                        }
                        Err(IpamError::Reserved { .. }) => {}
                        Err(other) => prop_assert!(false, "unexpected {other}"),
                    }
                }
            }
            prop_assert_eq!(&state.dump().allocations, &held);
        }
        let restored = IpamState::restore(cidr, state.snapshot()).unwrap();
        prop_assert_eq!(restored.dump(), state.dump());
    }
}

#[test]
fn the_memory_store_starts_empty_and_keeps_the_last_save() {
    let mut store = MemoryIpamStore::new();
    assert_eq!(store.load().unwrap(), None);
    let mut state = IpamState::new(range("10.5.0.0/24")).unwrap();
    state.allocate("a", None).unwrap();
    store.save(&state.snapshot()).unwrap();
    let mut clone = store.clone();
    assert_eq!(clone.load().unwrap(), Some(state.snapshot()));
}
