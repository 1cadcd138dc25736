//! IpCache actor tests: datapath messages only on effective changes, source precedence with
//! fallback, and the kvstore sync against the in-memory backend.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::{Actor, Context, Handler};
use actors::ipcache::{
    DeleteIp, Dump, Effective, IpCacheActor, IpCacheConfig, IpCacheOutputs, IpEntry, K8sMetadata,
    KvstoreLeaseChanged, KvstoreSyncConfig, LookupIp, Source, UpsertIp,
};
use datapath::api::{IpcacheKey, RemoteEndpointInfo};
use datapath::reconciler::{DeleteIpcache, UpsertIpcache};
use kvstore::Backend;
use kvstore::clock::TokioClock;
use kvstore::keys::{IPCACHE_PREFIX, IpCacheEntry, TypedStore};
use kvstore::memory::MemoryStore;
use model::identity::{ClusterId, NumericIdentity};

/// What the probe saw, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Upsert(Vec<(IpcacheKey, RemoteEndpointInfo)>),
    Delete(Vec<IpcacheKey>),
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

impl Handler<UpsertIpcache> for Probe {
    type Result = ();
    fn handle(&mut self, msg: UpsertIpcache, _: &mut Context<Self>) {
        self.seen.lock().unwrap().push(Seen::Upsert(msg.entries));
    }
}

impl Handler<DeleteIpcache> for Probe {
    type Result = ();
    fn handle(&mut self, msg: DeleteIpcache, _: &mut Context<Self>) {
        self.seen.lock().unwrap().push(Seen::Delete(msg.keys));
    }
}

fn start(config: IpCacheConfig) -> (actix::Addr<IpCacheActor>, Probe) {
    let probe = Probe::default();
    let addr = probe.clone().start();
    let outputs = IpCacheOutputs {
        upsert: addr.clone().recipient(),
        delete: addr.recipient(),
    };
    (IpCacheActor::new(config, outputs).start(), probe)
}

fn key(s: &str) -> IpcacheKey {
    IpcacheKey::new(ClusterId::UNSET, s.parse().unwrap())
}

