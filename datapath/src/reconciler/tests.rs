//! State-machine tests, driven against the recording fake through the same driver the actor
//! uses, with time passed in explicitly.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use model::identity::{ClusterId, NumericIdentity};

use super::driver::{self, PassStats};
use super::messages::{ObjectStatus, ReconcileError, ServiceSpec};
use super::state::{ObjectKey, Op, ReconcilerState, RetryConfig};
use crate::api::{
    Backend4Value, BackendId, BackendSelection, Datapath, Direction, EndpointAttachment,
    EndpointId, Frontend, IpcacheKey, MapKey, MapName, MapValue, POLICY_MAP_CAPACITY, PolicyEntry,
    PolicyKey, Protocol, RemoteEndpointInfo, RevNatId, Service4Key, ServiceFlags,
};
use crate::fake::{FakeDatapath, FakeOp, FaultPoint};

const MS: Duration = Duration::from_millis(1);

/// A reconciler over a fake, with its own clock.
struct Harness {
    state: ReconcilerState,
    fake: FakeDatapath,
    now: Duration,
}

impl Harness {
    fn new() -> Self {
        Self::over(FakeDatapath::new())
    }

    /// A freshly started reconciler over existing kernel state: what a restarted agent sees.
    fn over(fake: FakeDatapath) -> Self {
        let mut state = ReconcilerState::new(RetryConfig::default());
        driver::refresh(&mut state, &fake);
        fake.clear_log();
        Harness {
            state,
            fake,
            now: Duration::ZERO,
        }
    }

    fn pass(&mut self) -> PassStats {
        let mut dp = self.fake.clone();
        driver::reconcile(&mut self.state, &mut dp, self.now)
    }

    fn sync(&mut self) -> PassStats {
        driver::refresh(&mut self.state, &self.fake);
        self.state.mark_synced();
        self.pass()
    }

    fn advance_to(&mut self, at: Duration) {
        self.now = at;
    }

    /// The state-changing operations since the last call, successful or not.
    fn take_writes(&self) -> Vec<FakeOp> {
        let writes = self.fake.writes().into_iter().map(|e| e.op).collect();
        self.fake.clear_log();
        writes
    }

    fn status(&self, object: ObjectKey) -> Option<ObjectStatus> {
        self.state.status(&object)
    }
}

fn ep(n: u16) -> EndpointId {
    EndpointId::new(n)
}

fn id(n: u32) -> NumericIdentity {
    NumericIdentity::new(n)
}

fn allow_port(identity: u32, port: u16) -> (PolicyKey, PolicyEntry) {
    (
        PolicyKey::port(id(identity), Direction::Ingress, Protocol::TCP, port)
            .expect("valid policy key"),
        PolicyEntry::allow(),
    )
}

fn policy(entries: &[(PolicyKey, PolicyEntry)]) -> BTreeMap<PolicyKey, PolicyEntry> {
    entries.iter().copied().collect()
}

fn pkey(endpoint: EndpointId, key: PolicyKey) -> MapKey {
    MapKey::Policy { endpoint, key }
}

fn ipkey(last: u8) -> IpcacheKey {
    IpcacheKey::host(Ipv4Addr::new(10, 0, 1, last).into())
}

fn ipinfo(identity: u32) -> RemoteEndpointInfo {
    RemoteEndpointInfo::identity(id(identity))
}

fn update(key: MapKey, value: MapValue) -> FakeOp {
    FakeOp::Update { key, value }
}

fn delete(key: MapKey) -> FakeOp {
    FakeOp::Delete { key }
}

fn frontend() -> Frontend {
    Frontend::new(
        SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 1), 80),
        Protocol::TCP,
    )
}

fn backend(n: u8) -> (BackendId, Backend4Value) {
    (
        BackendId::new(u32::from(n)),
        Backend4Value::new(
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, n), 8080),
            Protocol::TCP,
        ),
    )
}

fn service(frontend: Frontend, rev_nat: u16, backends: &[u8]) -> ServiceSpec {
    ServiceSpec {
        frontend,
        rev_nat: RevNatId::new(rev_nat),
        backends: backends.iter().map(|n| backend(*n)).collect(),
        selection: BackendSelection::Random,
        flags: ServiceFlags::NONE,
    }
}

