//! ServiceManager tests: datapath messages for API changes (through a probe), id reuse, id
//! exhaustion, and restart adoption through the real Datapath actor over the fake datapath.

use std::net::SocketAddrV4;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::{Actor, Addr, Context, Handler};
use actors::service::{
    ApiBackend, DeleteServiceApi, Dump, ListServices, ServiceError, ServiceId, ServiceIdRanges,
    ServiceManager, ServiceOutputs, ServiceSnapshot, ServiceUpserted, UpsertServiceApi,
};
use datapath::api::{
    Backend4Value, BackendId, BackendSelection, BackendState, Frontend, MapKey, MapName, Protocol,
    RevNatId, ServiceFlags,
};
use datapath::fake::FakeDatapath;
use datapath::reconciler::{
    DatapathActor, DatapathActorConfig, DeleteService, InitialSyncDone, ReconcileError,
    ServiceSpec, UpsertService,
};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Upsert(ServiceSpec),
    Delete(Frontend),
}

#[derive(Debug, Default, Clone)]
struct Probe {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Probe {
    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

impl Actor for Probe {
    type Context = Context<Self>;
}

impl Handler<UpsertService> for Probe {
    type Result = Result<(), ReconcileError>;
    fn handle(&mut self, msg: UpsertService, _: &mut Context<Self>) -> Self::Result {
        self.seen.lock().unwrap().push(Seen::Upsert(msg.0));
        Ok(())
    }
}

impl Handler<DeleteService> for Probe {
    type Result = ();
    fn handle(&mut self, msg: DeleteService, _: &mut Context<Self>) {
        self.seen.lock().unwrap().push(Seen::Delete(msg.frontend));
    }
}

fn fe(s: &str) -> Frontend {
    Frontend::new(s.parse().unwrap(), Protocol::TCP)
}

fn addr(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

fn api(id: Option<u16>, frontend: &str, backends: &[&str]) -> UpsertServiceApi {
    UpsertServiceApi {
        id: id.map(ServiceId::new),
        frontend: fe(frontend),
        backends: backends.iter().map(|b| ApiBackend::new(addr(b))).collect(),
        selection: BackendSelection::Random,
        flags: ServiceFlags::NONE,
    }
}

fn backend(id: u32, a: &str) -> (BackendId, Backend4Value) {
    (
        BackendId::new(id),
        Backend4Value::new(addr(a), Protocol::TCP),
    )
}

fn spec(frontend: &str, rev_nat: u16, backends: Vec<(BackendId, Backend4Value)>) -> ServiceSpec {
    ServiceSpec {
        frontend: fe(frontend),
        rev_nat: RevNatId::new(rev_nat),
        backends,
        selection: BackendSelection::Random,
        flags: ServiceFlags::NONE,
    }
}

fn start_with_probe(ranges: ServiceIdRanges) -> (Addr<ServiceManager>, Probe) {
    let probe = Probe::default();
    let addr = probe.clone().start();
    let outputs = ServiceOutputs {
        upsert: addr.clone().recipient(),
        delete: addr.recipient(),
    };
    let (manager, problems) = ServiceManager::new(ranges, ServiceSnapshot::default(), outputs);
    assert!(problems.is_empty());
    (manager.start(), probe)
}

#[actix::test]
async fn api_changes_reach_the_datapath_with_stable_ids() {
    let (manager, probe) = start_with_probe(ServiceIdRanges::default());
    let created = manager
        .send(api(
            None,
            "10.96.0.10:80",
            &["10.0.0.1:8080", "10.0.0.2:8080"],
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        created,
        ServiceUpserted {
            id: ServiceId::new(1),
            created: true
        }
    );
    // The second service shares 10.0.0.2:8080 and so its backend id.
    manager
        .send(api(Some(42), "10.96.0.11:80", &["10.0.0.2:8080"]))
        .await
        .unwrap()
        .unwrap();
    // An update with fewer backends, addressed by id.
    let updated = manager
        .send(api(Some(1), "10.96.0.10:80", &["10.0.0.2:8080"]))
        .await
        .unwrap()
        .unwrap();
    assert!(!updated.created);
    // A service without backends is kept.
    manager
        .send(api(None, "10.96.0.10:80", &[]))
        .await
        .unwrap()
        .unwrap();
    manager
        .send(DeleteServiceApi {
            id: ServiceId::new(42),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        probe.take(),
        [
            Seen::Upsert(spec(
                "10.96.0.10:80",
                1,
                vec![backend(1, "10.0.0.1:8080"), backend(2, "10.0.0.2:8080")]
            )),
            Seen::Upsert(spec("10.96.0.11:80", 42, vec![backend(2, "10.0.0.2:8080")])),
            Seen::Upsert(spec("10.96.0.10:80", 1, vec![backend(2, "10.0.0.2:8080")])),
            Seen::Upsert(spec("10.96.0.10:80", 1, vec![])),
            Seen::Delete(fe("10.96.0.11:80")),
        ]
    );
    let list = manager.send(ListServices).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, ServiceId::new(1));
    assert!(list[0].backends.is_empty());
    let dump = manager.send(Dump).await.unwrap();
    assert!(dump.backends.is_empty());
    assert!(matches!(
        manager
            .send(DeleteServiceApi {
                id: ServiceId::new(42)
            })
            .await
            .unwrap(),
        Err(ServiceError::NotFound { .. })
    ));
    // Errors change nothing and send nothing.
    assert!(matches!(
        manager
            .send(api(Some(1), "10.96.0.99:80", &[]))
            .await
            .unwrap(),
        Err(ServiceError::IdInUse { .. })
    ));
    assert!(probe.take().is_empty());
}

#[actix::test]
async fn exhausted_ids_are_reported_and_freed_ids_reused() {
    let (manager, probe) = start_with_probe(ServiceIdRanges {
        service: 1..=2,
        backend: 1..=2,
    });
    for (n, frontend) in ["10.96.0.1:80", "10.96.0.2:80"].into_iter().enumerate() {
        let done = manager
            .send(api(None, frontend, &[]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(done.id, ServiceId::new(n as u16 + 1));
    }
    assert!(matches!(
        manager.send(api(None, "10.96.0.3:80", &[])).await.unwrap(),
        Err(ServiceError::ServiceIdsExhausted { first: 1, last: 2 })
    ));
    assert!(matches!(
        manager
            .send(api(
                None,
                "10.96.0.1:80",
                &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
            ))
            .await
            .unwrap(),
        Err(ServiceError::BackendIdsExhausted {
            needed: 3,
            free: 2,
            ..
        })
    ));
    manager
        .send(DeleteServiceApi {
            id: ServiceId::new(1),
        })
        .await
        .unwrap()
        .unwrap();
    let reused = manager
        .send(api(None, "10.96.0.3:80", &[]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reused.id, ServiceId::new(1));
    let seen = probe.take();
    assert_eq!(seen.len(), 4, "{seen:?}");
}

fn start_datapath(fake: &FakeDatapath) -> Addr<DatapathActor> {
    DatapathActor::new(Box::new(fake.clone()), DatapathActorConfig::default()).start()
}

fn outputs(datapath: &Addr<DatapathActor>) -> ServiceOutputs {
    ServiceOutputs {
        upsert: datapath.clone().recipient(),
        delete: datapath.clone().recipient(),
    }
}

#[actix::test]
async fn a_restarted_manager_adopts_ids_from_the_datapath_maps() {
    tokio::time::pause();
    let fake = FakeDatapath::new();
    let datapath = start_datapath(&fake);
    datapath.send(InitialSyncDone).await.unwrap();
    let (manager, _) = ServiceManager::new(
        ServiceIdRanges::default(),
        ServiceSnapshot::default(),
        outputs(&datapath),
    );
    let manager = manager.start();
    manager
        .send(api(
            Some(7),
            "10.96.0.10:80",
            &["10.0.0.1:8080", "10.0.0.2:8080"],
        ))
        .await
        .unwrap()
        .unwrap();
    manager
        .send(api(None, "10.96.0.11:53", &["10.0.0.2:8080"]))
        .await
        .unwrap()
        .unwrap();
    let mut terminating = api(None, "10.96.0.12:80", &[]);
    terminating.backends = vec![ApiBackend {
        addr: addr("10.0.0.3:80"),
        state: BackendState::Terminating,
    }];
    manager.send(terminating).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let before = manager.send(ListServices).await.unwrap();
    let maps_before: Vec<_> = [
        MapName::Lb4Services,
        MapName::Lb4Backends,
        MapName::Lb4ReverseNat,
    ]
    .into_iter()
    .map(|m| fake.entries(m))
    .collect();
    assert_eq!(maps_before[1].len(), 3, "three distinct backends");

    // The agent restarts: both actors go away; the pinned maps (the fake) stay.
    drop(manager);
    drop(datapath);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let datapath = start_datapath(&fake);
    let (snapshot, problems) = ServiceSnapshot::read(&datapath.clone().recipient())
        .await
        .unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    let (manager, problems) =
        ServiceManager::new(ServiceIdRanges::default(), snapshot, outputs(&datapath));
    assert!(problems.is_empty());
    let manager = manager.start();
    let after = manager.send(ListServices).await.unwrap();
    assert_eq!(after, before);

    // After the initial sync nothing is pruned: the restored services are claimed.
    datapath.send(InitialSyncDone).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let maps_after: Vec<_> = [
        MapName::Lb4Services,
        MapName::Lb4Backends,
        MapName::Lb4ReverseNat,
    ]
    .into_iter()
    .map(|m| fake.entries(m))
    .collect();
    assert_eq!(maps_after, maps_before);

    // New ids continue after the restored ones; shared backends keep their ids.
    let next = manager
        .send(api(
            None,
            "10.96.0.20:80",
            &["10.0.0.2:8080", "10.0.0.9:8080"],
        ))
        .await
        .unwrap()
        .unwrap();
    // Restored ids are 7, 1 and 2; the search resumes after the highest.
    assert_eq!(next.id, ServiceId::new(8));
    let list = manager.send(ListServices).await.unwrap();
    let new = list.iter().find(|s| s.id == next.id).unwrap();
    let first = before
        .iter()
        .find(|s| s.frontend == fe("10.96.0.10:80"))
        .unwrap();
    assert_eq!(first.id, ServiceId::new(7));
    let shared = first.backends[1].id;
    assert_eq!(new.backends[0].id, shared);
    assert_eq!(new.backends[1].id, BackendId::new(4));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(fake.get(&MapKey::Backend(BackendId::new(4))).is_some());
}
