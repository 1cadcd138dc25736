//! ClusterMesh import: how long an agent takes to import 100k ipcache entries and 10k
//! identities from a remote cluster's etcd, and how much memory it holds afterwards.
//!
//! A private etcd for remote cluster c3 is filled (batched transactions, timed separately)
//! with the cluster configuration, the heartbeat, the sync canaries, 10k identities of c3's
//! range and 100k ipcache entries in upstream's format (100 hosts, 100 pods per identity).
//! Then the [`ClusterMesh`] actor starts with the real etcd connector over a configuration
//! directory naming c3, feeding the real identity actor and ipcache actor, whose datapath is
//! the reconciler over the fake datapath; nodes and services go to a sink. Measured from the
//! actor's start:
//! - imported: the mesh status counts every entry and reports c3 synced (polled every 50 ms);
//! - at the actors: a lookup answered by the ipcache actor and by the identity actor behind
//!   every message the import sent them (mailboxes are FIFO), and the identity subscriber
//!   having received all 10k identities;
//! - in the datapath: the fake ipcache map holds all 100k entries.
//!
//! Prints wall time, CPU seconds of this process and of etcd, and VmRSS/VmHWM before and
//! after (VmHWM is reset before the import when the kernel allows it). Target: < 10 s.
//!
//! Run: `TMPDIR=/dev/shm cargo bench -p cmd --bench clustermesh_import` (no root needed).

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use actix::{Actor, Arbiter, Context, Handler};
use actors::clusterstate::messages::RemoteServices;
use actors::identity::{
    IdentitiesChanged, IdentityActor, IdentityBackend, IdentityConfig, LookupIdentity,
};
use actors::ipcache::{IpCacheActor, IpCacheConfig, IpCacheOutputs, LookupIp};
use actors::node::RemoteNodes;
use cilium_cmd::kvstore_mode::EtcdConnector;
use clustermesh::{ClusterMesh, ClusterMeshConfig, ClusterMeshOutputs, ClusterMeshStatus};
use datapath::api::{MapName, MapValue};
use datapath::fake::FakeDatapath;
use datapath::reconciler::{DatapathActor, DatapathActorConfig};
use futures::StreamExt;
use kvstore::testing::etcd::EtcdServer;
use kvstore::{Backend, Txn, TxnOp};
use model::identity::{ClusterId, ClusterName, NumericIdentity};

const IPCACHE_ENTRIES: u32 = 100_000;
const IDENTITIES: u32 = 10_000;
/// etcd's default `--max-txn-ops`.
const TXN_OPS: usize = 128;
/// Transactions in flight while filling.
const FILL_CONCURRENCY: usize = 8;
/// The remote cluster's id; its identities start at `3 << 16`.
const REMOTE_ID: u8 = 3;
const TARGET: Duration = Duration::from_secs(10);
/// Give up (and fail the bench) after this long.
const GIVE_UP: Duration = Duration::from_secs(300);
const POLL: Duration = Duration::from_millis(50);

fn remote_identity(i: u32) -> NumericIdentity {
    NumericIdentity::new((u32::from(REMOTE_ID) << 16) + 1 + i)
}

/// Pod `i`'s address: 10.64.0.1 onwards.
fn pod_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 64, 0, 1)) + i)
}

/// Every key c3's agents and clustermesh-apiserver would have written, in upstream's format.
fn remote_state() -> Vec<(String, String)> {
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let mut kvs = vec![
        (
            "cilium/cluster-config/c3".to_owned(),
            r#"{"id":3,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255}}"#
                .to_owned(),
        ),
        ("cilium/.heartbeat".to_owned(), now.clone()),
    ];
    for i in 0..IDENTITIES {
        kvs.push((
            format!("cilium/state/identities/v1/id/{}", remote_identity(i)),
            format!(
                "k8s:app=bench-{i};k8s:io.cilium.k8s.policy.cluster=c3;\
                 k8s:io.kubernetes.pod.namespace=default;"
            ),
        ));
    }
    for i in 0..IPCACHE_ENTRIES {
        let ip = pod_ip(i);
        let host = Ipv4Addr::new(192, 168, 3, u8::try_from(i % 100 + 1).unwrap_or(1));
        kvs.push((
            format!("cilium/state/ip/v1/default/{ip}"),
            format!(
                r#"{{"IP":"{ip}","Mask":null,"HostIP":"{host}","ID":{},"Key":0,"Metadata":"","K8sNamespace":"default","K8sPodName":"pod-{i}","K8sServiceAccount":"","NamedPorts":null}}"#,
                remote_identity(i % IDENTITIES)
            ),
        ));
    }
    for prefix in [
        "cilium/state/nodes/v1",
        "cilium/state/services/v1",
        "cilium/state/identities/v1",
        "cilium/state/ip/v1",
    ] {
        kvs.push((format!("cilium/synced/c3/{prefix}"), now.clone()));
    }
    kvs
}

