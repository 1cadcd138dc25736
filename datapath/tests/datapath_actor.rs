//! The Datapath actor against the recording fake, on a current-thread runtime with paused
//! time, so retry timers fire as virtual time passes.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use actix::{Actor, Addr};
use datapath::api::{
    CtEntry, CtKey4, CtTupleFlags, Datapath, Direction, EndpointAttachment, EndpointId, IpcacheKey,
    MapKey, MapName, MapValue, MetricDirection, MetricEntry, PolicyEntry, PolicyKey, Protocol,
    RemoteEndpointInfo,
};
use datapath::fake::{FakeDatapath, FakeOp, FaultPoint};
use datapath::reconciler::{
    AttachEndpoint, ConntrackGc, DatapathActor, DatapathActorConfig, DetachEndpoint, Dump,
    InitialSyncDone, ListMap, ObjectStatus, ReadMetrics, ReconcileError, SetEndpointPolicy,
    UpsertIpcache,
};
use model::identity::NumericIdentity;

fn start(fake: &FakeDatapath) -> Addr<DatapathActor> {
    let config = DatapathActorConfig {
        resync_interval: Duration::from_secs(3600),
        ..DatapathActorConfig::default()
    };
    DatapathActor::new(Box::new(fake.clone()), config).start()
}

fn ipcache(last: u8, identity: u32) -> (IpcacheKey, RemoteEndpointInfo) {
    (
        IpcacheKey::host(Ipv4Addr::new(10, 0, 0, last).into()),
        RemoteEndpointInfo::identity(NumericIdentity::new(identity)),
    )
}

fn policy(identities: &[u32]) -> BTreeMap<PolicyKey, PolicyEntry> {
    identities
        .iter()
        .map(|id| {
            (
                PolicyKey::l3(NumericIdentity::new(*id), Direction::Ingress),
                PolicyEntry::allow(),
            )
        })
        .collect()
}

fn attachment(n: u16) -> EndpointAttachment {
    EndpointAttachment {
        endpoint: EndpointId::new(n),
        ifname: format!("lxc{n}"),
        netns: None,
    }
}

fn map_writes(fake: &FakeDatapath) -> usize {
    fake.writes()
        .iter()
        .filter(|e| matches!(e.op, FakeOp::Update { .. } | FakeOp::Delete { .. }))
        .count()
}

#[actix::test]
async fn the_retry_timer_applies_a_failed_write_once_the_fault_clears() {
    tokio::time::pause();
    let fake = FakeDatapath::new();
    fake.fail_next(FaultPoint::Update(MapName::Ipcache), 3);
    let dp = start(&fake);
    let (key, info) = ipcache(1, 1000);
    dp.send(UpsertIpcache {
        entries: vec![(key, info)],
    })
    .await
    .expect("send");

    let dump = dp.send(Dump).await.expect("dump");
    assert!(matches!(
        dump.entries[0].status,
        ObjectStatus::Failed { attempts: 1, .. }
    ));

    // Retries at 100, 300 and 700 ms of virtual time.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let dump = dp.send(Dump).await.expect("dump");
    assert_eq!(dump.entries[0].status, ObjectStatus::Applied);
    assert_eq!(
        fake.get(&MapKey::Ipcache(key)),
        Some(MapValue::Ipcache(info))
    );
    assert_eq!(map_writes(&fake), 4);
}