fn id(n: u32) -> NumericIdentity {
    NumericIdentity::new(n)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn upsert(k: IpcacheKey, source: Source, entry: IpEntry) -> UpsertIp {
    UpsertIp {
        key: k,
        source,
        entry,
    }
}

/// Lets the probe's mailbox drain.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[actix::test]
async fn precedence_decides_and_the_datapath_sees_only_effective_changes() {
    let (cache, probe) = start(IpCacheConfig {
        node_ip: Some(ip("192.168.1.1")),
        kvstore: None,
    });
    let k = key("10.0.0.5/32");
    let remote = IpEntry {
        host_ip: Some(ip("192.168.1.2")),
        ..IpEntry::identity(id(400))
    };
    assert_eq!(
        cache
            .send(upsert(k, Source::KvStore, remote))
            .await
            .unwrap(),
        Effective::Applied
    );
    assert_eq!(
        cache
            .send(upsert(k, Source::Local, IpEntry::identity(id(300))))
            .await
            .unwrap(),
        Effective::Applied
    );
    // Lower precedence than local: recorded, not applied.
    assert_eq!(
        cache
            .send(upsert(k, Source::Generated, IpEntry::identity(id(500))))
            .await
            .unwrap(),
        Effective::ShadowedBy(Source::Local)
    );
    // Changing a shadowed claim does not reach the datapath either.
    cache
        .send(upsert(
            k,
            Source::KvStore,
            IpEntry {
                host_ip: Some(ip("192.168.1.3")),
                ..IpEntry::identity(id(401))
            },
        ))
        .await
        .unwrap();
    settle().await;
    assert_eq!(
        probe.take(),
        [
            Seen::Upsert(vec![(
                k,
                RemoteEndpointInfo {
                    tunnel_endpoint: Some(ip("192.168.1.2")),
                    ..RemoteEndpointInfo::identity(id(400))
                }
            )]),
            Seen::Upsert(vec![(k, RemoteEndpointInfo::identity(id(300)))]),
        ]
    );

    // Deleting local falls back to the newest kvstore claim, then to generated, then nothing.
    cache
        .send(DeleteIp {
            key: k,
            source: Source::Local,
        })
        .await
        .unwrap();
    cache
        .send(DeleteIp {
            key: k,
            source: Source::KvStore,
        })
        .await
        .unwrap();
    cache
        .send(DeleteIp {
            key: k,
            source: Source::Generated,
        })
        .await
        .unwrap();
    settle().await;
    assert_eq!(
        probe.take(),
        [
            Seen::Upsert(vec![(
                k,
                RemoteEndpointInfo {
                    tunnel_endpoint: Some(ip("192.168.1.3")),
                    ..RemoteEndpointInfo::identity(id(401))
                }
            )]),
            Seen::Upsert(vec![(k, RemoteEndpointInfo::identity(id(500)))]),
            Seen::Delete(vec![k]),
        ]
    );
    assert!(cache.send(Dump).await.unwrap().entries.is_empty());
}

#[actix::test]
async fn lookup_uses_the_longest_prefix() {
    let (cache, _probe) = start(IpCacheConfig {
        node_ip: None,
        kvstore: None,
    });
    let cidr_id = id(NumericIdentity::LOCAL_SCOPE_FLAG | 1);
    cache
        .send(upsert(
            key("10.0.0.0/16"),
            Source::Generated,
            IpEntry::identity(cidr_id),
        ))
        .await
        .unwrap();
    cache
        .send(upsert(
            key("10.0.3.4/32"),
            Source::Local,
            IpEntry::identity(id(300)),
        ))
        .await
        .unwrap();
    let found = cache
        .send(LookupIp { ip: ip("10.0.3.4") })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (found.source, found.entry.identity),
        (Source::Local, id(300))
    );
    let found = cache
        .send(LookupIp { ip: ip("10.0.9.9") })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (found.key, found.entry.identity),
        (key("10.0.0.0/16"), cidr_id)
    );
    assert!(
        cache
            .send(LookupIp { ip: ip("10.1.0.1") })
            .await
            .unwrap()
            .is_none()
    );
}

/// Waits (in paused time) until `check` holds.
async fn eventually(mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not reached");
}

