//! The kvstore watchers against the memory backend and the real policy repository and
//! service manager: create, update, delete, malformed values skipped without disturbing
//! others, an outage that changes nothing, and policies deleted while the agent was down
//! removed after its restart.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::{Actor, Addr, Arbiter, Context, Handler};
use actors::clusterstate::{
    AFFINITY_LABEL, ClusterStateDump, Dump as WatcherDump, MemoryImportedPoliciesStore,
    MemoryServiceRecordStore, PolicyWatcher, PolicyWatcherConfig, PolicyWatcherOutputs,
    RemoteServices, ServiceWatcher, ServiceWatcherConfig, ServiceWatcherOutputs,
};
use actors::policy::{
    CidrIdentitiesWanted, Dump as PolicyDump, MemoryPolicyStore, PolicyConfig, PolicyRepository,
    PolicyState,
};
use actors::service::{
    ListServices, ServiceIdRanges, ServiceInfo, ServiceManager, ServiceOutputs, ServiceSnapshot,
};
use datapath::api::Frontend;
use datapath::reconciler::messages::SetEndpointPolicy;
use datapath::reconciler::{DeleteService, ReconcileError, ServiceSpec, UpsertService};
use kvstore::Backend;
use kvstore::clock::SystemClock;
use kvstore::keys::{ClusterService, L4Addr, StoreValue, policy_key, service_key};
use kvstore::memory::MemoryStore;
use model::identity::ClusterName;

/// Swallows what the policy repository sends to the datapath and the identity side.
#[derive(Debug)]
struct Sink;

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Handler<SetEndpointPolicy> for Sink {
    type Result = ();
    fn handle(&mut self, _: SetEndpointPolicy, _: &mut Context<Self>) {}
}

impl Handler<CidrIdentitiesWanted> for Sink {
    type Result = ();
    fn handle(&mut self, _: CidrIdentitiesWanted, _: &mut Context<Self>) {}
}

/// The services "datapath": keeps the last spec of every frontend, as the pinned lb maps
/// would across an agent restart.
#[derive(Debug, Default, Clone)]
struct LbMaps {
    services: Arc<Mutex<BTreeMap<Frontend, ServiceSpec>>>,
}

impl LbMaps {
    fn snapshot(&self) -> ServiceSnapshot {
        ServiceSnapshot {
            services: self.services.lock().unwrap().values().cloned().collect(),
        }
    }
}

impl Actor for LbMaps {
    type Context = Context<Self>;
}

impl Handler<UpsertService> for LbMaps {
    type Result = Result<(), ReconcileError>;
    fn handle(&mut self, msg: UpsertService, _: &mut Context<Self>) -> Self::Result {
        self.services.lock().unwrap().insert(msg.0.frontend, msg.0);
        Ok(())
    }
}

impl Handler<DeleteService> for LbMaps {
    type Result = ();
    fn handle(&mut self, msg: DeleteService, _: &mut Context<Self>) {
        self.services.lock().unwrap().remove(&msg.frontend);
    }
}

fn store() -> (MemoryStore, Arc<dyn Backend>) {
    let store = MemoryStore::new(Arc::new(SystemClock::new()));
    let backend: Arc<dyn Backend> = Arc::new(store.client());
    (store, backend)
}

/// Polls `probe` until `done` holds, failing after 10 s.
async fn eventually<T, F, Fut>(what: &str, mut probe: F, done: impl Fn(&T) -> bool) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
    T: std::fmt::Debug,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let value = probe().await;
        if done(&value) {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last: {value:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn cnp(name: &str, port: u16) -> String {
    format!(
        r#"{{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy",
           "metadata":{{"name":"{name}","namespace":"default"}},
           "spec":{{"endpointSelector":{{"matchLabels":{{"app":"{name}"}}}},
                    "ingress":[{{"toPorts":[{{"ports":[{{"port":"{port}","protocol":"TCP"}}]}}]}}]}}}}"#
    )
}

