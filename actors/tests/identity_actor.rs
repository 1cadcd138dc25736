//! Identity actor tests: local (no kvstore) allocation with refcounts, CIDR identities,
//! publication to subscribers, kvstore mode with identities of another node, garbage-collected
//! identities, and ordering of operations on one label set while the actor stays responsive.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::{Actor, Addr, Context, Handler, MessageResult};
use actors::identity::{
    AllocateCidrIdentities, AllocateIdentity, AllocatedIdentity, Dump, Generation,
    IdentitiesChanged, IdentityActor, IdentityBackend, IdentityConfig, IdentityError, IdentityMode,
    ListIdentities, LookupIdentity, ReleaseCidrIdentities, ReleaseIdentity, RestoreCidrIdentities,
};
use actors::ipcache::{DeleteIp, Effective, Source, UpsertIp};
use actors::policy::CidrIdentitiesWanted;
use ipnet::IpNet;
use kvstore::Backend;
use kvstore::allocator::IdentityAllocator;
use kvstore::clock::TokioClock;
use kvstore::keys::{identity_lock_key, identity_master_key};
use kvstore::memory::MemoryStore;
use model::identity::{ClusterId, NumericIdentity};
use model::labels::{Label, Labels};

#[derive(Debug, Default, Clone)]
struct Subscriber {
    seen: Arc<Mutex<Vec<IdentitiesChanged>>>,
}