fn slot(frontend: Frontend, slot: u16) -> MapKey {
    MapKey::Service(Service4Key {
        frontend,
        backend_slot: slot,
    })
}

#[test]
fn unchanged_desired_state_costs_no_writes() {
    let mut h = Harness::new();
    let set = policy(&[
        allow_port(1000, 80),
        allow_port(1000, 443),
        allow_port(2000, 53),
    ]);
    h.state.set_endpoint_policy(ep(1), &set);
    h.state
        .upsert_ipcache(&[(ipkey(1), ipinfo(1000)), (ipkey(2), ipinfo(2000))]);
    h.pass();
    assert_eq!(
        h.take_writes().len(),
        1 + 3 + 2,
        "map creation, 3 policy and 2 ipcache entries"
    );

    h.state.set_endpoint_policy(ep(1), &set);
    h.state
        .upsert_ipcache(&[(ipkey(1), ipinfo(1000)), (ipkey(2), ipinfo(2000))]);
    h.pass();
    assert_eq!(
        h.take_writes(),
        vec![],
        "the same desired state again must not write"
    );

    h.state
        .upsert_ipcache(&[(ipkey(1), ipinfo(1000)), (ipkey(2), ipinfo(2001))]);
    h.pass();
    assert_eq!(
        h.take_writes(),
        vec![update(
            MapKey::Ipcache(ipkey(2)),
            MapValue::Ipcache(ipinfo(2001))
        )]
    );
    assert!(h.state.converged());
}

#[test]
fn replacing_a_policy_set_deletes_exactly_the_removed_keys() {
    let mut h = Harness::new();
    let (a, b, c, d) = (
        allow_port(1, 1),
        allow_port(2, 2),
        allow_port(3, 3),
        allow_port(4, 4),
    );
    h.state.set_endpoint_policy(ep(5), &policy(&[a, b, c]));
    h.pass();
    h.take_writes();

    let c_denied = (c.0, PolicyEntry::deny());
    h.state
        .set_endpoint_policy(ep(5), &policy(&[b, c_denied, d]));
    h.pass();
    let mut writes = h.take_writes();
    writes.sort_by_key(|op| format!("{op:?}"));
    let mut expected = vec![
        update(pkey(ep(5), c.0), MapValue::Policy(PolicyEntry::deny())),
        update(pkey(ep(5), d.0), MapValue::Policy(d.1)),
        delete(pkey(ep(5), a.0)),
    ];
    expected.sort_by_key(|op| format!("{op:?}"));
    assert_eq!(writes, expected);

    let kernel: Vec<MapKey> = h
        .fake
        .entries(MapName::Policy(ep(5)))
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let mut want = vec![pkey(ep(5), b.0), pkey(ep(5), c.0), pkey(ep(5), d.0)];
    want.sort();
    assert_eq!(kernel, want);
}

#[test]
fn a_failed_update_is_retried_with_backoff_until_it_succeeds() {
    let mut h = Harness::new();
    h.fake.fail_next(FaultPoint::Update(MapName::Ipcache), 3);
    let key = MapKey::Ipcache(ipkey(1));
    h.state.upsert_ipcache(&[(ipkey(1), ipinfo(7))]);

    let stats = h.pass();
    assert_eq!((stats.succeeded, stats.failed), (0, 1));
    match h.status(ObjectKey::Entry(key)) {
        Some(ObjectStatus::Failed {
            attempts: 1,
            next_retry,
            last_error,
        }) => {
            assert_eq!(next_retry, 100 * MS);
            assert!(last_error.contains("injected fault"), "{last_error}");
            assert!(last_error.contains("cilium_ipcache_v2"), "{last_error}");
        }
        other => panic!("expected a first failure, got {other:?}"),
    }
    assert_eq!(h.state.next_retry(), Some(100 * MS));

    h.advance_to(99 * MS);
    assert_eq!(
        h.pass(),
        PassStats::default(),
        "nothing is due before the backoff ends"
    );

    // Backoff doubles: attempt 2 at 100 ms, 3 at 300 ms, 4 at 700 ms.
    for (at, attempts) in [(100, 2), (300, 3)] {
        h.advance_to(at * MS);
        assert_eq!(h.pass().failed, 1);
        assert!(matches!(
            h.status(ObjectKey::Entry(key)),
            Some(ObjectStatus::Failed { attempts: a, .. }) if a == attempts
        ));
    }
    assert_eq!(h.state.next_retry(), Some(700 * MS));
    h.advance_to(700 * MS);
    assert_eq!(h.pass().succeeded, 1);
    assert_eq!(h.status(ObjectKey::Entry(key)), Some(ObjectStatus::Applied));
    assert_eq!(h.state.next_retry(), None);
    let attempts = h
        .take_writes()
        .iter()
        .filter(|op| matches!(op, FakeOp::Update { .. }))
        .count();
    assert_eq!(attempts, 4);
    assert_eq!(h.fake.get(&key), Some(MapValue::Ipcache(ipinfo(7))));
}

