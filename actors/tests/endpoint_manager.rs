//! The endpoint manager against the real IPAM, identity (local mode), ipcache and policy
//! actors, a real Datapath actor over the recording fake datapath, and the fake links:
//! creation to ready, rollback when any step fails, deletion, restore after a restart and
//! concurrent creations.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix::{Actor, Addr, Context, Handler, MessageResult, Recipient};
use actors::endpoint::{
    CreateEndpoint, DeleteEndpoint, EndpointConfig, EndpointError, EndpointManager,
    EndpointOutputs, EndpointRef, EndpointState, GetEndpoint, ListEndpoints, RestoreEndpoints,
    Step, host_ifname,
};
use actors::identity::{IdentityActor, IdentityBackend, IdentityConfig};
use actors::ipam::{FileIpamStore, IpamActor};
use actors::ipcache::{IpCacheActor, IpCacheConfig, IpCacheOutputs, UpsertIp};
use actors::policy::{
    CidrIdentitiesWanted, EndpointPolicyWait, EndpointPolicyWanted, PolicyConfig, PolicyRepository,
    PolicyState,
};
use datapath::api::{EndpointId, EndpointKey, IpcacheKey, MapKey, MapName};
use datapath::fake::{FakeDatapath, FaultPoint};
use datapath::fake_link::{FakeLinks, LinkFault};
use datapath::reconciler::messages::UpsertLxc;
use datapath::reconciler::{DatapathActor, DatapathActorConfig};
use model::identity::ClusterId;
use model::labels::{Label, Labels};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 1);

/// Swallows what nobody in these tests needs.
#[derive(Debug)]
struct Sink;

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Handler<CidrIdentitiesWanted> for Sink {
    type Result = ();

    fn handle(&mut self, _msg: CidrIdentitiesWanted, _ctx: &mut Context<Self>) {}
}

/// An actor that is gone: every message to it fails with a closed mailbox, which is how a
/// test makes one step of the creation fail.
#[derive(Debug)]
struct Dead;

impl Actor for Dead {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        use actix::ActorContext;
        ctx.stop();
    }
}

macro_rules! dead_handler {
    ($($msg:ty),*) => {$(
        impl Handler<$msg> for Dead {
            type Result = MessageResult<$msg>;

            fn handle(&mut self, _msg: $msg, _ctx: &mut Context<Self>) -> Self::Result {
                unreachable!("a stopped actor handles nothing")
            }
        }
    )*};
}

dead_handler!(
    UpsertIp,
    UpsertLxc,
    EndpointPolicyWanted,
    EndpointPolicyWait
);

async fn dead() -> Addr<Dead> {
    let addr = Dead.start();
    while addr.connected() {
        tokio::task::yield_now().await;
    }
    addr
}

/// One node's actors over a state dir, a fake datapath and fake links.
struct Node {
    manager: Addr<EndpointManager>,
    ipam: Addr<IpamActor>,
    identity: Addr<IdentityActor>,
    ipcache: Addr<IpCacheActor>,
    policy: Addr<PolicyRepository>,
    datapath: FakeDatapath,
    links: FakeLinks,
    state_dir: PathBuf,
}

impl Node {
    fn start(state_dir: &Path, datapath: FakeDatapath, links: FakeLinks) -> Node {
        Self::start_with(state_dir, datapath, links, |_| {})
    }

