//! Identity allocations per second (DESIGN 6: >= 500/s against one local etcd).
//!
//! Cases: the in-memory backend, a private etcd with its data directory in the default temp
//! dir, and one with it on `/dev/shm` (tmpfs: no fsync cost); each sequential (one allocator)
//! and with 8 concurrent allocators (8 clients, 8 leases, 8 node IPs); each measuring new
//! label sets (lock, one transaction that creates master and slave key if the id is free and no
//! node references the labels yet, unlock) and re-allocation of label sets another node created
//! (lock, conditional slave write, unlock).
//!
//! Run with `cargo bench -p kvstore --bench identity_alloc`. The `/dev/shm` case runs in a
//! child process of this binary with `TMPDIR=/dev/shm`, since the test etcd puts its data in
//! the temp dir. Pass `--count N` to change the number of allocations per case. Each case
//! prints a progress line to stderr; the closing `SUMMARY` lines (one per case, plus a baseline
//! of sequential single-key writes and reads per backend) go to stdout.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use kvstore::Backend;
use kvstore::allocator::IdentityAllocator;
use kvstore::clock::TokioClock;
use kvstore::memory::MemoryStore;
use kvstore::testing::etcd::EtcdServer;
use model::identity::ClusterId;
use model::labels::{Label, Labels};

const CLUSTER: ClusterId = ClusterId::new(3);
const CONCURRENCY: usize = 8;
const LEASE_TTL: Duration = Duration::from_secs(15 * 60);
const DEFAULT_COUNT: usize = 2000;
const SHM: &str = "/dev/shm";
const CHILD_FLAG: &str = "--etcd-child";
const SUMMARY: &str = "SUMMARY";

type BenchError = Box<dyn std::error::Error + Send + Sync>;
type Result<T> = std::result::Result<T, BenchError>;

/// Wraps an error with what was being done.
fn context<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> BenchError {
    move |err| format!("{what}: {err}").into()
}

#[derive(Clone, Copy)]
enum Target {
    Memory,
    Etcd,
}

fn labels(round: &str, n: usize) -> Labels {
    [
        Label::k8s("app", format!("{round}-{n}")),
        Label::k8s("io.kubernetes.pod.namespace", "bench"),
    ]
    .into_iter()
    .collect()
}

/// One client per allocator: a memory client of the shared store, or an etcd connection.
struct Clients {
    memory: Option<MemoryStore>,
    etcd: Option<EtcdServer>,
}

impl Clients {
    async fn client(&self) -> Result<Arc<dyn Backend>> {
        match (&self.memory, &self.etcd) {
            (Some(store), _) => Ok(Arc::new(store.client())),
            (None, Some(server)) => Ok(Arc::new(server.client().await)),
            (None, None) => Err("no backend configured".into()),
        }
    }

    async fn allocators(
        &self,
        count: usize,
        first_node: usize,
    ) -> Result<Vec<Arc<IdentityAllocator>>> {
        let mut out = Vec::new();
        for i in 0..count {
            let backend = self.client().await?;
            let lease = backend.grant_lease(LEASE_TTL).await?;
            let node = first_node + i;
            let ip = format!(
                "10.{}.{}.{}",
                node / 65536,
                (node / 256) % 256,
                node % 256 + 1
            );
            let alloc = IdentityAllocator::new(backend, CLUSTER, ip, lease, node as u64).await?;
            out.push(Arc::new(alloc));
        }
        Ok(out)
    }
}