#[test]
fn backoff_doubles_and_is_capped() {
    let retry = RetryConfig::default();
    assert_eq!(retry.backoff(1), 100 * MS);
    assert_eq!(retry.backoff(2), 200 * MS);
    assert_eq!(retry.backoff(10), 51_200 * MS);
    assert_eq!(retry.backoff(11), Duration::from_secs(60));
    assert_eq!(retry.backoff(u32::MAX), Duration::from_secs(60));
}

#[test]
fn desired_state_survives_failures() {
    let mut h = Harness::new();
    let bad = MapKey::Ipcache(ipkey(1));
    h.fake.fail_key(bad);
    h.state
        .upsert_ipcache(&[(ipkey(1), ipinfo(1)), (ipkey(2), ipinfo(2))]);
    h.pass();
    assert_eq!(
        h.status(ObjectKey::Entry(MapKey::Ipcache(ipkey(2)))),
        Some(ObjectStatus::Applied)
    );
    let dump = h.state.dump();
    let entry = dump
        .entries
        .iter()
        .find(|e| e.key == bad)
        .expect("failed entry is dumped");
    assert_eq!(entry.desired, Some(MapValue::Ipcache(ipinfo(1))));
    assert!(matches!(
        entry.status,
        ObjectStatus::Failed { attempts: 1, .. }
    ));

    // Further failures keep it; healing lets the next retry through.
    h.advance_to(Duration::from_secs(1));
    h.pass();
    assert!(matches!(
        h.status(ObjectKey::Entry(bad)),
        Some(ObjectStatus::Failed { attempts: 2, .. })
    ));
    h.fake.heal_key(&bad);
    h.advance_to(Duration::from_secs(2));
    h.pass();
    assert_eq!(h.status(ObjectKey::Entry(bad)), Some(ObjectStatus::Applied));
    assert!(h.state.converged());
}

#[test]
fn a_new_desired_value_is_tried_at_once_despite_backoff() {
    let mut h = Harness::new();
    h.fake.fail_next(FaultPoint::Update(MapName::Ipcache), 1);
    h.state.upsert_ipcache(&[(ipkey(1), ipinfo(1))]);
    h.pass();
    h.state.upsert_ipcache(&[(ipkey(1), ipinfo(2))]);
    assert_eq!(h.pass().succeeded, 1, "a changed value resets the backoff");
    assert_eq!(
        h.fake.get(&MapKey::Ipcache(ipkey(1))),
        Some(MapValue::Ipcache(ipinfo(2)))
    );
}

#[test]
fn deleting_a_missing_key_is_not_an_error() {
    let mut h = Harness::new();
    h.state.delete_ipcache(&[ipkey(9)]);
    h.state.delete_lxc(&[crate::api::EndpointKey::new(
        Ipv4Addr::new(10, 0, 0, 9).into(),
    )]);
    h.pass();
    assert_eq!(
        h.take_writes(),
        vec![],
        "a key known to be absent needs no delete"
    );
    assert!(h.state.converged());
    assert_eq!(h.status(ObjectKey::Entry(MapKey::Ipcache(ipkey(9)))), None);

    // When the map could not be listed, the delete is attempted and succeeds.
    let fake = FakeDatapath::new();
    fake.fail_next(FaultPoint::List(MapName::Ipcache), 1);
    let mut h = Harness::over(fake);
    h.state.delete_ipcache(&[ipkey(9)]);
    assert_eq!(
        h.pass(),
        PassStats {
            succeeded: 1,
            failed: 0
        }
    );
    assert_eq!(h.take_writes(), vec![delete(MapKey::Ipcache(ipkey(9)))]);
    assert!(h.state.converged());
}