    fn start_with(
        state_dir: &Path,
        datapath: FakeDatapath,
        links: FakeLinks,
        tweak: impl FnOnce(&mut EndpointOutputs),
    ) -> Node {
        let dp =
            DatapathActor::new(Box::new(datapath.clone()), DatapathActorConfig::default()).start();
        let ipam = IpamActor::new(
            "10.20.0.0/24".parse().unwrap(),
            Box::new(FileIpamStore::in_state_dir(state_dir)),
        )
        .unwrap()
        .start();
        let identity = IdentityActor::new(IdentityConfig {
            cluster_id: ClusterId::new(0),
            backend: IdentityBackend::Local,
            dual_stack: false,
            subscribers: Vec::new(),
        })
        .start();
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
        let policy = PolicyRepository::new(
            PolicyState::new(PolicyConfig::default()),
            dp.clone().recipient(),
            Sink.start().recipient(),
        )
        .start();
        let mut outputs = EndpointOutputs {
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
        tweak(&mut outputs);
        let config = EndpointConfig::new(state_dir.to_owned(), GATEWAY);
        let manager = EndpointManager::new(config, outputs, Arc::new(links.clone())).start();
        Node {
            manager,
            ipam,
            identity,
            ipcache,
            policy,
            datapath,
            links,
            state_dir: state_dir.to_owned(),
        }
    }

    /// Asserts that nothing of any endpoint is left anywhere.
    async fn assert_clean(&self) {
        assert!(self.links.links().is_empty(), "veth pairs left");
        let ipam = self.ipam.send(actors::ipam::Dump).await.unwrap();
        assert!(ipam.allocations.is_empty(), "addresses left: {ipam:?}");
        let identity = self.identity.send(actors::identity::Dump).await.unwrap();
        assert!(
            identity.references.is_empty(),
            "identity references left: {:?}",
            identity.references
        );
        let ipcache = self.ipcache.send(actors::ipcache::Dump).await.unwrap();
        assert!(ipcache.entries.is_empty(), "ipcache entries left");
        let policy = self.policy.send(actors::policy::Dump).await.unwrap();
        assert!(policy.endpoints.is_empty(), "policy endpoints left");
        assert!(
            self.datapath.entries(MapName::Lxc).is_empty(),
            "lxc entries left"
        );
        assert!(
            self.datapath.entries(MapName::Ipcache).is_empty(),
            "ipcache map entries left"
        );
        assert!(self.datapath.attachments().is_empty(), "attachments left");
        let dump = self.manager.send(actors::endpoint::Dump).await.unwrap();
        assert!(
            dump.endpoints.is_empty() && dump.creating.is_empty(),
            "{dump:?}"
        );
        let records = self.state_dir.join("endpoints");
        let files = std::fs::read_dir(&records)
            .map(|dir| dir.count())
            .unwrap_or(0);
        assert_eq!(files, 0, "endpoint records left in {}", records.display());
    }
}

fn pod_labels(app: &str) -> Labels {
    let mut labels = Labels::new();
    labels.insert(Label::k8s("app", app));
    labels.insert(Label::k8s("io.kubernetes.pod.namespace", "default"));
    labels
}

fn request(container: &str, app: &str) -> CreateEndpoint {
    CreateEndpoint {
        container_id: container.to_owned(),
        netns: PathBuf::from(format!("/var/run/netns/{container}")),
        ifname: "eth0".to_owned(),
        pod_name: format!("pod-{container}"),
        pod_namespace: "default".to_owned(),
        labels: pod_labels(app),
        requested_ip: None,
        named_ports: Vec::new(),
    }
}

#[actix::test]
async fn create_reaches_ready_and_delete_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), FakeDatapath::new(), FakeLinks::new());
    let created = node
        .manager
        .send(request("c1", "web"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(created.gateway, GATEWAY);
    assert_eq!(created.host_ifname, host_ifname("c1"));
    assert!(
        created.ip != GATEWAY
            && "10.20.0.0/24"
                .parse::<ipnet::Ipv4Net>()
                .unwrap()
                .contains(&created.ip)
    );

    // The pair, with the pod's address and gateway.
    let links = node.links.links();
    assert_eq!(links.len(), 1);
    assert_eq!(links[0].pod_ip, created.ip);
    assert_eq!(links[0].gateway, GATEWAY);
    assert_eq!(links[0].pod_ifname, "eth0");
    assert_eq!(links[0].endpoint, created.id);

    // Datapath: lxc entry with the identity and MACs, ipcache entry, attachment, policy map.
    let lxc = node
        .datapath
        .get(&MapKey::Lxc(EndpointKey::new(IpAddr::V4(created.ip))))
        .expect("lxc entry");
    match lxc {
        datapath::api::MapValue::Lxc(info) => {
            assert_eq!(info.lxc_id, created.id);
            assert_eq!(info.identity, created.identity);
            assert_eq!(info.mac, created.mac);
        }
        other => panic!("unexpected value {other:?}"),
    }
    let ipcache = node
        .datapath
        .get(&MapKey::Ipcache(IpcacheKey::host(IpAddr::V4(created.ip))))
        .expect("ipcache entry");
    match ipcache {
        datapath::api::MapValue::Ipcache(info) => assert_eq!(info.identity, created.identity),
        other => panic!("unexpected value {other:?}"),
    }
    let attachments = node.datapath.attachments();
    assert_eq!(attachments.len(), 1);
    assert_eq!(attachments[0].ifname, created.host_ifname);
    assert!(node.datapath.has_policy_map(created.id));

    // The record: ready, persisted, identity labels filtered.
    let record = node
        .manager
        .send(GetEndpoint {
            endpoint: EndpointRef::ContainerId("c1".into()),
        })
        .await
        .unwrap()
        .expect("endpoint");
    assert_eq!(record.state, EndpointState::Ready);
    assert_eq!(record.identity, created.identity);
    assert!(record.identity_labels.contains(&Label::k8s("app", "web")));
    let file = dir
        .path()
        .join("endpoints")
        .join(format!("{}.json", created.id.get()));
    let persisted: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(persisted["state"], "ready");
    assert_eq!(persisted["container_id"], "c1");

    // A second create for the same container is refused.
    let again = node.manager.send(request("c1", "web")).await.unwrap();
    assert!(matches!(again, Err(EndpointError::AlreadyExists { id, .. }) if id == created.id));

    // Delete by id, then again (idempotent).
    let deleted = node
        .manager
        .send(DeleteEndpoint {
            endpoint: EndpointRef::Id(created.id),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(deleted, Some(created.id));
    assert!(!node.datapath.has_policy_map(created.id));
    node.assert_clean().await;
    let again = node
        .manager
        .send(DeleteEndpoint {
            endpoint: EndpointRef::ContainerId("c1".into()),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, None);
}

/// Creates with one step broken and checks the error names the step and nothing is left.
async fn assert_rolls_back(node: &Node, req: CreateEndpoint, step: Step) {
    let result = node.manager.send(req).await.unwrap();
    match result {
        Err(EndpointError::Step { step: failed, .. }) => assert_eq!(failed, step),
        other => panic!("expected {step:?} to fail, got {other:?}"),
    }
    node.assert_clean().await;
}

#[actix::test]
async fn a_failure_at_any_step_rolls_back_everything() {
    // IPAM: an address outside the range.
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), FakeDatapath::new(), FakeLinks::new());
    let mut req = request("c1", "web");
    req.requested_ip = Some(Ipv4Addr::new(192, 168, 0, 1));
    assert_rolls_back(&node, req, Step::AllocateIp).await;

    // Links.
    node.links.fail_next(LinkFault::Create, 1);
    assert_rolls_back(&node, request("c2", "web"), Step::CreateLinks).await;

    // Identity: no security-relevant label at all.
    let mut req = request("c3", "web");
    req.labels = Labels::new();
    assert_rolls_back(&node, req, Step::AllocateIdentity).await;

    // Attachment.
    node.datapath.fail_next(FaultPoint::Attach, 1);
    assert_rolls_back(&node, request("c4", "web"), Step::Attach).await;
    node.datapath.clear_faults();

    // The same node still creates endpoints afterwards.
    let created = node
        .manager
        .send(request("c5", "web"))
        .await
        .unwrap()
        .unwrap();
    assert!(node.links.contains(&created.host_ifname));
}

#[actix::test]
async fn failures_of_ipcache_datapath_and_policy_roll_back() {
    let dead = dead().await;
    type Tweak = Box<dyn FnOnce(&mut EndpointOutputs)>;
    let cases: Vec<(Step, Tweak)> = vec![
        (Step::UpsertIpcache, {
            let r: Recipient<UpsertIp> = dead.clone().recipient();
            Box::new(move |o: &mut EndpointOutputs| o.upsert_ip = r)
        }),
        (Step::UpsertLxc, {
            let r: Recipient<UpsertLxc> = dead.clone().recipient();
            Box::new(move |o: &mut EndpointOutputs| o.upsert_lxc = r)
        }),
        (Step::Policy, {
            let r: Recipient<EndpointPolicyWanted> = dead.clone().recipient();
            Box::new(move |o: &mut EndpointOutputs| o.policy_wanted = r)
        }),
        (Step::PolicyWait, {
            let r: Recipient<EndpointPolicyWait> = dead.clone().recipient();
            Box::new(move |o: &mut EndpointOutputs| o.policy_wait = r)
        }),
    ];
    for (step, tweak) in cases {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::start_with(dir.path(), FakeDatapath::new(), FakeLinks::new(), tweak);
        assert_rolls_back(&node, request("c1", "web"), step).await;
    }

    // Persisting: the records directory cannot be created.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("endpoints"), b"not a directory").unwrap();
    let node = Node::start(dir.path(), FakeDatapath::new(), FakeLinks::new());
    let result = node.manager.send(request("c1", "web")).await.unwrap();
    assert!(
        matches!(
            result,
            Err(EndpointError::Step {
                step: Step::Persist,
                ..
            })
        ),
        "{result:?}"
    );
    assert!(node.links.links().is_empty());
    assert!(node.datapath.attachments().is_empty());
    let ipam = node.ipam.send(actors::ipam::Dump).await.unwrap();
    assert!(ipam.allocations.is_empty());
}

#[actix::test]
async fn a_failed_delete_keeps_the_endpoint_and_a_retry_finishes_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), FakeDatapath::new(), FakeLinks::new());
    let created = node
        .manager
        .send(request("c1", "web"))
        .await
        .unwrap()
        .unwrap();
    node.links.fail_next(LinkFault::Delete, 1);
    let delete = DeleteEndpoint {
        endpoint: EndpointRef::ContainerId("c1".into()),
    };
    let failed = node.manager.send(delete.clone()).await.unwrap();
    assert!(
        matches!(failed, Err(EndpointError::Teardown { ref remaining, .. }) if remaining == "veth pair, ip"),
        "{failed:?}"
    );
    let record = node
        .manager
        .send(GetEndpoint {
            endpoint: EndpointRef::Id(created.id),
        })
        .await
        .unwrap()
        .expect("kept");
    assert_eq!(record.state, EndpointState::Disconnecting);
    // Only what is left is given back: the identity is not released twice.
    assert_eq!(
        node.manager.send(delete).await.unwrap().unwrap(),
        Some(created.id)
    );
    node.assert_clean().await;
}

