//! The actors wired as the agent wires them (the identity actor publishing straight to the
//! policy repository and serving its CIDR requests into the ipcache; rules persisted in the
//! state dir), over a real Datapath actor and the recording fake datapath: CIDR rules get
//! local identities in the ipcache and the policy maps, and a restarted node restores
//! endpoints, identities and rules without changing any map entry.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr, AsyncContext, Context};
use actors::endpoint::{
    CreateEndpoint, DeleteEndpoint, EndpointConfig, EndpointManager, EndpointOutputs, EndpointRef,
    ListEndpoints, RestoreEndpoints,
};
use actors::identity::{
    IdentityActor, IdentityBackend, IdentityConfig, LookupIdentity, RestoreCidrIdentities,
};
use actors::ipam::{FileIpamStore, IpamActor};
use actors::ipcache::{IpCacheActor, IpCacheConfig, IpCacheOutputs, Source};
use actors::policy::{
    FilePolicyStore, PolicyConfig, PolicyDelete, PolicyImport, PolicyRepository, PolicySource,
    PolicyState, PolicyWait, Revision, policy_name_labels,
};
use datapath::api::{Direction, EndpointId, MapKey, MapName, MapValue};
use datapath::fake::{FakeDatapath, FakeOp};
use datapath::fake_link::FakeLinks;
use datapath::reconciler::{DatapathActor, DatapathActorConfig};
use ipnet::IpNet;
use model::identity::{ClusterId, NumericIdentity};
use model::labels::{Label, Labels};
use model::policy::parse_documents;

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 1);

const CIDR_POLICY: &str = "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-egress, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toCIDR: [192.168.1.0/24]
  - toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]
";

const DB_POLICY: &str = "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db-ingress, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: '5432', protocol: TCP}]}]
";

/// One node's actors over a state dir, a fake datapath and fake links.
struct Node {
    manager: Addr<EndpointManager>,
    identity: Addr<IdentityActor>,
    ipcache: Addr<IpCacheActor>,
    policy: Addr<PolicyRepository>,
}

impl Node {
    /// Starts the actors in the agent's order: the identity actor (told the CIDR identities
    /// the datapath's ipcache still holds), the repository with its persisted rules, then
    /// the endpoint manager, which restores the persisted endpoints.
    async fn start(state_dir: &Path, datapath: &FakeDatapath, links: &FakeLinks) -> Node {
        let dp =
            DatapathActor::new(Box::new(datapath.clone()), DatapathActorConfig::default()).start();
        let ipcache = IpCacheActor::new(
            IpCacheConfig {
                node_ip: None,
                kvstore: None,
            },
            IpCacheOutputs {
                upsert: dp.clone().recipient(),
                delete: dp.clone().recipient(),
            },
        )
        .start();
        // The repository and the identity actor refer to each other.
        let policy_ctx = Context::<PolicyRepository>::new();
        let identity = IdentityActor::new(IdentityConfig {
            cluster_id: ClusterId::new(0),
            backend: IdentityBackend::Local,
            dual_stack: false,
            subscribers: vec![policy_ctx.address().recipient()],
        })
        .with_ipcache(ipcache.clone().recipient(), ipcache.clone().recipient())
        .start();
        identity
            .send(RestoreCidrIdentities {
                identities: restored_cidr_identities(datapath),
            })
            .await
            .unwrap();
        let repo = PolicyRepository::with_store(
            PolicyState::new(PolicyConfig::default()),
            Box::new(FilePolicyStore::in_state_dir(state_dir)),
            dp.clone().recipient(),
            identity.clone().recipient(),
        )
        .unwrap();
        let policy = policy_ctx.run(repo);
        // Once the repository answers, its CIDR requests wait in the identity actor's mailbox
        // ahead of every endpoint's identity allocation.
        policy.send(actors::policy::Dump).await.unwrap();

        let ipam = IpamActor::new(
            "10.20.0.0/24".parse().unwrap(),
            Box::new(FileIpamStore::in_state_dir(state_dir)),
        )
        .unwrap()
        .start();
        let outputs = EndpointOutputs {
            allocate_ip: ipam.clone().recipient(),
            release_ip: ipam.clone().recipient(),
            allocate_identity: identity.clone().recipient(),
            release_identity: identity.clone().recipient(),
            upsert_ip: ipcache.clone().recipient(),
            delete_ip: ipcache.clone().recipient(),
            upsert_lxc: dp.clone().recipient(),
            delete_lxc: dp.clone().recipient(),
            attach: dp.clone().recipient(),
            detach: dp.clone().recipient(),
            policy_wanted: policy.clone().recipient(),
            policy_removed: policy.clone().recipient(),
            policy_wait: policy.clone().recipient(),
        };
        let config = EndpointConfig::new(PathBuf::from(state_dir), GATEWAY);
        let manager = EndpointManager::new(config, outputs, Arc::new(links.clone())).start();
        manager.send(RestoreEndpoints).await.unwrap().unwrap();
        Node {
            manager,
            identity,
            ipcache,
            policy,
        }
    }