const CCNP: &str = r#"{"apiVersion":"cilium.io/v2","kind":"CiliumClusterwideNetworkPolicy",
    "metadata":{"name":"deny-world"},
    "spec":{"endpointSelector":{},"ingressDeny":[{"fromEntities":["world"]}]}}"#;

const KNP: &str = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
    "metadata":{"name":"np","namespace":"prod"},
    "spec":{"podSelector":{},"policyTypes":["Ingress"]}}"#;

/// The policies in the repository: (name label value, namespace, ports mentioned).
async fn policies(repo: &Addr<PolicyRepository>) -> Vec<String> {
    let dump = repo.send(PolicyDump).await.unwrap();
    let mut names: Vec<String> = dump
        .rules
        .iter()
        .map(|rule| {
            let label = |key: &str| {
                rule.labels
                    .iter()
                    .find_map(|l| l.strip_prefix(&format!("k8s:{key}=")))
                    .unwrap_or("-")
                    .to_owned()
            };
            let ports = serde_json::to_string(&rule.rule.ingress).unwrap();
            let port = ["80", "81", "82"]
                .into_iter()
                .find(|p| ports.contains(&format!("\"{p}\"")))
                .unwrap_or("-");
            format!(
                "{}/{}:{port}",
                label("io.cilium.k8s.policy.namespace"),
                label("io.cilium.k8s.policy.name")
            )
        })
        .collect();
    names.sort();
    names
}

async fn dump<A>(watcher: &Addr<A>) -> ClusterStateDump
where
    A: Actor<Context = Context<A>> + Handler<WatcherDump>,
{
    watcher.send(WatcherDump).await.unwrap()
}

struct PolicyAgent {
    arbiter: Arbiter,
    repo: Addr<PolicyRepository>,
    watcher: Addr<PolicyWatcher>,
}

impl PolicyAgent {
    /// One agent life: a repository over `rules` and a watcher over `record`, on their own
    /// arbiter so that stopping it stops both.
    fn start(
        backend: Arc<dyn Backend>,
        rules: MemoryPolicyStore,
        record: MemoryImportedPoliciesStore,
    ) -> PolicyAgent {
        let arbiter = Arbiter::new();
        let sink = Sink::start_in_arbiter(&arbiter.handle(), |_| Sink);
        let (datapath, cidrs) = (sink.clone().recipient(), sink.recipient());
        let repo = PolicyRepository::start_in_arbiter(&arbiter.handle(), move |_| {
            PolicyRepository::with_store(
                PolicyState::new(PolicyConfig::default()),
                Box::new(rules),
                datapath,
                cidrs,
            )
            .unwrap()
        });
        let outputs = PolicyWatcherOutputs {
            import: repo.clone().recipient(),
            delete: repo.clone().recipient(),
        };
        let watcher = PolicyWatcher::new(
            PolicyWatcherConfig {
                backend,
                record: Box::new(record),
            },
            outputs,
        )
        .unwrap();
        let watcher = PolicyWatcher::start_in_arbiter(&arbiter.handle(), |_| watcher);
        PolicyAgent {
            arbiter,
            repo,
            watcher,
        }
    }

    fn stop(self) {
        self.arbiter.stop();
        self.arbiter.join().unwrap();
    }
}