/// Allocates `count` label sets of `round` spread over `allocators`, each allocator working
/// through its share sequentially; returns allocations per second and the new/reused split.
async fn run(
    allocators: &[Arc<IdentityAllocator>],
    round: &str,
    count: usize,
) -> Result<(f64, usize)> {
    let share = count.div_ceil(allocators.len());
    let start = Instant::now();
    let runs = allocators.iter().enumerate().map(|(i, alloc)| {
        let alloc = Arc::clone(alloc);
        async move {
            let mut new = 0;
            for n in (i * share)..((i + 1) * share).min(count) {
                if alloc.allocate(&labels(round, n)).await?.is_new {
                    new += 1;
                }
            }
            Ok::<usize, BenchError>(new)
        }
    });
    let mut new = 0;
    for result in join_all(runs).await {
        new += result?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok((count as f64 / elapsed, new))
}

/// Sequential single-key writes and reads per second: the unit cost the allocator's round
/// trips are made of (a new allocation is a lock, a listing, one transaction and an unlock).
async fn round_trips(backend: &dyn Backend, count: usize) -> Result<(f64, f64)> {
    let start = Instant::now();
    for n in 0..count {
        backend
            .put(&format!("bench/rtt/{n}"), b"x".to_vec(), None)
            .await?;
    }
    let writes = count as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    for n in 0..count {
        backend.get(&format!("bench/rtt/{n}")).await?;
    }
    let reads = count as f64 / start.elapsed().as_secs_f64();
    backend.delete_prefix("bench/rtt/").await?;
    Ok((writes, reads))
}

async fn bench_target(name: &str, target: Target, count: usize) -> Result<Vec<String>> {
    let clients = match target {
        Target::Memory => Clients {
            memory: Some(MemoryStore::new(Arc::new(TokioClock::new()))),
            etcd: None,
        },
        Target::Etcd => Clients {
            memory: None,
            etcd: Some(
                EtcdServer::start()
                    .await
                    .map_err(context("starting etcd"))?,
            ),
        },
    };
    let mut summaries = Vec::new();
    let (writes, reads) = round_trips(&*clients.client().await?, count).await?;
    summaries.push(format!(
        "{SUMMARY} {name:<28} {:<13} {:<20} {writes:>9.0} writes/s, {reads:.0} reads/s (baseline)",
        "sequential", "single-key ops"
    ));
    for (mode, width) in [("sequential", 1), ("8 concurrent", CONCURRENCY)] {
        let round = format!("{}-{width}", name.replace(' ', "-"));
        // Creators allocate new sets; a second group of nodes then re-allocates the same sets.
        let creators = clients.allocators(width, 0).await?;
        let (new_rate, new) = run(&creators, &round, count).await?;
        if new != count {
            return Err(format!("expected {count} new identities, got {new}").into());
        }
        let reusers = clients.allocators(width, 1000).await?;
        let (reuse_rate, new) = run(&reusers, &round, count).await?;
        if new != 0 {
            return Err(format!("re-allocation created {new} identities").into());
        }
        for (kind, rate) in [
            ("new label sets", new_rate),
            ("existing label sets", reuse_rate),
        ] {
            let line = format!(
                "{SUMMARY} {name:<28} {mode:<13} {kind:<20} {rate:>9.0} allocations/s ({count} allocations)"
            );
            eprintln!("{line}");
            summaries.push(line);
        }
    }
    if let Some(server) = clients.etcd {
        server.stop().await.map_err(context("stopping etcd"))?;
    }
    Ok(summaries)
}

/// Runs the `/dev/shm` case in a child with `TMPDIR` pointing there, passing its lines on.
fn bench_shm_child(count: usize) -> Result<Vec<String>> {
    let exe = std::env::current_exe().map_err(context("locating the bench binary"))?;
    let output = Command::new(exe)
        .arg(CHILD_FLAG)
        .arg("--count")
        .arg(count.to_string())
        .env("TMPDIR", SHM)
        .stderr(Stdio::inherit())
        .output()
        .map_err(context("running the /dev/shm child"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!("the /dev/shm child failed: {}", output.status).into());
    }
    Ok(stdout
        .lines()
        .filter(|line| line.starts_with(SUMMARY))
        .map(str::to_owned)
        .collect())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let count = args
        .iter()
        .position(|a| a == "--count")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse::<usize>())
        .transpose()
        .map_err(context("--count takes a number"))?
        .unwrap_or(DEFAULT_COUNT);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(context("building the tokio runtime"))?;

    if args.iter().any(|a| a == CHILD_FLAG) {
        let summaries =
            runtime.block_on(bench_target("etcd, data on /dev/shm", Target::Etcd, count))?;
        for line in summaries {
            println!("{line}");
        }
        return Ok(());
    }

    let tmp = std::env::temp_dir();
    println!("identity allocation benchmark: {count} allocations per case, cluster id {CLUSTER}");
    println!("default temp dir for etcd data: {}", tmp.display());
    let mut summaries = runtime.block_on(bench_target("memory backend", Target::Memory, count))?;
    summaries.extend(runtime.block_on(bench_target(
        &format!("etcd, data in {}", tmp.display()),
        Target::Etcd,
        count,
    ))?);
    if std::path::Path::new(SHM).is_dir() {
        summaries.extend(bench_shm_child(count)?);
    } else {
        println!("{SHM} is not available; skipping the tmpfs etcd case");
    }
    println!();
    for line in summaries {
        println!("{line}");
    }
    Ok(())
}