#[actix::test]
async fn restart_restores_endpoints_and_removes_those_whose_veth_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let datapath = FakeDatapath::new();
    let links = FakeLinks::new();
    let (kept, gone) = {
        let node = Node::start(dir.path(), datapath.clone(), links.clone());
        let kept = node
            .manager
            .send(request("c1", "web"))
            .await
            .unwrap()
            .unwrap();
        let gone = node
            .manager
            .send(request("c2", "db"))
            .await
            .unwrap()
            .unwrap();
        (kept, gone)
    };
    // The pod of c2 went away while no agent ran.
    assert!(links.vanish(&gone.host_ifname));

    let node = Node::start(dir.path(), datapath.clone(), links.clone());
    let report = node.manager.send(RestoreEndpoints).await.unwrap().unwrap();
    assert_eq!(report.restored, vec![kept.id]);
    assert_eq!(report.removed.len(), 1);
    assert_eq!(report.removed[0].0, gone.id);

    let records = node.manager.send(ListEndpoints).await.unwrap();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!((record.id, record.ip), (kept.id, kept.ip));
    assert_eq!(record.state, EndpointState::Ready);
    // Everything of the kept endpoint is claimed again; nothing of the other remains.
    let ipam = node.ipam.send(actors::ipam::Dump).await.unwrap();
    assert_eq!(
        ipam.allocations.keys().copied().collect::<Vec<_>>(),
        vec![kept.ip]
    );
    let identity = node.identity.send(actors::identity::Dump).await.unwrap();
    assert_eq!(identity.references.len(), 1);
    assert!(
        datapath
            .get(&MapKey::Lxc(EndpointKey::new(IpAddr::V4(kept.ip))))
            .is_some()
    );
    assert!(
        datapath
            .get(&MapKey::Lxc(EndpointKey::new(IpAddr::V4(gone.ip))))
            .is_none()
    );
    let attached: Vec<EndpointId> = datapath.attachments().iter().map(|a| a.endpoint).collect();
    assert_eq!(attached, vec![kept.id]);
    assert!(!datapath.has_policy_map(gone.id));
    let policy = node.policy.send(actors::policy::Dump).await.unwrap();
    assert_eq!(policy.endpoints.len(), 1);
    assert!(
        !dir.path()
            .join("endpoints")
            .join(format!("{}.json", gone.id.get()))
            .exists()
    );

    // New endpoints do not reuse the restored id, and the restored one deletes cleanly.
    let fresh = node
        .manager
        .send(request("c3", "web"))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(fresh.id, kept.id);
    for container in ["c1", "c3"] {
        node.manager
            .send(DeleteEndpoint {
                endpoint: EndpointRef::ContainerId(container.into()),
            })
            .await
            .unwrap()
            .unwrap();
    }
    node.assert_clean().await;
}

