//! Remote clusters' identities through the identity actor into the real policy repository:
//! selectors naming `io.cilium.k8s.policy.cluster` admit a remote cluster's pods, selectors
//! without it and the `cluster` entity admit only this cluster's, ids outside the remote
//! cluster's range never get in, and a drained cluster's identities leave the policy maps.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix::{Actor, Addr, Context, Handler};
use actors::identity::{
    AllocateIdentity, Dump as IdentityDump, IdentityActor, IdentityBackend, IdentityConfig,
    ListIdentities, LookupIdentity, RemoteIdentities, RemoteIdentityCount,
};
use actors::policy::{
    CidrIdentitiesWanted, EndpointPolicyWanted, PolicyConfig, PolicyImport, PolicyRepository,
    PolicySource, PolicyState,
};
use datapath::api::{Direction, EndpointId, PolicyEntry, PolicyKey, Protocol};
use datapath::reconciler::messages::SetEndpointPolicy;
use model::identity::{ClusterId, ClusterName, NumericIdentity};
use model::labels::Labels;
use model::policy::parse_documents;

/// Keeps the last policy the "datapath" took per endpoint.
#[derive(Debug, Default, Clone)]
struct Datapath {
    last: Arc<Mutex<BTreeMap<EndpointId, BTreeMap<PolicyKey, PolicyEntry>>>>,
}

impl Datapath {
    fn entries(&self, endpoint: EndpointId) -> BTreeMap<PolicyKey, PolicyEntry> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&endpoint)
            .cloned()
            .unwrap_or_default()
    }
}

impl Actor for Datapath {
    type Context = Context<Self>;
}

impl Handler<SetEndpointPolicy> for Datapath {
    type Result = ();
    fn handle(&mut self, msg: SetEndpointPolicy, _: &mut Context<Self>) {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(msg.endpoint, msg.entries);
    }
}

impl Handler<CidrIdentitiesWanted> for Datapath {
    type Result = ();
    fn handle(&mut self, _: CidrIdentitiesWanted, _: &mut Context<Self>) {}
}

/// Polls `check` until it holds, failing after five seconds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn pod(app: &str, cluster: &str) -> Labels {
    Labels::from_k8s_pod(
        "default",
        [("app", app)],
        &ClusterName::new(cluster).unwrap(),
    )
    .unwrap()
}

/// Port 80 admits c1's frontends, port 81 frontends of an unnamed cluster (this one), port
/// 82 the `cluster` entity.
const POLICY: &str = "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: backend, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: frontend, io.cilium.k8s.policy.cluster: c1}
    toPorts: [{ports: [{port: '80', protocol: TCP}]}]
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: '81', protocol: TCP}]}]
  - fromEntities: [cluster]
    toPorts: [{ports: [{port: '82', protocol: TCP}]}]
";

fn allowed(entries: &BTreeMap<PolicyKey, PolicyEntry>, id: NumericIdentity, port: u16) -> bool {
    let key = PolicyKey::port(id, Direction::Ingress, Protocol::TCP, port).unwrap();
    entries.get(&key) == Some(&PolicyEntry::allow())
}

struct Agent {
    identity: Addr<IdentityActor>,
    datapath: Datapath,
    endpoint: EndpointId,
}

/// An agent of cluster c2 (id 2): a policy repository with [`POLICY`] subscribed to an
/// in-process identity actor, and one backend endpoint.
async fn agent() -> Agent {
    let datapath = Datapath::default();
    let probe = datapath.clone().start();
    let repo = PolicyRepository::new(
        PolicyState::new(PolicyConfig {
            cluster_name: ClusterName::new("c2").unwrap(),
            ..PolicyConfig::default()
        }),
        probe.clone().recipient(),
        probe.recipient(),
    )
    .start();
    let identity = IdentityActor::new(IdentityConfig {
        cluster_id: ClusterId::new(2),
        backend: IdentityBackend::Local,
        dual_stack: false,
        subscribers: vec![repo.clone().recipient()],
    })
    .start();
    repo.send(PolicyImport {
        source: PolicySource::Documents(parse_documents(POLICY).unwrap()),
    })
    .await
    .unwrap()
    .unwrap();
    let backend = identity
        .send(AllocateIdentity::new(pod("backend", "c2")))
        .await
        .unwrap()
        .unwrap();
    let endpoint = EndpointId::new(1);
    repo.send(EndpointPolicyWanted {
        endpoint,
        identity: backend.id,
        labels: pod("backend", "c2"),
        named_ports: Vec::new(),
    })
    .await
    .unwrap();
    Agent {
        identity,
        datapath,
        endpoint,
    }
}