#[actix::test]
async fn local_entries_are_published_with_the_lease_and_remote_ones_consumed() {
    tokio::time::pause();
    let store = MemoryStore::new(Arc::new(TokioClock::new()));
    let backend: Arc<dyn Backend> = Arc::new(store.client());
    let lease = backend.grant_lease(Duration::from_secs(900)).await.unwrap();
    let node_ip = ip("192.168.1.1");
    let (cache, probe) = start(IpCacheConfig {
        node_ip: Some(node_ip),
        kvstore: Some(KvstoreSyncConfig {
            backend: Arc::clone(&backend),
            lease,
            consume: true,
        }),
    });
    let typed: TypedStore<IpCacheEntry> = TypedStore::new(Arc::clone(&backend), IPCACHE_PREFIX);

    let pod = IpEntry {
        host_ip: Some(node_ip),
        k8s: Some(K8sMetadata {
            namespace: "default".into(),
            pod_name: "client".into(),
            ..K8sMetadata::default()
        }),
        ..IpEntry::identity(id(300))
    };
    cache
        .send(upsert(key("10.0.0.5/32"), Source::Local, pod))
        .await
        .unwrap();
    eventually(async || typed.get("10.0.0.5").await.unwrap().is_some()).await;
    let kv = backend
        .get(&format!("{IPCACHE_PREFIX}/10.0.0.5"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kv.lease, Some(lease));
    let written = typed.get("10.0.0.5").await.unwrap().unwrap();
    assert_eq!(written.id, id(300));
    assert_eq!(written.host_ip, Some(node_ip));
    assert_eq!(written.k8s_pod_name, "client");
    assert_eq!(written.mask, None);

    // Another node's entry arrives as a kvstore claim, tunnelled to that node.
    let other = IpCacheEntry::host(ip("10.0.1.7"), id(301), Some(ip("192.168.1.2")));
    typed.upsert(&other, None).await.unwrap();
    let k = key("10.0.1.7/32");
    eventually(async || {
        cache
            .send(Dump)
            .await
            .unwrap()
            .entries
            .iter()
            .any(|e| e.key == k && e.source == Source::KvStore)
    })
    .await;
    settle().await;
    let seen = probe.take();
    assert!(seen.contains(&Seen::Upsert(vec![(
        k,
        RemoteEndpointInfo {
            tunnel_endpoint: Some(ip("192.168.1.2")),
            ..RemoteEndpointInfo::identity(id(301))
        }
    )])));
    // Our own published entry is not read back as a kvstore claim.
    let dump = cache.send(Dump).await.unwrap();
    let own = dump
        .entries
        .iter()
        .find(|e| e.key == key("10.0.0.5/32"))
        .unwrap();
    assert!(own.shadowed.is_empty(), "{own:?}");

    // The other node's key goes away: so does its entry.
    typed.delete("10.0.1.7").await.unwrap();
    eventually(async || {
        cache
            .send(LookupIp { ip: ip("10.0.1.7") })
            .await
            .unwrap()
            .is_none()
    })
    .await;

    // Deleting the local claim removes the published key.
    cache
        .send(DeleteIp {
            key: key("10.0.0.5/32"),
            source: Source::Local,
        })
        .await
        .unwrap();
    eventually(async || typed.get("10.0.0.5").await.unwrap().is_none()).await;
}

#[actix::test]
async fn writes_during_an_outage_are_retried_and_a_new_lease_republishes() {
    tokio::time::pause();
    let store = MemoryStore::new(Arc::new(TokioClock::new()));
    let backend: Arc<dyn Backend> = Arc::new(store.client());
    let lease = backend.grant_lease(Duration::from_secs(900)).await.unwrap();
    let (cache, _probe) = start(IpCacheConfig {
        node_ip: None,
        kvstore: Some(KvstoreSyncConfig {
            backend: Arc::clone(&backend),
            lease,
            consume: false,
        }),
    });
    let typed: TypedStore<IpCacheEntry> = TypedStore::new(Arc::clone(&backend), IPCACHE_PREFIX);

    store.set_unavailable(true);
    cache
        .send(upsert(
            key("10.0.0.8/32"),
            Source::Local,
            IpEntry::identity(id(302)),
        ))
        .await
        .unwrap();
    eventually(async || {
        let dump = cache.send(Dump).await.unwrap();
        dump.kvstore.unwrap().last_error.is_some()
    })
    .await;
    store.set_unavailable(false);
    eventually(async || typed.get("10.0.0.8").await.unwrap().is_some()).await;
    let sync = cache.send(Dump).await.unwrap().kvstore.unwrap();
    assert!(
        sync.pending.is_empty() && sync.last_error.is_none(),
        "{sync:?}"
    );

    // The lease is lost: its keys vanish; a new lease brings them back.
    backend.revoke_lease(lease).await.unwrap();
    assert!(typed.get("10.0.0.8").await.unwrap().is_none());
    let new_lease = backend.grant_lease(Duration::from_secs(900)).await.unwrap();
    cache
        .send(KvstoreLeaseChanged { lease: new_lease })
        .await
        .unwrap();
    eventually(async || typed.get("10.0.0.8").await.unwrap().is_some()).await;
    let kv = backend
        .get(&format!("{IPCACHE_PREFIX}/10.0.0.8"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kv.lease, Some(new_lease));
}
