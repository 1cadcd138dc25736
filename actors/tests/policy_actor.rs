//! The policy repository actor against probe actors standing in for the Datapath actor and
//! the identity side.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix::{Actor, Addr, Context, Handler, Message, ResponseFuture};
use actors::identity::IdentitiesChanged;
use actors::persist::SnapshotStore;
use actors::policy::{
    CidrIdentitiesWanted, Dump, EndpointPolicyWait, EndpointPolicyWanted, EndpointRemoved,
    FilePolicyStore, IdentityAdded, IdentityRemoved, MemoryPolicyStore, PolicyConfig, PolicyDelete,
    PolicyError, PolicyImport, PolicyRepository, PolicySnapshot, PolicySource, PolicyState,
    PolicyWait, Revision, policy_name_labels,
};
use datapath::api::{Direction, EndpointId, PolicyEntry, PolicyKey, Protocol};
use datapath::reconciler::messages::SetEndpointPolicy;
use model::identity::{ClusterName, NumericIdentity};
use model::labels::Labels;
use model::policy::parse_documents;
use tokio::sync::Semaphore;

/// Records what it receives. Endpoint policies are taken only when the gate has a permit, so
/// a test can hold the "datapath" back.
#[derive(Debug)]
struct Probe {
    policies: Arc<Mutex<Vec<SetEndpointPolicy>>>,
    cidrs: Arc<Mutex<Vec<CidrIdentitiesWanted>>>,
    gate: Arc<Semaphore>,
}

impl Actor for Probe {
    type Context = Context<Self>;
}

impl Handler<SetEndpointPolicy> for Probe {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: SetEndpointPolicy, _ctx: &mut Context<Self>) -> Self::Result {
        let policies = self.policies.clone();
        let gate = self.gate.clone();
        Box::pin(async move {
            if let Ok(permit) = gate.acquire().await {
                permit.forget();
            }
            policies
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(msg);
        })
    }
}

impl Handler<CidrIdentitiesWanted> for Probe {
    type Result = ();

    fn handle(&mut self, msg: CidrIdentitiesWanted, _ctx: &mut Context<Self>) {
        self.cidrs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(msg);
    }
}

/// Answers once every message sent to the probe before it has been handled.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct Sync;

impl Handler<Sync> for Probe {
    type Result = ();

    fn handle(&mut self, _msg: Sync, _ctx: &mut Context<Self>) {}
}

struct Harness {
    repo: Addr<PolicyRepository>,
    probe: Addr<Probe>,
    policies: Arc<Mutex<Vec<SetEndpointPolicy>>>,
    cidrs: Arc<Mutex<Vec<CidrIdentitiesWanted>>>,
    gate: Arc<Semaphore>,
}

impl Harness {
    fn start(open: bool) -> Harness {
        Self::start_with(open, |state, datapath, cidrs| {
            PolicyRepository::new(state, datapath, cidrs)
        })
    }

    /// A harness whose repository persists its rules in `store`.
    fn with_store(store: &MemoryPolicyStore) -> Harness {
        let store = store.clone();
        Self::start_with(true, move |state, datapath, cidrs| {
            PolicyRepository::with_store(state, Box::new(store), datapath, cidrs).unwrap()
        })
    }