#[actix::test]
async fn a_cluster_label_selector_admits_remote_pods_and_others_only_local_ones() {
    let a = agent().await;
    let local = a
        .identity
        .send(AllocateIdentity::new(pod("frontend", "c2")))
        .await
        .unwrap()
        .unwrap()
        .id;
    assert!(ClusterId::new(2).contains(local));
    let remote = NumericIdentity::new((1 << 16) + 7);
    // Cluster 3's range: not cluster 1's to announce.
    let stray = NumericIdentity::new((3 << 16) + 7);
    a.identity
        .send(RemoteIdentities {
            cluster: ClusterId::new(1),
            added: vec![
                (remote, pod("frontend", "c1")),
                (stray, pod("frontend", "c1")),
            ],
            removed: vec![],
        })
        .await
        .unwrap();

    let (datapath, endpoint) = (a.datapath.clone(), a.endpoint);
    eventually("the remote frontend admitted on port 80", || {
        allowed(&datapath.entries(endpoint), remote, 80)
    })
    .await;
    eventually("the local frontend admitted on port 81", || {
        allowed(&datapath.entries(endpoint), local, 81)
    })
    .await;
    let entries = datapath.entries(endpoint);
    // c1's selector does not admit c2's frontend, the unnamed one not c1's.
    assert!(!allowed(&entries, local, 80));
    assert!(!allowed(&entries, remote, 81));
    // The `cluster` entity is this cluster: the local frontend, not the remote one.
    assert!(allowed(&entries, local, 82));
    assert!(!allowed(&entries, remote, 82));
    assert!(allowed(&entries, NumericIdentity::REMOTE_NODE, 82));
    // The out-of-range id never reached the policy.
    assert!(!entries.keys().any(|k| k.identity() == stray));

    // GET /identity shows the remote identity; the stray one is unknown.
    let listed = a.identity.send(ListIdentities).await.unwrap();
    assert!(
        listed
            .iter()
            .any(|i| i.id == remote && i.labels == pod("frontend", "c1"))
    );
    assert!(!listed.iter().any(|i| i.id == stray));
    let looked_up = a
        .identity
        .send(LookupIdentity { id: remote })
        .await
        .unwrap();
    assert_eq!(looked_up.map(|i| i.labels), Some(pod("frontend", "c1")));
    assert_eq!(
        a.identity.send(LookupIdentity { id: stray }).await.unwrap(),
        None
    );
    let dump = a.identity.send(IdentityDump).await.unwrap();
    assert_eq!(
        dump.remote,
        [RemoteIdentityCount {
            cluster_id: ClusterId::new(1),
            identities: 1
        }]
    );

    // Cluster 1 drained: its identity leaves the policy and the identity list.
    a.identity
        .send(RemoteIdentities {
            cluster: ClusterId::new(1),
            added: vec![],
            removed: vec![remote],
        })
        .await
        .unwrap();
    eventually("the remote frontend gone", || {
        !allowed(&datapath.entries(endpoint), remote, 80)
    })
    .await;
    assert!(allowed(&datapath.entries(endpoint), local, 81));
    let dump = a.identity.send(IdentityDump).await.unwrap();
    assert!(dump.remote.is_empty());
    assert!(!dump.identities.iter().any(|i| i.id == remote));
}

#[actix::test]
async fn a_remote_cluster_cannot_announce_identities_in_the_local_range() {
    let a = agent().await;
    let local = a
        .identity
        .send(AllocateIdentity::new(pod("frontend", "c2")))
        .await
        .unwrap()
        .unwrap()
        .id;
    // A "remote" cluster claiming our id, and cluster 1 naming one of our ids.
    for cluster in [ClusterId::new(2), ClusterId::new(1)] {
        a.identity
            .send(RemoteIdentities {
                cluster,
                added: vec![(local, pod("frontend", "c1"))],
                removed: vec![local],
            })
            .await
            .unwrap();
    }
    let looked_up = a.identity.send(LookupIdentity { id: local }).await.unwrap();
    assert_eq!(looked_up.map(|i| i.labels), Some(pod("frontend", "c2")));
    let (datapath, endpoint) = (a.datapath.clone(), a.endpoint);
    eventually("the local frontend admitted on port 81", || {
        allowed(&datapath.entries(endpoint), local, 81)
    })
    .await;
    assert!(!allowed(&datapath.entries(endpoint), local, 80));
    assert!(
        a.identity
            .send(IdentityDump)
            .await
            .unwrap()
            .remote
            .is_empty()
    );
}