/// Writes `kvs` in transactions of [`TXN_OPS`] puts, [`FILL_CONCURRENCY`] at a time.
async fn fill(backend: &dyn Backend, kvs: Vec<(String, String)>) {
    let txns: Vec<Txn> = kvs
        .chunks(TXN_OPS)
        .map(|chunk| Txn {
            compares: Vec::new(),
            success: chunk
                .iter()
                .map(|(key, value)| TxnOp::Put {
                    key: key.clone(),
                    value: value.clone().into_bytes(),
                    lease: None,
                })
                .collect(),
            failure: Vec::new(),
        })
        .collect();
    let mut results = futures::stream::iter(txns.into_iter().map(|txn| backend.txn(txn)))
        .buffer_unordered(FILL_CONCURRENCY);
    while let Some(result) = results.next().await {
        let response = result.unwrap_or_else(|e| panic!("fill transaction failed: {e}"));
        assert!(
            response.succeeded,
            "a fill transaction without compares failed"
        );
    }
}

/// Receives what the mesh sends to the node manager and the service watcher (nothing here),
/// and, as the identity actor's subscriber, counts the identities published.
struct Sink {
    identities: Arc<AtomicUsize>,
}

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Handler<RemoteNodes> for Sink {
    type Result = ();
    fn handle(&mut self, _: RemoteNodes, _: &mut Context<Self>) {}
}

impl Handler<RemoteServices> for Sink {
    type Result = ();
    fn handle(&mut self, _: RemoteServices, _: &mut Context<Self>) {}
}

impl Handler<IdentitiesChanged> for Sink {
    type Result = ();
    fn handle(&mut self, msg: IdentitiesChanged, _: &mut Context<Self>) {
        let remote = msg
            .added
            .iter()
            .filter(|(id, _)| ClusterId::new(REMOTE_ID).contains(*id))
            .count();
        self.identities.fetch_add(remote, Ordering::Relaxed);
    }
}

/// A `/proc/self/status` field in kB.
fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                let rest = line.strip_prefix(field)?.strip_prefix(':')?;
                rest.split_whitespace().next()?.parse().ok()
            })
        })
        .unwrap_or(0)
}

fn memory() -> String {
    format!(
        "VmRSS {:.1} MiB, VmHWM {:.1} MiB",
        status_kb("VmRSS") as f64 / 1024.0,
        status_kb("VmHWM") as f64 / 1024.0
    )
}

/// CPU seconds (user + system) of a process, from `/proc/<pid>/stat` (USER_HZ is 100 there).
fn cpu_seconds(pid: u32) -> f64 {
    let parse = || -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (_, rest) = stat.rsplit_once(')')?;
        let mut fields = rest.split_whitespace().skip(11);
        let utime: f64 = fields.next()?.parse().ok()?;
        let stime: f64 = fields.next()?.parse().ok()?;
        Some((utime + stime) / 100.0)
    };
    parse().unwrap_or(f64::NAN)
}

/// The etcd this process started: its child named `etcd`.
fn etcd_pid() -> Option<u32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let ppid = rest.split_whitespace().nth(1)?;
            (head.ends_with("(etcd") && ppid == me).then_some(pid)
        })
}

/// CPU seconds of this process and of etcd since `start`.
struct CpuMark {
    me: f64,
    etcd: f64,
    etcd_pid: Option<u32>,
}

impl CpuMark {
    fn now(etcd_pid: Option<u32>) -> Self {
        CpuMark {
            me: cpu_seconds(std::process::id()),
            etcd: etcd_pid.map_or(f64::NAN, cpu_seconds),
            etcd_pid,
        }
    }

    fn since(&self) -> String {
        let now = CpuMark::now(self.etcd_pid);
        format!(
            "CPU: this process {:.2} s, etcd {:.2} s",
            now.me - self.me,
            now.etcd - self.etcd
        )
    }
}

/// Polls `check` every [`POLL`] until it holds; panics after [`GIVE_UP`].
async fn until<F, Fut>(what: &str, start: Instant, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < GIVE_UP, "{what}: not within {GIVE_UP:?}");
        tokio::time::sleep(POLL).await;
    }
}

fn write_mesh_dir(dir: &Path, etcd: &EtcdServer) {
    std::fs::create_dir_all(dir).expect("mesh dir");
    std::fs::write(
        dir.join("c3"),
        format!("endpoints:\n- {}\n", etcd.endpoint()),
    )
    .expect("c3's etcd config");
}