#[actix_rt::test]
async fn policies_follow_the_kvstore_and_bad_documents_change_nothing() {
    let (store, backend) = store();
    let put = |key: String, value: String| {
        let backend = Arc::clone(&backend);
        async move { backend.put(&key, value.into_bytes(), None).await.unwrap() }
    };
    put(policy_key("default", "web"), cnp("web", 80)).await;
    put(policy_key("_clusterwide", "deny-world"), CCNP.to_owned()).await;
    put(policy_key("prod", "np"), KNP.to_owned()).await;
    // Malformed from the start: skipped, the others apply.
    put(policy_key("default", "broken"), "{\"kind\": [".to_owned()).await;

    let agent = PolicyAgent::start(
        Arc::clone(&backend),
        MemoryPolicyStore::new(),
        MemoryImportedPoliciesStore::new(),
    );
    let repo = agent.repo.clone();
    eventually(
        "the three policies",
        || policies(&repo),
        |p| p == &["-/deny-world:-", "default/web:80", "prod/np:-"],
    )
    .await;
    let watched = dump(&agent.watcher).await;
    assert!(watched.synced);
    assert_eq!(watched.skipped.len(), 1);
    assert_eq!(watched.skipped[0].key, "default/broken");

    // Update.
    put(policy_key("default", "web"), cnp("web", 81)).await;
    eventually(
        "the update",
        || policies(&repo),
        |p| p.contains(&"default/web:81".to_owned()),
    )
    .await;

    // An update that does not validate leaves the last good version enforced.
    let revision = repo.send(PolicyDump).await.unwrap().revision;
    put(
        policy_key("default", "web"),
        cnp("web", 81).replace("\"81\"", "\"99999\""),
    )
    .await;
    // A document under a key that names another policy is refused too.
    put(policy_key("default", "elsewhere"), cnp("web", 82)).await;
    let watcher = agent.watcher.clone();
    eventually("both skipped", || dump(&watcher), |d| d.skipped.len() == 3).await;
    assert_eq!(
        policies(&repo).await,
        ["-/deny-world:-", "default/web:81", "prod/np:-"]
    );
    assert_eq!(repo.send(PolicyDump).await.unwrap().revision, revision);

    // Delete, cluster-wide included.
    backend
        .delete(&policy_key("_clusterwide", "deny-world"))
        .await
        .unwrap();
    eventually(
        "the delete",
        || policies(&repo),
        |p| p == &["default/web:81", "prod/np:-"],
    )
    .await;

    // An outage changes nothing, however long it lasts.
    store.set_unavailable(true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(policies(&repo).await, ["default/web:81", "prod/np:-"]);
    store.set_unavailable(false);
    // After it, a delete reaches the repository again.
    backend.delete(&policy_key("prod", "np")).await.unwrap();
    eventually(
        "the delete after the outage",
        || policies(&repo),
        |p| p == &["default/web:81"],
    )
    .await;
    agent.stop();
}

#[actix_rt::test]
async fn policies_deleted_while_the_agent_was_down_go_after_its_restart() {
    let (_store, backend) = store();
    let rules = MemoryPolicyStore::new();
    let record = MemoryImportedPoliciesStore::new();
    backend
        .put(
            &policy_key("default", "web"),
            cnp("web", 80).into_bytes(),
            None,
        )
        .await
        .unwrap();
    backend
        .put(
            &policy_key("default", "gone"),
            cnp("gone", 81).into_bytes(),
            None,
        )
        .await
        .unwrap();
    // A rule imported through the API, not from the kvstore: a restart must keep it.
    let agent = PolicyAgent::start(Arc::clone(&backend), rules.clone(), record.clone());
    let repo = agent.repo.clone();
    let api_rule = actors::policy::PolicyImport {
        source: actors::policy::PolicySource::Documents(
            model::policy::parse_documents(&cnp("api", 82)).unwrap(),
        ),
    };
    repo.send(api_rule).await.unwrap().unwrap();
    eventually("all three", || policies(&repo), |p| p.len() == 3).await;
    agent.stop();

    // While the agent is down, `gone` is deleted from the kvstore.
    backend
        .delete(&policy_key("default", "gone"))
        .await
        .unwrap();

    let agent = PolicyAgent::start(Arc::clone(&backend), rules, record);
    let repo = agent.repo.clone();
    // The repository restored all three; the watcher's first listing removes `gone`.
    let restored = repo.send(PolicyDump).await.unwrap().revision;
    eventually(
        "the stale policy removed",
        || policies(&repo),
        |p| p == &["default/api:82", "default/web:80"],
    )
    .await;
    // `web` was not re-imported (same value): one revision for the delete only.
    let watcher = agent.watcher.clone();
    eventually("synced", || dump(&watcher), |d| d.synced).await;
    assert_eq!(
        repo.send(PolicyDump).await.unwrap().revision.get(),
        restored.get() + 1
    );
    agent.stop();
}

fn cluster_service(
    cluster: &str,
    name: &str,
    frontends: &[(&str, u16)],
    backends: &[(&str, u16)],
) -> ClusterService {
    let port = |port: u16| {
        std::collections::BTreeMap::from([(
            "http".to_owned(),
            Some(L4Addr {
                protocol: "TCP".into(),
                port,
            }),
        )])
    };
    ClusterService {
        cluster: cluster.into(),
        namespace: "default".into(),
        name: name.into(),
        frontends: frontends
            .iter()
            .map(|(ip, p)| ((*ip).to_owned(), port(*p)))
            .collect(),
        backends: backends
            .iter()
            .map(|(ip, p)| ((*ip).to_owned(), port(*p)))
            .collect(),
        ..ClusterService::default()
    }
}

fn summary(services: &[ServiceInfo]) -> Vec<String> {
    services
        .iter()
        .map(|s| {
            let backends: Vec<String> = s.backends.iter().map(|b| b.addr.to_string()).collect();
            format!("{} -> {}", s.frontend, backends.join(","))
        })
        .collect()
}

#[actix_rt::test]
async fn cluster_services_become_services_of_the_manager() {
    let (store, backend) = store();
    let put = |svc: ClusterService| {
        let backend = Arc::clone(&backend);
        async move {
            let key = service_key(&svc.cluster, &svc.namespace, &svc.name);
            backend
                .put(&key, svc.encode().unwrap(), None)
                .await
                .unwrap();
        }
    };
    put(cluster_service(
        "c1",
        "web",
        &[("10.96.0.10", 80), ("10.96.0.11", 80)],
        &[("10.0.1.5", 8080), ("10.0.2.5", 8080)],
    ))
    .await;
    // Another cluster's service is not ours.
    put(cluster_service("c2", "web", &[("10.96.1.10", 80)], &[])).await;
    backend
        .put(
            &service_key("c1", "default", "broken"),
            b"{\"cluster\":".to_vec(),
            None,
        )
        .await
        .unwrap();

    let maps = LbMaps::default();
    let agent = ServiceAgent::start(Arc::clone(&backend), &maps, MemoryServiceRecordStore::new());
    let (manager, watcher) = (agent.manager.clone(), agent.watcher.clone());
    let list = || {
        let manager = manager.clone();
        async move { summary(&manager.send(ListServices).await.unwrap()) }
    };
    eventually("two services", list, |s| {
        s == &[
            "10.96.0.10:80/TCP -> 10.0.1.5:8080,10.0.2.5:8080",
            "10.96.0.11:80/TCP -> 10.0.1.5:8080,10.0.2.5:8080",
        ]
    })
    .await;
    let watched = dump(&watcher).await;
    assert_eq!(watched.skipped.len(), 1);
    assert_eq!(watched.applied.len(), 1);
    assert_eq!(watched.applied[0].services.len(), 2);

    // Change: one frontend goes, a backend goes.
    put(cluster_service(
        "c1",
        "web",
        &[("10.96.0.10", 80)],
        &[("10.0.1.5", 8080)],
    ))
    .await;
    eventually("the update", list, |s| {
        s == &["10.96.0.10:80/TCP -> 10.0.1.5:8080"]
    })
    .await;

    // An outage changes nothing.
    store.set_unavailable(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(list().await, ["10.96.0.10:80/TCP -> 10.0.1.5:8080"]);
    store.set_unavailable(false);

    backend
        .delete(&service_key("c1", "default", "web"))
        .await
        .unwrap();
    eventually("the delete", list, |s| s.is_empty()).await;
    assert!(dump(&watcher).await.applied.is_empty());
    agent.stop();
}

struct ServiceAgent {
    arbiter: Arbiter,
    manager: Addr<ServiceManager>,
    watcher: Addr<ServiceWatcher>,
}

impl ServiceAgent {
    /// One agent life: a manager adopting what `maps` holds and a watcher over `record`.
    fn start(
        backend: Arc<dyn Backend>,
        maps: &LbMaps,
        record: MemoryServiceRecordStore,
    ) -> ServiceAgent {
        let arbiter = Arbiter::new();
        let snapshot = maps.snapshot();
        let maps = maps.clone();
        let maps = LbMaps::start_in_arbiter(&arbiter.handle(), |_| maps);
        let manager = ServiceManager::start_in_arbiter(&arbiter.handle(), move |_| {
            let (manager, problems) = ServiceManager::new(
                ServiceIdRanges::default(),
                snapshot,
                ServiceOutputs {
                    upsert: maps.clone().recipient(),
                    delete: maps.recipient(),
                },
            );
            assert!(problems.is_empty(), "{problems:?}");
            manager
        });
        let watcher = ServiceWatcher::new(
            ServiceWatcherConfig {
                backend,
                cluster: "c1".into(),
                record: Box::new(record),
            },
            ServiceWatcherOutputs {
                upsert: manager.clone().recipient(),
                delete: manager.clone().recipient(),
                list: manager.clone().recipient(),
            },
        )
        .unwrap();
        let watcher = ServiceWatcher::start_in_arbiter(&arbiter.handle(), |_| watcher);
        ServiceAgent {
            arbiter,
            manager,
            watcher,
        }
    }

    fn stop(self) {
        self.arbiter.stop();
        self.arbiter.join().unwrap();
    }
}

#[actix_rt::test]
async fn services_deleted_while_the_agent_was_down_go_after_its_restart() {
    let (_store, backend) = store();
    for (name, ip) in [("a", "10.96.0.10"), ("b", "10.96.0.11")] {
        let svc = cluster_service("c1", name, &[(ip, 80)], &[("10.0.1.5", 8080)]);
        backend
            .put(
                &service_key("c1", "default", name),
                svc.encode().unwrap(),
                None,
            )
            .await
            .unwrap();
    }
    let maps = LbMaps::default();
    let record = MemoryServiceRecordStore::new();
    let agent = ServiceAgent::start(Arc::clone(&backend), &maps, record.clone());
    let manager = agent.manager.clone();
    let services = eventually(
        "both services",
        || {
            let manager = manager.clone();
            async move { manager.send(ListServices).await.unwrap() }
        },
        |s| s.len() == 2,
    )
    .await;
    agent.stop();

    backend
        .delete(&service_key("c1", "default", "b"))
        .await
        .unwrap();

    // The new manager adopts both services from the "datapath"; the watcher removes `b`.
    let agent = ServiceAgent::start(Arc::clone(&backend), &maps, record);
    let manager = agent.manager.clone();
    let after = eventually(
        "the stale service removed",
        || {
            let manager = manager.clone();
            async move { manager.send(ListServices).await.unwrap() }
        },
        |s| s.len() == 1,
    )
    .await;
    assert_eq!(after[0].frontend, services[0].frontend);
    assert_eq!(after[0].id, services[0].id, "a kept service keeps its id");
    assert_eq!(maps.snapshot().services.len(), 1);
    let watcher = agent.watcher.clone();
    let watched = eventually("synced", || dump(&watcher), |d| d.synced).await;
    assert_eq!(watched.applied.len(), 1);
    assert_eq!(watched.applied[0].key, "default/a");
    agent.stop();
}

#[actix_rt::test]
async fn global_services_take_shared_remote_backends_with_their_affinity() {
    let (_store, backend) = store();
    let put = |svc: ClusterService| {
        let backend = Arc::clone(&backend);
        async move {
            let key = service_key(&svc.cluster, &svc.namespace, &svc.name);
            backend
                .put(&key, svc.encode().unwrap(), None)
                .await
                .unwrap();
        }
    };
    let global = |affinity: &str, backends: &[(&str, u16)]| {
        let mut svc = cluster_service("c1", "web", &[("10.96.0.10", 80)], backends);
        svc.include_external = true;
        svc.shared = true;
        svc.labels
            .insert(AFFINITY_LABEL.to_owned(), affinity.to_owned());
        svc
    };
    let remote = |cluster: &str, backend: &str, shared: bool| {
        let mut svc = cluster_service(cluster, "web", &[("10.100.0.10", 80)], &[(backend, 8080)]);
        svc.include_external = true;
        svc.shared = shared;
        svc
    };
    put(global("none", &[("10.0.1.5", 8080)])).await;
    let maps = LbMaps::default();
    let agent = ServiceAgent::start(Arc::clone(&backend), &maps, MemoryServiceRecordStore::new());
    let (manager, watcher) = (agent.manager.clone(), agent.watcher.clone());
    let list = || {
        let manager = manager.clone();
        async move { summary(&manager.send(ListServices).await.unwrap()) }
    };
    eventually("the local service", list, |s| {
        s == &["10.96.0.10:80/TCP -> 10.0.1.5:8080"]
    })
    .await;
    let id = manager.send(ListServices).await.unwrap()[0].id;

    let c2 = ClusterName::new("c2").unwrap();
    let c3 = ClusterName::new("c3").unwrap();
    watcher
        .send(RemoteServices {
            cluster: c2.clone(),
            upserted: vec![remote("c2", "10.1.0.7", true)],
            removed: vec![],
        })
        .await
        .unwrap();
    // Not shared: ignored.
    watcher
        .send(RemoteServices {
            cluster: c3.clone(),
            upserted: vec![remote("c3", "10.2.0.7", false)],
            removed: vec![],
        })
        .await
        .unwrap();
    eventually("local and remote backends", list, |s| {
        s == &["10.96.0.10:80/TCP -> 10.0.1.5:8080,10.1.0.7:8080"]
    })
    .await;
    let services = manager.send(ListServices).await.unwrap();
    assert_eq!(services[0].id, id, "the service is updated in place");
    assert_eq!(
        maps.services.lock().unwrap().len(),
        1,
        "the remote frontend is not one of ours"
    );

    // Affinity local: only local backends while there is one, else the remote ones.
    put(global("local", &[("10.0.1.5", 8080)])).await;
    eventually("local affinity", list, |s| {
        s == &["10.96.0.10:80/TCP -> 10.0.1.5:8080"]
    })
    .await;
    put(global("local", &[])).await;
    eventually("local affinity without local backends", list, |s| {
        s == &["10.96.0.10:80/TCP -> 10.1.0.7:8080"]
    })
    .await;
    // Affinity remote: only remote backends while there is one.
    put(global("remote", &[("10.0.1.5", 8080)])).await;
    eventually("remote affinity", list, |s| {
        s == &["10.96.0.10:80/TCP -> 10.1.0.7:8080"]
    })
    .await;

    // c3 shares now; then c2 is drained: its backends leave.
    watcher
        .send(RemoteServices {
            cluster: c3,
            upserted: vec![remote("c3", "10.2.0.7", true)],
            removed: vec![],
        })
        .await
        .unwrap();
    eventually("c3 joins", list, |s| {
        s == &["10.96.0.10:80/TCP -> 10.1.0.7:8080,10.2.0.7:8080"]
    })
    .await;
    watcher
        .send(RemoteServices {
            cluster: c2,
            upserted: vec![],
            removed: vec![("default".into(), "web".into())],
        })
        .await
        .unwrap();
    eventually("c2 drained", list, |s| {
        s == &["10.96.0.10:80/TCP -> 10.2.0.7:8080"]
    })
    .await;
    let watched = dump(&watcher).await;
    assert_eq!(watched.remote.len(), 1);
    assert_eq!(watched.remote[0].cluster, "c3");
    agent.stop();
}