    async fn create(&self, container: &str, app: &str) -> (EndpointId, NumericIdentity) {
        let created = self
            .manager
            .send(request(container, app))
            .await
            .unwrap()
            .unwrap();
        (created.id, created.identity)
    }

    async fn import(&self, yaml: &str) -> Revision {
        let revision = self
            .policy
            .send(PolicyImport {
                source: PolicySource::Documents(parse_documents(yaml).unwrap()),
            })
            .await
            .unwrap()
            .unwrap();
        self.settle(revision).await;
        revision
    }

    /// Waits until the identity actor, the ipcache and the repository have handled what
    /// they were sent and the node has realized `revision`.
    async fn settle(&self, revision: Revision) {
        for _ in 0..5 {
            self.identity.send(actors::identity::Dump).await.unwrap();
            self.ipcache.send(actors::ipcache::Dump).await.unwrap();
            self.policy.send(actors::policy::Dump).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.policy
            .send(PolicyWait { revision })
            .await
            .unwrap()
            .unwrap();
    }

    /// The `generated` (CIDR) entries of the ipcache, by prefix.
    async fn generated(&self) -> BTreeMap<IpNet, NumericIdentity> {
        let dump = self.ipcache.send(actors::ipcache::Dump).await.unwrap();
        dump.entries
            .iter()
            .filter(|e| e.source == Source::Generated)
            .map(|e| (e.key.prefix(), e.entry.identity))
            .collect()
    }
}

/// What the agent reads back from the pinned ipcache map at start: the local-scope
/// identities of prefixes.
fn restored_cidr_identities(datapath: &FakeDatapath) -> Vec<(IpNet, NumericIdentity)> {
    datapath
        .entries(MapName::Ipcache)
        .into_iter()
        .filter_map(|(key, value)| match (key, value) {
            (MapKey::Ipcache(key), MapValue::Ipcache(info)) if info.identity.is_local_scope() => {
                Some((key.prefix(), info.identity))
            }
            _ => None,
        })
        .collect()
}

fn request(container: &str, app: &str) -> CreateEndpoint {
    let mut labels = Labels::new();
    labels.insert(Label::k8s("app", app));
    labels.insert(Label::k8s("io.kubernetes.pod.namespace", "default"));
    // Peer selectors select only endpoints of the local cluster (the default one here).
    labels.insert(Label::k8s("io.cilium.k8s.policy.cluster", "default"));
    CreateEndpoint {
        container_id: container.to_owned(),
        netns: PathBuf::from(format!("/var/run/netns/{container}")),
        ifname: "eth0".to_owned(),
        pod_name: format!("pod-{container}"),
        pod_namespace: "default".to_owned(),
        labels,
        requested_ip: None,
        named_ports: Vec::new(),
    }
}

fn prefix(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// The peer identities of an endpoint's policy map in one direction.
fn peers(datapath: &FakeDatapath, endpoint: EndpointId, direction: Direction) -> BTreeSet<u32> {
    datapath
        .entries(MapName::Policy(endpoint))
        .into_iter()
        .filter_map(|(key, _)| match key {
            MapKey::Policy { key, .. } if key.direction() == direction => {
                Some(key.identity().get())
            }
            _ => None,
        })
        .collect()
}

/// Every entry of the maps the control plane writes, for before/after comparisons.
fn map_contents(datapath: &FakeDatapath, endpoints: &[EndpointId]) -> BTreeMap<MapKey, MapValue> {
    [MapName::Ipcache, MapName::Lxc]
        .into_iter()
        .chain(endpoints.iter().map(|ep| MapName::Policy(*ep)))
        .flat_map(|map| datapath.entries(map))
        .collect()
}

#[actix::test]
async fn cidr_rules_put_local_identities_into_the_ipcache_and_the_policy_map() {
    let dir = tempfile::tempdir().unwrap();
    let datapath = FakeDatapath::new();
    let node = Node::start(dir.path(), &datapath, &FakeLinks::new()).await;
    let (web, _) = node.create("c1", "web").await;
    // No rule: egress is allow-all (identity 0).
    assert_eq!(
        peers(&datapath, web, Direction::Egress),
        BTreeSet::from([0])
    );

    node.import(CIDR_POLICY).await;
    let generated = node.generated().await;
    assert_eq!(
        generated.keys().copied().collect::<Vec<_>>(),
        vec![
            prefix("10.0.0.0/8"),
            prefix("10.1.0.0/16"),
            prefix("192.168.1.0/24")
        ]
    );
    assert!(generated.values().all(|id| id.is_local_scope()));
    assert_eq!(
        generated.values().collect::<BTreeSet<_>>().len(),
        3,
        "{generated:?}"
    );
    for (prefix, id) in &generated {
        let info = node
            .identity
            .send(LookupIdentity { id: *id })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(info.labels, Labels::for_cidr(*prefix, false));
        // The datapath's ipcache holds the prefix with its identity.
        assert_eq!(
            restored_cidr_identities(&datapath)
                .into_iter()
                .find(|(p, _)| p == prefix),
            Some((*prefix, *id))
        );
    }
    // Egress allows exactly the two allowed prefixes' identities; the except prefix's
    // identity is not among them.
    let allowed = BTreeSet::from([
        generated[&prefix("10.0.0.0/8")].get(),
        generated[&prefix("192.168.1.0/24")].get(),
    ]);
    assert_eq!(peers(&datapath, web, Direction::Egress), allowed);

    // Deleting the policy releases the identities and their ipcache entries.
    let deleted = node
        .policy
        .send(PolicyDelete {
            labels: policy_name_labels("web-egress", Some("default")),
        })
        .await
        .unwrap()
        .unwrap();
    node.settle(deleted.revision).await;
    assert!(node.generated().await.is_empty());
    assert!(restored_cidr_identities(&datapath).is_empty());
    let identities = node.identity.send(actors::identity::Dump).await.unwrap();
    assert!(
        identities.identities.iter().all(|i| !i.id.is_local_scope()),
        "{identities:?}"
    );
    assert_eq!(
        peers(&datapath, web, Direction::Egress),
        BTreeSet::from([0])
    );
}

#[actix::test]
async fn a_restart_restores_identities_rules_and_maps_without_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let datapath = FakeDatapath::new();
    let links = FakeLinks::new();
    let (endpoints, identities, revision, rules, generated) = {
        let node = Node::start(dir.path(), &datapath, &links).await;
        // The first pod's identity is freed again, so that without preferred ids the
        // restored pods would get the freed id and shift.
        node.create("c0", "old").await;
        // The database first: it is restored first too, and its policy names the web pod,
        // whose identity must therefore exist before any endpoint's policy is computed.
        let (db, db_id) = node.create("c1", "db").await;
        let (web, web_id) = node.create("c2", "web").await;
        node.manager
            .send(DeleteEndpoint {
                endpoint: EndpointRef::ContainerId("c0".into()),
            })
            .await
            .unwrap()
            .unwrap();
        // Imported one after the other, so that the CIDR identities are allocated in
        // another order than a restore (which sees all prefixes at once) would.
        node.import(DB_POLICY).await;
        node.import(
            "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-egress-host, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toCIDR: [192.168.1.0/24]
",
        )
        .await;
        let revision = node.import(CIDR_POLICY).await;
        let dump = node.policy.send(actors::policy::Dump).await.unwrap();
        (
            vec![db, web],
            vec![db_id, web_id],
            revision,
            dump.rules,
            node.generated().await,
        )
    };
    assert_eq!(generated.len(), 3);
    assert!(
        generated[&prefix("192.168.1.0/24")] < generated[&prefix("10.0.0.0/8")],
        "the test needs allocation order to differ from prefix order: {generated:?}"
    );
    let before = map_contents(&datapath, &endpoints);
    let db_ingress = peers(&datapath, endpoints[0], Direction::Ingress);
    assert!(db_ingress.contains(&identities[1].get()), "{db_ingress:?}");
    datapath.clear_log();

    // The old process is gone; a new one starts over the same state dir and pinned maps.
    let node = Node::start(dir.path(), &datapath, &links).await;
    node.settle(revision).await;

    let records = node.manager.send(ListEndpoints).await.unwrap();
    let restored: Vec<(EndpointId, NumericIdentity)> =
        records.iter().map(|r| (r.id, r.identity)).collect();
    assert_eq!(
        restored,
        vec![(endpoints[0], identities[0]), (endpoints[1], identities[1])]
    );
    let dump = node.policy.send(actors::policy::Dump).await.unwrap();
    assert_eq!(dump.revision, revision);
    assert_eq!(dump.rules, rules);
    assert_eq!(node.generated().await, generated);
    assert_eq!(map_contents(&datapath, &endpoints), before);
    // Not even for a moment: no entry was deleted or written with another value.
    for entry in datapath.writes() {
        match entry.op {
            FakeOp::Delete { key } => panic!("{key:?} was deleted during the restore"),
            FakeOp::Update { key, value } => {
                assert_eq!(before.get(&key), Some(&value), "{key:?} changed")
            }
            _ => {}
        }
    }

    // A rule change after the restart continues from the restored revision.
    let deleted = node
        .policy
        .send(PolicyDelete {
            labels: policy_name_labels("db-ingress", Some("default")),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(deleted.revision, Revision::new(revision.get() + 1));
}