async fn run() {
    let etcd = EtcdServer::start().await.expect("private etcd for c3");
    let etcd_pid = etcd_pid();
    let writer = etcd.client().await;
    let kvs = remote_state();
    let keys = kvs.len();
    let cpu = CpuMark::now(etcd_pid);
    let started = Instant::now();
    fill(&writer, kvs).await;
    let fill_time = started.elapsed();
    println!(
        "fill: {keys} keys ({IPCACHE_ENTRIES} ipcache entries, {IDENTITIES} identities) in \
         {fill_time:.2?} ({:.0} keys/s); {}",
        keys as f64 / fill_time.as_secs_f64(),
        cpu.since()
    );
    drop(writer);

    let dir = tempfile::tempdir().expect("temp dir");
    let mesh_dir = dir.path().join("clustermesh");
    write_mesh_dir(&mesh_dir, &etcd);

    let fake = FakeDatapath::new();
    let datapath_arbiter = Arbiter::new();
    let datapath = DatapathActor::start_in_arbiter(&datapath_arbiter.handle(), {
        let fake = fake.clone();
        move |_| DatapathActor::new(Box::new(fake), DatapathActorConfig::default())
    });
    let ipcache = IpCacheActor::new(
        IpCacheConfig {
            node_ip: Some(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1))),
            kvstore: None,
        },
        IpCacheOutputs {
            upsert: datapath.clone().recipient(),
            delete: datapath.clone().recipient(),
        },
    )
    .start();
    let published = Arc::new(AtomicUsize::new(0));
    let sink = Sink {
        identities: Arc::clone(&published),
    }
    .start();
    let identity = IdentityActor::new(IdentityConfig {
        cluster_id: ClusterId::new(1),
        backend: IdentityBackend::Local,
        dual_stack: false,
        subscribers: vec![sink.clone().recipient()],
    })
    .with_ipcache(ipcache.clone().recipient(), ipcache.clone().recipient())
    .start();
    // Let the actors settle so their start-up is not measured.
    ipcache
        .send(LookupIp {
            ip: IpAddr::V4(pod_ip(0)),
        })
        .await
        .expect("ipcache actor");

    // VmHWM is reset (Linux: "5" to clear_refs) so that the fill's peak does not count.
    let hwm_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    println!("before import: {} (VmHWM reset: {hwm_reset})", memory());

    let cpu = CpuMark::now(etcd_pid);
    let start = Instant::now();
    let mesh = ClusterMesh::new(
        ClusterMeshConfig::new(
            mesh_dir,
            ClusterName::new("c1").expect("cluster name"),
            ClusterId::new(1),
        ),
        ClusterMeshOutputs {
            identities: identity.clone().recipient(),
            nodes: sink.clone().recipient(),
            services: sink.clone().recipient(),
            ipcache_upsert: ipcache.clone().recipient(),
            ipcache_delete: ipcache.clone().recipient(),
        },
        Arc::new(EtcdConnector),
    )
    .start();

    let imported = until("the mesh status counts everything, synced", start, || {
        let mesh = mesh.clone();
        async move {
            let status = mesh
                .send(ClusterMeshStatus)
                .await
                .expect("clustermesh actor");
            status.first().is_some_and(|c3| {
                c3.num_endpoints == u64::from(IPCACHE_ENTRIES)
                    && c3.num_identities == u64::from(IDENTITIES)
                    && c3.synced.endpoints
                    && c3.synced.identities
            })
        }
    })
    .await;
    let last_ip = pod_ip(IPCACHE_ENTRIES - 1);
    let found = ipcache
        .send(LookupIp {
            ip: IpAddr::V4(last_ip),
        })
        .await
        .expect("ipcache actor");
    let at_ipcache = start.elapsed();
    assert!(found.is_some(), "{last_ip} not in the ipcache");
    let last_id = remote_identity(IDENTITIES - 1);
    let found = identity
        .send(LookupIdentity { id: last_id })
        .await
        .expect("identity actor");
    let at_identity = start.elapsed();
    assert!(found.is_some(), "identity {last_id} unknown");
    let published_all = until("the subscriber has every identity", start, || {
        let published = Arc::clone(&published);
        async move { published.load(Ordering::Relaxed) == IDENTITIES as usize }
    })
    .await;
    let remote_entries = || {
        fake.entries(MapName::Ipcache)
            .iter()
            .filter(|(_, value)| {
                matches!(value, MapValue::Ipcache(info)
                    if ClusterId::new(REMOTE_ID).contains(info.identity))
            })
            .count()
    };
    let in_datapath = until("the datapath's ipcache has every entry", start, || {
        let count = remote_entries();
        async move { count == IPCACHE_ENTRIES as usize }
    })
    .await;
    let cpu_used = cpu.since();

    println!("import of {IPCACHE_ENTRIES} ipcache entries and {IDENTITIES} identities from etcd:");
    println!("  imported (mesh status: counts complete, synced)  {imported:>10.2?}");
    println!("  processed by the ipcache actor                   {at_ipcache:>10.2?}");
    println!("  processed by the identity actor                  {at_identity:>10.2?}");
    println!("  every identity published to the subscriber       {published_all:>10.2?}");
    println!("  every entry in the (fake) datapath ipcache map   {in_datapath:>10.2?}");
    let verdict = if in_datapath < TARGET {
        "met"
    } else {
        "MISSED"
    };
    println!("  target < {TARGET:?}: {verdict}");
    println!("  {cpu_used}");
    println!("after import: {}", memory());
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("after import, 2 s later: {}", memory());

    datapath_arbiter.stop();
    etcd.stop().await.expect("stop etcd");
}

fn main() {
    // `cargo bench` passes `--bench`; filters are not supported.
    actix::System::new().block_on(run());
}