impl Subscriber {
    fn take(&self) -> Vec<IdentitiesChanged> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

impl Actor for Subscriber {
    type Context = Context<Self>;
}

impl Handler<IdentitiesChanged> for Subscriber {
    type Result = ();
    fn handle(&mut self, msg: IdentitiesChanged, _: &mut Context<Self>) {
        self.seen.lock().unwrap().push(msg);
    }
}

fn labels(app: &str) -> Labels {
    [
        Label::k8s("app", app),
        Label::k8s("io.kubernetes.pod.namespace", "default"),
    ]
    .into_iter()
    .collect()
}

fn prefix(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn start(backend: IdentityBackend, cluster_id: ClusterId) -> (Addr<IdentityActor>, Subscriber) {
    let subscriber = Subscriber::default();
    let addr = subscriber.clone().start();
    let actor = IdentityActor::new(IdentityConfig {
        cluster_id,
        backend,
        dual_stack: false,
        subscribers: vec![addr.recipient()],
    })
    .start();
    (actor, subscriber)
}

async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// Waits until the subscriber has seen a change that satisfies `check`.
async fn wait_for(subscriber: &Subscriber, check: impl Fn(&IdentitiesChanged) -> bool) {
    for _ in 0..500 {
        if subscriber.seen.lock().unwrap().iter().any(&check) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("expected change not published: {:?}", subscriber.take());
}

#[actix::test]
async fn local_mode_allocates_from_the_cluster_range_with_refcounts() {
    let (actor, subscriber) = start(IdentityBackend::Local, ClusterId::new(3));
    // Reserved identities first, once.
    let first = actor.send(ListIdentities).await.unwrap();
    assert_eq!(first.len(), 10);
    settle().await;
    let seen = subscriber.take();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].added.len(), 10);
    assert!(seen[0].added.iter().all(|(id, _)| id.is_reserved()));

    let a = actor
        .send(AllocateIdentity {
            labels: labels("a"),
            preferred: None,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        a,
        AllocatedIdentity {
            id: NumericIdentity::new(3 << 16),
            is_new: true
        }
    );
    assert!(ClusterId::new(3).contains(a.id));
    let again = actor
        .send(AllocateIdentity {
            labels: labels("a"),
            preferred: None,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        again,
        AllocatedIdentity {
            id: a.id,
            is_new: false
        }
    );
    let host = actor
        .send(AllocateIdentity {
            labels: [Label::host()].into_iter().collect(),
            preferred: None,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(host.id, NumericIdentity::HOST);
    assert!(matches!(
        actor
            .send(AllocateIdentity::new(Labels::new()))
            .await
            .unwrap(),
        Err(IdentityError::EmptyLabels)
    ));
    assert_eq!(
        actor
            .send(LookupIdentity { id: a.id })
            .await
            .unwrap()
            .unwrap()
            .labels,
        labels("a")
    );

    assert!(
        !actor
            .send(ReleaseIdentity {
                labels: labels("a")
            })
            .await
            .unwrap()
            .unwrap()
    );
    assert!(
        actor
            .send(ReleaseIdentity {
                labels: labels("a")
            })
            .await
            .unwrap()
            .unwrap()
    );
    assert!(matches!(
        actor
            .send(ReleaseIdentity {
                labels: labels("a")
            })
            .await
            .unwrap(),
        Err(IdentityError::NotAllocated { .. })
    ));
    assert!(
        actor
            .send(LookupIdentity { id: a.id })
            .await
            .unwrap()
            .is_none()
    );
    settle().await;
    assert_eq!(
        subscriber.take(),
        [
            IdentitiesChanged {
                added: vec![(a.id, labels("a"))],
                removed: vec![]
            },
            IdentitiesChanged {
                added: vec![],
                removed: vec![a.id]
            },
        ]
    );
    let dump = actor.send(Dump).await.unwrap();
    assert_eq!(dump.mode, IdentityMode::Local);
    assert!(dump.synced && dump.references.is_empty());
}

/// The generation tells a poller (Hubble's enrichment) whether a listing would differ: it moves
/// with every published change and stays put otherwise.
#[actix::test]
async fn the_generation_moves_with_every_published_change_and_only_then() {
    let (actor, subscriber) = start(IdentityBackend::Local, ClusterId::new(3));
    settle().await;
    let reserved = actor.send(Generation).await.unwrap();
    assert_eq!(subscriber.take().len(), 1);
    assert!(reserved > 0, "the reserved identities were published");
    let allocate = || AllocateIdentity {
        labels: labels("a"),
        preferred: None,
    };
    assert!(actor.send(allocate()).await.unwrap().unwrap().is_new);
    let allocated = actor.send(Generation).await.unwrap();
    assert!(allocated > reserved);
    // Another reference, a lookup and a listing change nothing anybody sees.
    assert!(!actor.send(allocate()).await.unwrap().unwrap().is_new);
    let _ = actor.send(ListIdentities).await.unwrap();
    assert_eq!(actor.send(Generation).await.unwrap(), allocated);
    let release = || ReleaseIdentity {
        labels: labels("a"),
    };
    actor.send(release()).await.unwrap().unwrap();
    assert_eq!(actor.send(Generation).await.unwrap(), allocated);
    // The last reference goes, and so does the identity.
    actor.send(release()).await.unwrap().unwrap();
    settle().await;
    let removed = subscriber.take();
    assert_eq!(removed.len(), 2, "{removed:?}");
    assert!(actor.send(Generation).await.unwrap() > allocated);
}

#[actix::test]
async fn cidr_identities_are_local_scope_and_all_or_nothing() {
    let (actor, subscriber) = start(IdentityBackend::Local, ClusterId::UNSET);
    let got = actor
        .send(AllocateCidrIdentities {
            prefixes: vec![
                prefix("10.0.0.0/8"),
                prefix("0.0.0.0/0"),
                prefix("10.1.2.3/24"),
            ],
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), 3);
    let (cidr8, id8) = got[0];
    assert_eq!(cidr8, prefix("10.0.0.0/8"));
    assert!(id8.is_local_scope());
    assert_eq!(got[1].1, NumericIdentity::WORLD);
    assert!(got[2].1.is_local_scope() && got[2].1 != id8);
    let info = actor
        .send(LookupIdentity { id: id8 })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.labels, Labels::for_cidr(prefix("10.0.0.0/8"), false));

    // Releasing a prefix without identity fails before anything is released.
    assert!(matches!(
        actor
            .send(ReleaseCidrIdentities {
                prefixes: vec![prefix("10.0.0.0/8"), prefix("192.168.0.0/16")],
            })
            .await
            .unwrap(),
        Err(IdentityError::CidrNotAllocated { .. })
    ));
    assert!(matches!(
        actor
            .send(ReleaseCidrIdentities {
                prefixes: vec![prefix("10.0.0.0/8"), prefix("10.0.0.0/8")],
            })
            .await
            .unwrap(),
        Err(IdentityError::CidrNotAllocated { .. })
    ));
    assert!(
        actor
            .send(LookupIdentity { id: id8 })
            .await
            .unwrap()
            .is_some()
    );

    let gone = actor
        .send(ReleaseCidrIdentities {
            prefixes: vec![
                prefix("10.0.0.0/8"),
                prefix("0.0.0.0/0"),
                prefix("10.1.2.0/24"),
            ],
        })
        .await
        .unwrap()
        .unwrap();
    let mut expected = vec![id8, got[2].1];
    expected.sort();
    assert_eq!(gone, expected);
    settle().await;
    let seen = subscriber.take();
    assert_eq!(seen.len(), 3, "reserved, added, removed: {seen:?}");
    assert_eq!(seen[1].added.len(), 2);
    assert_eq!(seen[2].removed, expected);
}

struct Node {
    allocator: Arc<IdentityAllocator>,
    backend: Arc<dyn Backend>,
}

async fn node(store: &MemoryStore, ip: &str, seed: u64) -> Node {
    let backend: Arc<dyn Backend> = Arc::new(store.client());
    let lease = backend.grant_lease(Duration::from_secs(900)).await.unwrap();
    let allocator = IdentityAllocator::new(
        Arc::clone(&backend),
        ClusterId::UNSET,
        ip.to_owned(),
        lease,
        seed,
    )
    .await
    .unwrap();
    Node {
        allocator: Arc::new(allocator),
        backend,
    }
}

fn kvstore_backend(node: &Node) -> IdentityBackend {
    IdentityBackend::Kvstore {
        allocator: Arc::clone(&node.allocator),
        backend: Arc::clone(&node.backend),
    }
}

#[actix::test]
async fn kvstore_mode_publishes_identities_of_other_nodes_and_their_removal() {
    let store = MemoryStore::new(Arc::new(TokioClock::new()));
    let a = node(&store, "192.168.0.1", 1).await;
    let b = node(&store, "192.168.0.2", 2).await;
    // An identity that exists before the actor starts arrives with the initial listing.
    let early = b.allocator.allocate(&labels("early")).await.unwrap();
    let (actor, subscriber) = start(kvstore_backend(&a), ClusterId::UNSET);
    wait_for(&subscriber, |c| {
        c.added.contains(&(early.id, labels("early")))
    })
    .await;
    assert!(actor.send(Dump).await.unwrap().synced);

    // Another node allocates: this node hears of it.
    let late = b.allocator.allocate(&labels("late")).await.unwrap();
    wait_for(&subscriber, |c| c.added == [(late.id, labels("late"))]).await;

    // This node allocates the same labels: same id, not new.
    let mine = actor
        .send(AllocateIdentity {
            labels: labels("late"),
            preferred: None,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        mine,
        AllocatedIdentity {
            id: late.id,
            is_new: false
        }
    );
    let fresh = actor
        .send(AllocateIdentity {
            labels: labels("fresh"),
            preferred: None,
        })
        .await
        .unwrap()
        .unwrap();
    assert!(fresh.is_new);
    // Published before the answer, so already seen now (after the mailbox drained).
    settle().await;
    assert!(
        subscriber
            .take()
            .iter()
            .any(|c| c.added == [(fresh.id, labels("fresh"))])
    );

    // Garbage collection removes the master key of `early`: the identity goes away.
    b.allocator.release(&labels("early")).await.unwrap();
    b.backend
        .delete(&identity_master_key(early.id))
        .await
        .unwrap();
    wait_for(&subscriber, |c| c.removed == [early.id]).await;
    assert!(
        actor
            .send(LookupIdentity { id: early.id })
            .await
            .unwrap()
            .is_none()
    );

    // A master key this node references survives its deletion (the allocator re-creates it).
    a.backend
        .delete(&identity_master_key(fresh.id))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        subscriber
            .take()
            .iter()
            .all(|c| !c.removed.contains(&fresh.id))
    );
    assert!(
        actor
            .send(LookupIdentity { id: fresh.id })
            .await
            .unwrap()
            .is_some()
    );
}

#[actix::test]
async fn operations_on_one_label_set_run_in_order_without_blocking_the_actor() {
    let store = MemoryStore::new(Arc::new(TokioClock::new()));
    let a = node(&store, "192.168.0.1", 1).await;
    let (actor, _subscriber) = start(kvstore_backend(&a), ClusterId::UNSET);
    actor.send(ListIdentities).await.unwrap();

    // Another client holds the allocation lock of the labels: the allocation waits for it.
    let other: Arc<dyn Backend> = Arc::new(store.client());
    let lock = other
        .lock(&identity_lock_key(&labels("x").to_kvstore_string()))
        .await
        .unwrap();
    let first = actor.send(AllocateIdentity {
        labels: labels("x"),
        preferred: None,
    });
    let release = actor.send(ReleaseIdentity {
        labels: labels("x"),
    });
    let second = actor.send(AllocateIdentity {
        labels: labels("x"),
        preferred: None,
    });
    let unrelated = actor.send(AllocateIdentity {
        labels: labels("y"),
        preferred: None,
    });
    let (first, release, second, unrelated) = (
        tokio::spawn(first),
        tokio::spawn(release),
        tokio::spawn(second),
        tokio::spawn(unrelated),
    );
    // Other label sets proceed, and the actor keeps answering while `x` waits.
    let y = unrelated.await.unwrap().unwrap().unwrap();
    assert!(y.is_new);
    let dump = actor.send(Dump).await.unwrap();
    assert_eq!(
        dump.queued_operations, 2,
        "release and second allocation wait"
    );
    assert!(!first.is_finished());

    other.unlock(lock).await.unwrap();
    let first = first.await.unwrap().unwrap().unwrap();
    assert!(first.is_new);
    // The release ran after the allocation, so it found the reference, and was the last one.
    assert!(release.await.unwrap().unwrap().unwrap());
    let second = second.await.unwrap().unwrap().unwrap();
    assert_eq!(
        second,
        AllocatedIdentity {
            id: first.id,
            is_new: false
        }
    );
    let dump = actor.send(Dump).await.unwrap();
    let refs: Vec<_> = dump.references.iter().map(|r| (r.id, r.refs)).collect();
    let mut expected = vec![(first.id, 1), (y.id, 1)];
    expected.sort();
    assert_eq!(refs, expected);
    assert_eq!(dump.queued_operations, 0);
}

/// What the identity actor sent, in the order it sent it: announcements and ipcache requests
/// arrive in one mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sent {
    Added(Vec<NumericIdentity>),
    Removed(Vec<NumericIdentity>),
    Upsert(IpNet, NumericIdentity),
    Delete(IpNet),
}

#[derive(Debug, Default, Clone)]
struct Recorder {
    log: Arc<Mutex<Vec<Sent>>>,
}

impl Recorder {
    fn take(&self) -> Vec<Sent> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

impl Actor for Recorder {
    type Context = Context<Self>;
}

impl Handler<IdentitiesChanged> for Recorder {
    type Result = ();
    fn handle(&mut self, msg: IdentitiesChanged, _: &mut Context<Self>) {
        let mut log = self.log.lock().unwrap();
        if !msg.removed.is_empty() {
            log.push(Sent::Removed(msg.removed));
        }
        if !msg.added.is_empty() {
            log.push(Sent::Added(
                msg.added.into_iter().map(|(id, _)| id).collect(),
            ));
        }
    }
}

impl Handler<UpsertIp> for Recorder {
    type Result = MessageResult<UpsertIp>;
    fn handle(&mut self, msg: UpsertIp, _: &mut Context<Self>) -> Self::Result {
        assert_eq!(msg.source, Source::Generated);
        assert_eq!(msg.key.cluster_id(), ClusterId::UNSET);
        self.log
            .lock()
            .unwrap()
            .push(Sent::Upsert(msg.key.prefix(), msg.entry.identity));
        MessageResult(Effective::Applied)
    }
}

impl Handler<DeleteIp> for Recorder {
    type Result = ();
    fn handle(&mut self, msg: DeleteIp, _: &mut Context<Self>) {
        assert_eq!(msg.source, Source::Generated);
        self.log
            .lock()
            .unwrap()
            .push(Sent::Delete(msg.key.prefix()));
    }
}

#[actix::test]
async fn the_policys_cidr_prefixes_become_identities_in_the_ipcache_in_a_safe_order() {
    let recorder = Recorder::default();
    let addr = recorder.clone().start();
    let actor = IdentityActor::new(IdentityConfig {
        cluster_id: ClusterId::UNSET,
        backend: IdentityBackend::Local,
        dual_stack: false,
        subscribers: vec![addr.clone().recipient()],
    })
    .with_ipcache(addr.clone().recipient(), addr.clone().recipient())
    .start();
    // Ids read back from the datapath after a restart: a local-scope one is preferred, a
    // cluster one is ignored.
    let restored = NumericIdentity::new(NumericIdentity::MIN_LOCAL_SCOPE.get() + 10);
    actor
        .send(RestoreCidrIdentities {
            identities: vec![
                (prefix("10.0.0.0/8"), restored),
                (prefix("172.16.0.0/12"), NumericIdentity::new(300)),
            ],
        })
        .await
        .unwrap();
    actor
        .send(CidrIdentitiesWanted {
            added: vec![
                prefix("0.0.0.0/0"),
                prefix("10.0.0.0/8"),
                prefix("172.16.0.0/12"),
            ],
            removed: Vec::new(),
        })
        .await
        .unwrap();
    actor.send(Dump).await.unwrap();
    settle().await;
    let log = recorder.take();
    let ten = restored;
    let Some(Sent::Added(added)) = log.get(1) else {
        panic!("reserved identities, then the cidr ones: {log:?}");
    };
    assert_eq!(added.len(), 2);
    assert!(added.contains(&ten));
    let other = added.iter().copied().find(|id| *id != ten).unwrap();
    assert!(other.is_local_scope());
    // Announced first, upserted second; the world prefix needs no entry.
    assert_eq!(
        log[2..],
        [
            Sent::Upsert(prefix("10.0.0.0/8"), ten),
            Sent::Upsert(prefix("172.16.0.0/12"), other),
        ]
    );

    // A prefix also allocated directly shares the identity: no second entry, and the
    // policy's release keeps it.
    let direct = actor
        .send(AllocateCidrIdentities {
            prefixes: vec![prefix("172.16.0.0/12")],
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(direct, vec![(prefix("172.16.0.0/12"), other)]);
    // Removal: a prefix the actor never allocated is skipped, not an error.
    actor
        .send(CidrIdentitiesWanted {
            added: Vec::new(),
            removed: vec![
                prefix("10.0.0.0/8"),
                prefix("172.16.0.0/12"),
                prefix("192.168.0.0/16"),
            ],
        })
        .await
        .unwrap();
    actor.send(Dump).await.unwrap();
    settle().await;
    // Deleted from the ipcache first, announced gone second.
    assert_eq!(
        recorder.take(),
        [Sent::Delete(prefix("10.0.0.0/8")), Sent::Removed(vec![ten])]
    );
    let dump = actor.send(Dump).await.unwrap();
    assert_eq!(dump.references.len(), 1);
    assert_eq!(dump.references[0].id, other);
}

#[actix::test]
async fn kvstore_mode_keeps_the_kvstores_id_over_a_preferred_one() {
    let store = MemoryStore::new(Arc::new(TokioClock::new()));
    let a = node(&store, "192.168.0.1", 1).await;
    let b = node(&store, "192.168.0.2", 2).await;
    let theirs = b.allocator.allocate(&labels("shared")).await.unwrap();
    let (actor, _subscriber) = start(kvstore_backend(&a), ClusterId::UNSET);
    let preferred = NumericIdentity::new(theirs.id.get() + 7);
    let got = actor
        .send(AllocateIdentity {
            labels: labels("shared"),
            preferred: Some(preferred),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.id, theirs.id);
    // A label set new to the cluster: the allocator picks; the preference is only logged.
    let fresh = actor
        .send(AllocateIdentity {
            labels: labels("fresh"),
            preferred: Some(preferred),
        })
        .await
        .unwrap()
        .unwrap();
    assert!(fresh.is_new && fresh.id != theirs.id);
}