#[actix::test]
async fn concurrent_creates_get_distinct_ids_addresses_and_interfaces() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), FakeDatapath::new(), FakeLinks::new());
    let requests = (0..20).map(|n| node.manager.send(request(&format!("c{n}"), "web")));
    let created: Vec<_> = futures::future::join_all(requests)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    let ids: BTreeSet<_> = created.iter().map(|c| c.id).collect();
    let ips: BTreeSet<_> = created.iter().map(|c| c.ip).collect();
    let ifnames: BTreeSet<_> = created.iter().map(|c| c.host_ifname.clone()).collect();
    assert_eq!((ids.len(), ips.len(), ifnames.len()), (20, 20, 20));
    // One label set, one identity, twenty references.
    let identities: BTreeSet<_> = created.iter().map(|c| c.identity).collect();
    assert_eq!(identities.len(), 1);
    let identity = node.identity.send(actors::identity::Dump).await.unwrap();
    assert_eq!(identity.references.len(), 1);
    assert_eq!(identity.references[0].refs, 20);
    assert_eq!(node.datapath.attachments().len(), 20);

    let deletes = created.iter().map(|c| {
        node.manager.send(DeleteEndpoint {
            endpoint: EndpointRef::Id(c.id),
        })
    });
    for result in futures::future::join_all(deletes).await {
        assert!(result.unwrap().unwrap().is_some());
    }
    node.assert_clean().await;
}