#[test]
fn a_map_that_could_not_be_listed_is_written_unconditionally() {
    let fake = FakeDatapath::new();
    let mut seed = fake.clone();
    seed.update(&MapKey::Ipcache(ipkey(1)), &MapValue::Ipcache(ipinfo(1)))
        .expect("seed");
    fake.fail_next(FaultPoint::List(MapName::Ipcache), 1);
    let mut h = Harness::over(fake);
    h.state.upsert_ipcache(&[(ipkey(1), ipinfo(1))]);
    h.pass();
    assert_eq!(h.take_writes().len(), 1);
}

/// Builds kernel state with one reconciler, as a previous agent run would leave it.
fn previous_run() -> FakeDatapath {
    let mut h = Harness::new();
    h.state.set_endpoint_policy(
        ep(1),
        &policy(&[allow_port(1000, 80), allow_port(1001, 81)]),
    );
    h.state
        .set_endpoint_policy(ep(2), &policy(&[allow_port(1000, 80)]));
    for n in [1, 2] {
        h.state.attach_endpoint(EndpointAttachment {
            endpoint: ep(n),
            ifname: format!("lxc{n}"),
            netns: None,
        });
    }
    h.state
        .upsert_ipcache(&[(ipkey(1), ipinfo(1000)), (ipkey(2), ipinfo(2000))]);
    h.state
        .upsert_service(service(frontend(), 1, &[1, 2]))
        .expect("service");
    h.sync();
    assert!(h.state.converged());
    h.fake
}

#[test]
fn a_restart_adopts_existing_entries_without_rewriting_them() {
    let fake = previous_run();
    let before: Vec<_> = MapName::GLOBAL.iter().map(|m| fake.entries(*m)).collect();
    let mut h = Harness::over(fake.clone());
    assert!(
        h.state
            .dump()
            .entries
            .iter()
            .all(|e| e.status == ObjectStatus::Adopted)
    );

    // Nothing is claimed yet: no write at all, however often the reconciler runs.
    h.pass();
    h.advance_to(Duration::from_secs(600));
    h.pass();
    assert_eq!(h.take_writes(), vec![]);

    // The sources send the same state again: still no map writes.
    h.state.set_endpoint_policy(
        ep(1),
        &policy(&[allow_port(1000, 80), allow_port(1001, 81)]),
    );
    h.state
        .upsert_ipcache(&[(ipkey(1), ipinfo(1000)), (ipkey(2), ipinfo(2000))]);
    h.state
        .upsert_service(service(frontend(), 1, &[1, 2]))
        .expect("service");
    h.pass();
    assert!(
        h.take_writes()
            .iter()
            .all(|op| !matches!(op, FakeOp::Update { .. } | FakeOp::Delete { .. }))
    );
    let after: Vec<_> = MapName::GLOBAL.iter().map(|m| fake.entries(*m)).collect();
    assert_eq!(before, after);
    assert_eq!(
        h.status(ObjectKey::Entry(MapKey::Ipcache(ipkey(1)))),
        Some(ObjectStatus::Applied)
    );
}

#[test]
fn after_the_initial_sync_stale_entries_are_pruned() {
    let fake = previous_run();
    let mut h = Harness::over(fake.clone());
    // Endpoint 2 is gone and 10.0.1.2 no longer exists; the rest is claimed again.
    h.state.set_endpoint_policy(
        ep(1),
        &policy(&[allow_port(1000, 80), allow_port(1001, 81)]),
    );
    h.state.upsert_ipcache(&[(ipkey(1), ipinfo(1000))]);
    h.state
        .upsert_service(service(frontend(), 1, &[1, 2]))
        .expect("service");
    h.pass();
    assert!(
        h.take_writes().is_empty(),
        "no prune before the initial sync"
    );

    h.sync();
    assert_eq!(
        h.take_writes(),
        vec![
            FakeOp::Detach { endpoint: ep(2) },
            delete(MapKey::Ipcache(ipkey(2))),
            FakeOp::RemovePolicyMap { endpoint: ep(2) },
        ],
        "exactly the stale objects go, a stale policy map as a whole"
    );
    assert!(h.state.converged());
    assert!(fake.has_policy_map(ep(1)));
    assert!(!fake.has_policy_map(ep(2)));
    assert_eq!(fake.entries(MapName::Lb4Services).len(), 3);
}