    fn start_with(
        open: bool,
        build: impl FnOnce(
            PolicyState,
            actix::Recipient<SetEndpointPolicy>,
            actix::Recipient<CidrIdentitiesWanted>,
        ) -> PolicyRepository,
    ) -> Harness {
        let policies = Arc::new(Mutex::new(Vec::new()));
        let cidrs = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Semaphore::new(if open {
            Semaphore::MAX_PERMITS
        } else {
            0
        }));
        let probe = Probe {
            policies: policies.clone(),
            cidrs: cidrs.clone(),
            gate: gate.clone(),
        }
        .start();
        let repo = build(
            PolicyState::new(PolicyConfig::default()),
            probe.clone().recipient(),
            probe.clone().recipient(),
        )
        .start();
        Harness {
            repo,
            probe,
            policies,
            cidrs,
            gate,
        }
    }

    /// The entries of the last policy the datapath took for `endpoint`.
    fn last(&self, endpoint: u16) -> Option<BTreeMap<PolicyKey, PolicyEntry>> {
        self.policies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .rev()
            .find(|p| p.endpoint == EndpointId::new(endpoint))
            .map(|p| p.entries.clone())
    }

    fn sent(&self) -> usize {
        self.policies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

fn pod(app: &str) -> Labels {
    Labels::from_k8s_pod("default", [("app", app)], &ClusterName::default()).unwrap()
}

fn wanted(endpoint: u16, identity: u32, app: &str) -> EndpointPolicyWanted {
    EndpointPolicyWanted {
        endpoint: EndpointId::new(endpoint),
        identity: NumericIdentity::new(identity),
        labels: pod(app),
        named_ports: Vec::new(),
    }
}

const POLICY: &str = "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: backend, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: '80', protocol: TCP}]}]
  egress:
  - toCIDRSet: [{cidr: 192.168.0.0/16, except: [192.168.1.0/24]}]
";

fn import() -> PolicyImport {
    PolicyImport {
        source: PolicySource::Documents(parse_documents(POLICY).unwrap()),
    }
}

fn tcp80(identity: u32) -> PolicyKey {
    PolicyKey::port(
        NumericIdentity::new(identity),
        Direction::Ingress,
        Protocol::TCP,
        80,
    )
    .unwrap()
}

#[actix::test]
async fn endpoint_policies_reach_the_datapath_and_follow_rules_and_identities() {
    let h = Harness::start(true);
    let revision = h.repo.send(wanted(1, 1001, "backend")).await.unwrap();
    assert_eq!(revision, Revision::INITIAL);
    h.repo.send(wanted(2, 1002, "db")).await.unwrap();
    assert_eq!(
        h.repo.send(PolicyWait { revision }).await.unwrap().unwrap(),
        revision
    );
    assert_eq!(h.last(1).unwrap().len(), 2, "allow-all both directions");

    let revision = h.repo.send(import()).await.unwrap().unwrap();
    assert_eq!(revision, Revision::new(2));
    assert_eq!(
        h.repo.send(PolicyWait { revision }).await.unwrap().unwrap(),
        revision
    );
    let sent = h.sent();
    assert_eq!(sent, 3, "only the selected endpoint got a new policy");
    h.probe.send(Sync).await.unwrap();
    assert_eq!(
        h.cidrs.lock().unwrap().as_slice(),
        [CidrIdentitiesWanted {
            added: vec![
                "192.168.0.0/16".parse().unwrap(),
                "192.168.1.0/24".parse().unwrap()
            ],
            removed: vec![],
        }]
    );

    // A new frontend identity reaches the backend's map, and only the backend's.
    h.repo
        .send(IdentityAdded {
            identities: vec![(NumericIdentity::new(1000), pod("frontend"))],
        })
        .await
        .unwrap();
    h.probe.send(Sync).await.unwrap();
    h.repo.send(Dump).await.unwrap();
    assert_eq!(h.sent(), sent + 1);
    let entries = h.last(1).unwrap();
    assert_eq!(entries.get(&tcp80(1000)), Some(&PolicyEntry::allow()));

    h.repo
        .send(IdentityRemoved {
            identities: vec![NumericIdentity::new(1000)],
        })
        .await
        .unwrap();
    h.probe.send(Sync).await.unwrap();
    h.repo.send(Dump).await.unwrap();
    assert!(!h.last(1).unwrap().contains_key(&tcp80(1000)));

    let dump = h.repo.send(Dump).await.unwrap();
    assert_eq!(dump.revision, revision);
    assert_eq!(dump.realized_revision, revision);
    assert_eq!(dump.rules.len(), 1);
    assert_eq!(dump.endpoints.len(), 2);
    assert!(dump.endpoints[0].ingress_enforced && dump.endpoints[0].egress_enforced);
    let json = serde_json::to_value(&dump).unwrap();
    assert_eq!(json["enforcement"], "default");

    let deleted = h
        .repo
        .send(PolicyDelete {
            labels: policy_name_labels("backend", Some("default")),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!((deleted.revision, deleted.deleted), (Revision::new(3), 1));
    h.repo
        .send(PolicyWait {
            revision: deleted.revision,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(h.last(1).unwrap().len(), 2);
    h.probe.send(Sync).await.unwrap();
    assert_eq!(h.cidrs.lock().unwrap().len(), 2);
}

#[actix::test]
async fn policy_wait_answers_only_once_the_datapath_took_the_policy() {
    let h = Harness::start(false);
    h.repo.send(wanted(1, 1001, "backend")).await.unwrap();
    let revision = h.repo.send(import()).await.unwrap().unwrap();
    let waiting = h.repo.send(PolicyWait { revision });
    let repo = h.repo.clone();
    let waiter = actix::spawn(waiting);
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert!(
        !waiter.is_finished(),
        "answered before the datapath took anything"
    );
    assert_eq!(
        repo.send(Dump).await.unwrap().realized_revision,
        Revision::new(0)
    );
    h.gate.add_permits(Semaphore::MAX_PERMITS);
    assert_eq!(waiter.await.unwrap().unwrap().unwrap(), revision);
    // Only the latest entries of the endpoint were sent once it was its turn again.
    assert!(
        h.last(1)
            .unwrap()
            .contains_key(&PolicyKey::l3(NumericIdentity::HOST, Direction::Ingress))
    );
}

#[actix::test]
async fn removing_the_slowest_endpoint_releases_waiters_and_bad_input_is_refused() {
    let h = Harness::start(false);
    h.repo.send(wanted(1, 1001, "backend")).await.unwrap();
    let revision = h.repo.send(import()).await.unwrap().unwrap();
    let waiting = h.repo.send(PolicyWait { revision });
    let waiter = actix::spawn(waiting);
    h.repo
        .send(EndpointRemoved {
            endpoint: EndpointId::new(1),
        })
        .await
        .unwrap();
    assert_eq!(waiter.await.unwrap().unwrap().unwrap(), revision);

    let future = h
        .repo
        .send(PolicyWait {
            revision: Revision::new(99),
        })
        .await
        .unwrap();
    assert!(matches!(future, Err(PolicyError::FutureRevision { .. })));

    let before = h.repo.send(Dump).await.unwrap();
    let bad = h
        .repo
        .send(PolicyImport {
            source: PolicySource::Documents(
                parse_documents(
                    "
kind: CiliumNetworkPolicy
metadata: {name: fqdn}
spec:
  endpointSelector: {}
  egress: [{toFQDNs: [{matchName: cilium.io}]}]
",
                )
                .unwrap(),
            ),
        })
        .await
        .unwrap();
    let error = bad.unwrap_err();
    assert!(error.to_string().contains("toFQDNs"), "{error}");
    assert_eq!(h.repo.send(Dump).await.unwrap(), before);
}

#[actix::test]
async fn identity_changes_are_taken_straight_from_the_identity_actor() {
    let h = Harness::start(true);
    h.repo.send(wanted(1, 1001, "backend")).await.unwrap();
    h.repo.send(import()).await.unwrap().unwrap();
    h.repo
        .send(IdentitiesChanged {
            added: vec![
                (NumericIdentity::new(1000), pod("frontend")),
                (NumericIdentity::new(1003), pod("frontend")),
            ],
            removed: Vec::new(),
        })
        .await
        .unwrap();
    h.repo.send(Dump).await.unwrap();
    h.probe.send(Sync).await.unwrap();
    let entries = h.last(1).unwrap();
    assert!(entries.contains_key(&tcp80(1000)) && entries.contains_key(&tcp80(1003)));

    // One change that removes one identity and relabels another away from the selector.
    h.repo
        .send(IdentitiesChanged {
            added: vec![(NumericIdentity::new(1003), pod("other"))],
            removed: vec![NumericIdentity::new(1000)],
        })
        .await
        .unwrap();
    h.repo.send(Dump).await.unwrap();
    h.probe.send(Sync).await.unwrap();
    let entries = h.last(1).unwrap();
    assert!(!entries.contains_key(&tcp80(1000)) && !entries.contains_key(&tcp80(1003)));
}

#[actix::test]
async fn an_endpoint_waits_for_its_own_policy_only() {
    let h = Harness::start(false);
    let revision = h.repo.send(wanted(1, 1001, "backend")).await.unwrap();
    h.repo.send(wanted(2, 1002, "db")).await.unwrap();
    let wait = |endpoint: u16, revision: Revision| {
        h.repo.send(EndpointPolicyWait {
            endpoint: EndpointId::new(endpoint),
            revision,
        })
    };
    let first = wait(1, revision);
    let mut second = Box::pin(wait(2, revision));
    let mut node = Box::pin(h.repo.send(PolicyWait { revision }));
    // The datapath takes one update, endpoint 1's (updates leave in endpoint order).
    h.gate.add_permits(1);
    assert_eq!(first.await.unwrap().unwrap(), revision);
    let pending = Duration::from_millis(50);
    assert!(tokio::time::timeout(pending, &mut second).await.is_err());
    assert!(tokio::time::timeout(pending, &mut node).await.is_err());

    assert!(matches!(
        wait(9, revision).await.unwrap(),
        Err(PolicyError::UnknownEndpoint { .. })
    ));
    assert!(matches!(
        wait(1, Revision::new(revision.get() + 1)).await.unwrap(),
        Err(PolicyError::FutureRevision { .. })
    ));

    // Removing endpoint 2 fails its waiter and lets the node-wide one through.
    h.repo
        .send(EndpointRemoved {
            endpoint: EndpointId::new(2),
        })
        .await
        .unwrap();
    assert!(matches!(
        second.await.unwrap(),
        Err(PolicyError::UnknownEndpoint { .. })
    ));
    assert_eq!(node.await.unwrap().unwrap(), revision);
}

const OTHER: &str = "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: backend}}]
";

#[actix::test]
async fn rules_are_persisted_a_failed_save_changes_nothing_and_a_restart_restores_them() {
    let store = MemoryPolicyStore::new();
    let h = Harness::with_store(&store);
    h.repo.send(wanted(1, 1001, "backend")).await.unwrap();
    let identities = IdentitiesChanged {
        added: vec![(NumericIdentity::new(1000), pod("frontend"))],
        removed: Vec::new(),
    };
    h.repo.send(identities.clone()).await.unwrap();
    let revision = h.repo.send(import()).await.unwrap().unwrap();
    let saved = store.saved().unwrap();
    assert_eq!(saved.revision, revision);
    assert_eq!(saved.rules.len(), 1);

    // The store refuses: neither an import nor a delete changes the repository.
    store.set_fail_saves(true);
    let other = PolicyImport {
        source: PolicySource::Documents(parse_documents(OTHER).unwrap()),
    };
    assert!(matches!(
        h.repo.send(other.clone()).await.unwrap(),
        Err(PolicyError::Persist(_))
    ));
    assert!(matches!(
        h.repo
            .send(PolicyDelete { labels: Vec::new() })
            .await
            .unwrap(),
        Err(PolicyError::Persist(_))
    ));
    let dump = h.repo.send(Dump).await.unwrap();
    assert_eq!((dump.revision, dump.rules.len()), (revision, 1));
    assert_eq!(store.saved(), Some(saved.clone()));
    store.set_fail_saves(false);
    h.repo.send(PolicyWait { revision }).await.unwrap().unwrap();
    h.probe.send(Sync).await.unwrap();
    let entries = h.last(1).unwrap();

    // A new repository on the same store: same rules, same revision, same entries, and the
    // CIDR prefixes are requested again as soon as it runs.
    let restarted = Harness::with_store(&store);
    let dump_after = restarted.repo.send(Dump).await.unwrap();
    assert_eq!(dump_after.revision, revision);
    assert_eq!(dump_after.rules, dump.rules);
    restarted.repo.send(identities).await.unwrap();
    restarted
        .repo
        .send(wanted(1, 1001, "backend"))
        .await
        .unwrap();
    restarted
        .repo
        .send(PolicyWait { revision })
        .await
        .unwrap()
        .unwrap();
    restarted.probe.send(Sync).await.unwrap();
    assert_eq!(restarted.last(1).unwrap(), entries);
    assert_eq!(
        restarted.cidrs.lock().unwrap().as_slice(),
        h.cidrs.lock().unwrap().as_slice()
    );
    // Revisions go on from the restored one.
    assert_eq!(
        restarted.repo.send(other).await.unwrap().unwrap(),
        Revision::new(revision.get() + 1)
    );
}

#[actix::test]
async fn a_store_that_cannot_be_restored_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut file = FilePolicyStore::in_state_dir(dir.path());
    std::fs::write(file.path(), b"[").unwrap();
    let start = |store: FilePolicyStore| {
        PolicyRepository::with_store(
            PolicyState::new(PolicyConfig::default()),
            Box::new(store),
            Sink.start().recipient(),
            Sink.start().recipient(),
        )
    };
    assert!(matches!(start(file.clone()), Err(PolicyError::Load(_))));

    // A persisted rule that no longer imports (here: no endpointSelector).
    file.save(&PolicySnapshot {
        revision: Revision::new(4),
        rules: vec![model::policy::Rule::default()],
    })
    .unwrap();
    assert!(matches!(start(file), Err(PolicyError::Restore(_))));
}

/// Swallows the repository's output.
#[derive(Debug)]
struct Sink;

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Handler<SetEndpointPolicy> for Sink {
    type Result = ();

    fn handle(&mut self, _msg: SetEndpointPolicy, _ctx: &mut Context<Self>) {}
}

impl Handler<CidrIdentitiesWanted> for Sink {
    type Result = ();

    fn handle(&mut self, _msg: CidrIdentitiesWanted, _ctx: &mut Context<Self>) {}
}