#[actix::test]
async fn invalid_requests_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), FakeDatapath::new(), FakeLinks::new());
    let mut no_container = request("", "web");
    no_container.container_id = "  ".into();
    let mut no_netns = request("c1", "web");
    no_netns.netns = PathBuf::new();
    let mut bad_ifname = request("c2", "web");
    bad_ifname.ifname = "an-interface-name-too-long".into();
    for req in [no_container, no_netns, bad_ifname] {
        let result = node.manager.send(req).await.unwrap();
        assert!(
            matches!(result, Err(EndpointError::InvalidRequest { .. })),
            "{result:?}"
        );
    }
    node.assert_clean().await;
}

#[actix::test]
async fn a_removal_interrupted_by_a_restart_is_finished_at_restore() {
    let dir = tempfile::tempdir().unwrap();
    let datapath = FakeDatapath::new();
    let links = FakeLinks::new();
    let created = {
        let node = Node::start(dir.path(), datapath.clone(), links.clone());
        let created = node
            .manager
            .send(request("c1", "web"))
            .await
            .unwrap()
            .unwrap();
        node.links.fail_next(LinkFault::Delete, 1);
        let failed = node
            .manager
            .send(DeleteEndpoint {
                endpoint: EndpointRef::Id(created.id),
            })
            .await
            .unwrap();
        assert!(
            matches!(failed, Err(EndpointError::Teardown { .. })),
            "{failed:?}"
        );
        created
    };
    let persisted: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            dir.path()
                .join("endpoints")
                .join(format!("{}.json", created.id.get())),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(persisted["state"], "disconnecting");

    let node = Node::start(dir.path(), datapath, links);
    let report = node.manager.send(RestoreEndpoints).await.unwrap().unwrap();
    assert!(report.restored.is_empty());
    assert_eq!(report.removed.len(), 1);
    assert_eq!(report.removed[0].0, created.id);
    node.assert_clean().await;
}