#[test]
fn a_restart_rewrites_adopted_entries_whose_value_changed() {
    let mut h = Harness::over(previous_run());
    h.state.upsert_ipcache(&[(ipkey(1), ipinfo(4242))]);
    h.pass();
    assert_eq!(
        h.take_writes(),
        vec![update(
            MapKey::Ipcache(ipkey(1)),
            MapValue::Ipcache(ipinfo(4242))
        )]
    );
}

#[test]
fn a_periodic_resync_repairs_drift() {
    let mut h = Harness::new();
    h.state.upsert_ipcache(&[(ipkey(1), ipinfo(1))]);
    h.sync();
    let mut intruder = h.fake.clone();
    intruder.delete(&MapKey::Ipcache(ipkey(1))).expect("delete");
    intruder
        .update(&MapKey::Ipcache(ipkey(3)), &MapValue::Ipcache(ipinfo(3)))
        .expect("stray");
    h.take_writes();
    h.sync();
    assert_eq!(
        h.take_writes(),
        vec![
            update(MapKey::Ipcache(ipkey(1)), MapValue::Ipcache(ipinfo(1))),
            delete(MapKey::Ipcache(ipkey(3))),
        ]
    );
}

#[test]
fn policy_entries_wait_for_their_map() {
    let mut h = Harness::new();
    h.fake.fail_next(FaultPoint::CreatePolicyMap, 1);
    h.state
        .set_endpoint_policy(ep(3), &policy(&[allow_port(1, 80)]));
    h.pass();
    assert_eq!(
        h.take_writes(),
        vec![FakeOp::CreatePolicyMap { endpoint: ep(3) }]
    );
    assert_eq!(
        h.status(ObjectKey::Entry(pkey(ep(3), allow_port(1, 80).0))),
        Some(ObjectStatus::Pending)
    );
    h.advance_to(100 * MS);
    h.pass();
    assert_eq!(
        h.take_writes(),
        vec![
            FakeOp::CreatePolicyMap { endpoint: ep(3) },
            update(
                pkey(ep(3), allow_port(1, 80).0),
                MapValue::Policy(PolicyEntry::allow())
            ),
        ]
    );
}

#[test]
fn attach_after_the_policy_map_and_detach_before_removing_it() {
    let mut h = Harness::new();
    let att = EndpointAttachment {
        endpoint: ep(4),
        ifname: "lxc4".into(),
        netns: Some("/var/run/netns/node1".into()),
    };
    h.state
        .set_endpoint_policy(ep(4), &policy(&[allow_port(1, 80), allow_port(2, 80)]));
    h.state.attach_endpoint(att.clone());
    h.pass();
    let writes = h.take_writes();
    assert_eq!(
        writes.first(),
        Some(&FakeOp::CreatePolicyMap { endpoint: ep(4) })
    );
    assert_eq!(writes.last(), Some(&FakeOp::Attach(att)));
    assert_eq!(writes.len(), 4);

    h.state.detach_endpoint(ep(4));
    h.pass();
    assert_eq!(
        h.take_writes(),
        vec![
            FakeOp::Detach { endpoint: ep(4) },
            FakeOp::RemovePolicyMap { endpoint: ep(4) },
        ],
        "entries go with their map, not one by one"
    );
    assert!(h.state.converged());
    assert!(h.state.dump().entries.is_empty());
    assert!(h.state.dump().policy_maps.is_empty());
}