#[actix::test]
async fn a_restarted_actor_adopts_then_prunes_after_the_initial_sync() {
    tokio::time::pause();
    let fake = FakeDatapath::new();
    let first = start(&fake);
    first
        .send(SetEndpointPolicy {
            endpoint: EndpointId::new(1),
            entries: policy(&[1000, 2000]),
        })
        .await
        .expect("send");
    first
        .send(UpsertIpcache {
            entries: vec![ipcache(1, 1000), ipcache(2, 2000)],
        })
        .await
        .expect("send");
    first.send(InitialSyncDone).await.expect("send");
    assert!(
        first
            .send(AttachEndpoint(attachment(1)))
            .await
            .expect("send")
            .is_ok()
    );
    drop(first);
    fake.clear_log();

    let second = start(&fake);
    let dump = second.send(Dump).await.expect("dump");
    assert!(!dump.synced);
    assert_eq!(dump.entries.len(), 4);
    assert!(
        dump.entries
            .iter()
            .all(|e| e.status == ObjectStatus::Adopted)
    );

    second
        .send(SetEndpointPolicy {
            endpoint: EndpointId::new(1),
            entries: policy(&[1000, 2000]),
        })
        .await
        .expect("send");
    second
        .send(UpsertIpcache {
            entries: vec![ipcache(1, 1000)],
        })
        .await
        .expect("send");
    assert_eq!(map_writes(&fake), 0, "adopted entries are not rewritten");

    second.send(InitialSyncDone).await.expect("send");
    let writes: Vec<FakeOp> = fake.writes().into_iter().map(|e| e.op).collect();
    assert_eq!(
        writes,
        vec![FakeOp::Delete {
            key: MapKey::Ipcache(ipcache(2, 0).0)
        }]
    );
    let dump = second.send(Dump).await.expect("dump");
    assert!(dump.synced);
    assert!(
        dump.entries
            .iter()
            .all(|e| e.status == ObjectStatus::Applied)
    );
}

#[actix::test]
async fn attach_answers_with_the_reason_it_cannot_apply() {
    tokio::time::pause();
    let fake = FakeDatapath::new();
    let dp = start(&fake);
    fake.fail_next(FaultPoint::CreatePolicyMap, 1);
    let err = dp
        .send(AttachEndpoint(attachment(3)))
        .await
        .expect("send")
        .unwrap_err();
    assert!(
        matches!(&err, ReconcileError::Blocked { blocked_by, .. } if blocked_by.contains("cilium_policy_v2_00003")),
        "{err}"
    );

    // The actor keeps retrying on its own.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(fake.attachments(), vec![attachment(3)]);
    assert!(
        dp.send(AttachEndpoint(attachment(3)))
            .await
            .expect("send")
            .is_ok()
    );

    fake.fail_next(FaultPoint::Detach, 1);
    let err = dp
        .send(DetachEndpoint {
            endpoint: EndpointId::new(3),
        })
        .await
        .expect("send")
        .unwrap_err();
    assert!(
        matches!(err, ReconcileError::NotApplied { attempts: 1, .. }),
        "{err}"
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(fake.attachments().is_empty());
    assert!(!fake.has_policy_map(EndpointId::new(3)));
    assert!(
        dp.send(DetachEndpoint {
            endpoint: EndpointId::new(3)
        })
        .await
        .expect("send")
        .is_ok()
    );
}

#[actix::test]
async fn reads_go_through_to_the_datapath() {
    tokio::time::pause();
    let fake = FakeDatapath::new();
    let mut seed = fake.clone();
    let key = MapKey::Conntrack(CtKey4 {
        daddr: Ipv4Addr::new(10, 0, 0, 1),
        saddr: Ipv4Addr::new(10, 0, 0, 2),
        dport: 80,
        sport: 5555,
        protocol: Protocol::TCP,
        flags: CtTupleFlags::OUT,
    });
    seed.update(
        &key,
        &MapValue::Conntrack(CtEntry {
            lifetime: 10,
            ..CtEntry::default()
        }),
    )
    .expect("seed");
    let metric = MetricEntry {
        reason: 133,
        direction: MetricDirection::Egress,
        line: 1,
        file: 0,
        packets: 3,
        bytes: 180,
    };
    fake.add_metric(metric);
    let dp = start(&fake);

    let listed = dp
        .send(ListMap {
            map: MapName::Ct4Global,
        })
        .await
        .expect("send")
        .expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        dp.send(ReadMetrics).await.expect("send").expect("metrics"),
        vec![metric]
    );
    fake.set_monotonic_secs(11);
    let stats = dp.send(ConntrackGc).await.expect("send").expect("gc");
    assert_eq!((stats.deleted, stats.alive), (1, 0));

    fake.fail_next(FaultPoint::ReadMetrics, 1);
    let err = dp.send(ReadMetrics).await.expect("send").unwrap_err();
    assert!(matches!(err, ReconcileError::Datapath(_)));
}

#[actix::test]
async fn periodic_conntrack_gc_runs_on_its_own() {
    tokio::time::pause();
    let fake = FakeDatapath::new();
    let _dp = start(&fake);
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert!(fake.log().iter().any(|e| e.op == FakeOp::ConntrackGc));
}