#[test]
fn a_failed_detach_keeps_the_policy_map() {
    let mut h = Harness::new();
    h.state.attach_endpoint(EndpointAttachment {
        endpoint: ep(6),
        ifname: "lxc6".into(),
        netns: None,
    });
    h.pass();
    h.take_writes();
    h.fake.fail_next(FaultPoint::Detach, 1);
    h.state.detach_endpoint(ep(6));
    h.pass();
    assert_eq!(h.take_writes(), vec![FakeOp::Detach { endpoint: ep(6) }]);
    assert!(
        h.fake.has_policy_map(ep(6)),
        "the map stays while programs may use it"
    );
    h.advance_to(100 * MS);
    h.pass();
    assert_eq!(
        h.take_writes(),
        vec![
            FakeOp::Detach { endpoint: ep(6) },
            FakeOp::RemovePolicyMap { endpoint: ep(6) }
        ]
    );
}

#[test]
fn a_vanished_policy_map_is_recreated_with_its_entries() {
    let mut h = Harness::new();
    h.state
        .set_endpoint_policy(ep(8), &policy(&[allow_port(1, 80), allow_port(2, 80)]));
    h.pass();
    let mut intruder = h.fake.clone();
    intruder.remove_policy_map(ep(8)).expect("remove");
    h.take_writes();
    h.state.set_endpoint_policy(
        ep(8),
        &policy(&[allow_port(1, 80), allow_port(2, 80), allow_port(3, 80)]),
    );
    h.pass();
    assert_eq!(
        h.take_writes().len(),
        1 + 1 + 2,
        "failed update, map creation, the 2 older entries"
    );
    h.advance_to(Duration::from_secs(1));
    h.pass();
    assert_eq!(h.fake.entries(MapName::Policy(ep(8))).len(), 3);
    assert!(h.state.converged());
}

#[test]
fn service_writes_are_ordered_so_nothing_points_at_a_missing_entry() {
    let mut h = Harness::new();
    let fe = frontend();
    h.state
        .upsert_service(service(fe, 7, &[1, 2]))
        .expect("service");
    h.pass();
    let kinds: Vec<String> = h
        .take_writes()
        .iter()
        .map(|op| match op {
            FakeOp::Update {
                key: MapKey::Backend(id),
                ..
            } => format!("backend {id}"),
            FakeOp::Update {
                key: MapKey::RevNat(id),
                ..
            } => format!("revnat {id}"),
            FakeOp::Update {
                key: MapKey::Service(k),
                ..
            } => format!("slot {}", k.backend_slot),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "backend 1",
            "backend 2",
            "revnat 7",
            "slot 1",
            "slot 2",
            "slot 0"
        ]
    );
    let master = h.fake.get(&slot(fe, 0));
    assert!(
        matches!(master, Some(MapValue::Service(v)) if v.count == 2 && v.rev_nat == RevNatId::new(7))
    );

    // Shrinking: the master entry's count drops before the slot and the backend go.
    h.state
        .upsert_service(service(fe, 7, &[1]))
        .expect("service");
    h.pass();
    let writes = h.take_writes();
    assert!(
        matches!(&writes[0], FakeOp::Update { key, value: MapValue::Service(v) } if *key == slot(fe, 0) && v.count == 1)
    );
    assert_eq!(
        writes[1..],
        [delete(slot(fe, 2)), delete(MapKey::Backend(backend(2).0))]
    );

    h.state.delete_service(&fe);
    h.pass();
    assert_eq!(
        h.take_writes(),
        vec![
            delete(slot(fe, 0)),
            delete(slot(fe, 1)),
            delete(MapKey::RevNat(RevNatId::new(7))),
            delete(MapKey::Backend(backend(1).0)),
        ]
    );
    assert!(h.state.converged());
    assert!(h.state.dump().services.is_empty());
}

#[test]
fn a_shared_backend_stays_while_a_service_uses_it() {
    let mut h = Harness::new();
    let fe2 = Frontend::new(
        SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 2), 80),
        Protocol::TCP,
    );
    h.state
        .upsert_service(service(frontend(), 1, &[1, 2]))
        .expect("first");
    h.state
        .upsert_service(service(fe2, 2, &[2]))
        .expect("second");
    h.pass();
    h.take_writes();
    h.state.delete_service(&frontend());
    h.pass();
    let writes = h.take_writes();
    assert!(writes.contains(&delete(MapKey::Backend(backend(1).0))));
    assert!(!writes.contains(&delete(MapKey::Backend(backend(2).0))));
    assert!(h.fake.get(&MapKey::Backend(backend(2).0)).is_some());
}

#[test]
fn conflicting_service_ids_are_rejected_without_effect() {
    let mut h = Harness::new();
    let fe2 = Frontend::new(
        SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 2), 53),
        Protocol::UDP,
    );
    h.state
        .upsert_service(service(frontend(), 1, &[1]))
        .expect("first");
    let dump = h.state.dump();

    let err = h.state.upsert_service(service(fe2, 1, &[])).unwrap_err();
    assert!(matches!(err, ReconcileError::RevNatConflict { owner, .. } if owner == frontend()));

    let mut other = service(fe2, 2, &[]);
    other.backends.push((
        BackendId::new(1),
        Backend4Value::new(
            SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 9), 1),
            Protocol::UDP,
        ),
    ));
    let err = h.state.upsert_service(other).unwrap_err();
    assert!(
        matches!(err, ReconcileError::BackendConflict { id, user, .. } if id == BackendId::new(1) && user == frontend())
    );

    let err = h.state.upsert_service(service(fe2, 0, &[])).unwrap_err();
    assert!(matches!(err, ReconcileError::ZeroRevNat { .. }));

    let mut huge = service(fe2, 3, &[]);
    huge.backends = (0..=u32::from(u16::MAX))
        .map(|n| (BackendId::new(n + 1), backend(1).1))
        .collect();
    let err = h.state.upsert_service(huge).unwrap_err();
    assert!(matches!(
        err,
        ReconcileError::TooManyBackends { count: 65536, .. }
    ));

    assert_eq!(h.state.dump(), dump, "rejected services change nothing");
    // The owner itself may change its backend's address.
    let mut moved = service(frontend(), 1, &[]);
    moved.backends.push((
        BackendId::new(1),
        Backend4Value::new(
            SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 9), 1),
            Protocol::TCP,
        ),
    ));
    h.state
        .upsert_service(moved)
        .expect("owner moves its backend");
}

#[test]
fn a_full_policy_map_shows_as_failed_entries() {
    let mut h = Harness::new();
    let count = POLICY_MAP_CAPACITY + 1;
    let set: BTreeMap<PolicyKey, PolicyEntry> = (0..count)
        .map(|n| {
            (
                PolicyKey::l3(id(n), Direction::Egress),
                PolicyEntry::allow(),
            )
        })
        .collect();
    h.state.set_endpoint_policy(ep(9), &set);
    let stats = h.pass();
    assert_eq!(
        (stats.succeeded, stats.failed),
        (POLICY_MAP_CAPACITY as usize + 1, 1)
    );
    let failed: Vec<_> = h
        .state
        .dump()
        .entries
        .into_iter()
        .filter(|e| matches!(&e.status, ObjectStatus::Failed { last_error, .. } if last_error.contains("is full")))
        .collect();
    assert_eq!(failed.len(), 1);
}

#[test]
fn plan_orders_policy_maps_first_and_removals_last() {
    let mut state = ReconcilerState::new(RetryConfig::default());
    state.observe_policy_maps(&[]);
    state.set_endpoint_policy(ep(1), &policy(&[allow_port(1, 1)]));
    let ops = state.plan(Duration::ZERO);
    assert_eq!(
        ops,
        vec![Op::CreatePolicyMap(ep(1))],
        "entries wait until the map exists"
    );
}

#[test]
fn dump_is_serialisable() {
    let mut h = Harness::new();
    h.state
        .set_endpoint_policy(ep(1), &policy(&[allow_port(1000, 80)]));
    h.state.upsert_ipcache(&[(
        IpcacheKey::new(ClusterId::new(3), "10.3.0.0/16".parse().expect("cidr")),
        ipinfo(3 << 16 | 5),
    )]);
    h.state
        .upsert_service(service(frontend(), 1, &[1]))
        .expect("service");
    h.fake
        .fail_next(FaultPoint::Update(MapName::Lb4Backends), 1);
    h.pass();
    let dump = h.state.dump();
    let json = serde_json::to_string(&dump).expect("serialise");
    assert!(json.contains("\"state\":\"failed\""), "{json}");
    assert!(json.contains("cilium_lb4_backends_v3"), "{json}");
    let back: super::messages::DatapathDump = serde_json::from_str(&json).expect("deserialise");
    assert_eq!(back, dump);
}
