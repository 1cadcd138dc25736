//! Endpoint creation to ready for 100 pods against the real `cilium-agent` (root): the agent
//! runs in a fresh node namespace with a private bpffs and state dir, and 100 pod namespaces
//! get their endpoint three ways: through `cilium-cni` one after another (what a container
//! runtime sees, process start included), through the REST API one after another, and
//! through the REST API 8 at a time. The agent answers `PUT /endpoint` once the endpoint's
//! policy is realized, so the latency of a call whose answer says `ready` is creation to
//! ready; an answer in any other state is polled until ready and that time counts too.
//! Prints p50/p99/max and totals for creation and deletion; everything is removed at the end.
//!
//! Run: `cargo bench -p cmd --bench endpoint_create` as root.

#[path = "../tests/common/node.rs"]
mod node;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cilium_cmd::api::{self, EndpointChangeRequest, LabelPair};
use cilium_cmd::client::AgentClient;
use hyper::Method;
use node::{Netns, Node, cni, unique};

const PODS: usize = 100;
const CONCURRENCY: usize = 8;

fn labels(i: usize) -> Vec<(String, String)> {
    // Ten distinct label sets: most pods reuse an identity, ten allocate a new one.
    vec![
        ("app".to_owned(), format!("bench-{}", i % 10)),
        ("tier".to_owned(), "bench".to_owned()),
    ]
}

struct Round {
    name: &'static str,
    create: Vec<Duration>,
    create_total: Duration,
    delete_total: Duration,
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

impl Round {
    fn print(&self) {
        let mut sorted = self.create.clone();
        sorted.sort_unstable();
        println!(
            "{:<28} {:>4} pods  p50 {:>8.2?}  p99 {:>8.2?}  max {:>8.2?}  total {:>8.2?}  \
             ({:.1} pods/s)  delete total {:>8.2?}",
            self.name,
            sorted.len(),
            percentile(&sorted, 0.50),
            percentile(&sorted, 0.99),
            sorted.last().copied().unwrap_or_default(),
            self.create_total,
            sorted.len() as f64 / self.create_total.as_secs_f64(),
            self.delete_total,
        );
    }
}

fn request(i: usize, container: &str, ns: &Netns) -> EndpointChangeRequest {
    EndpointChangeRequest {
        container_id: container.to_owned(),
        interface_name: "eth0".to_owned(),
        netns_path: ns.path().display().to_string(),
        k8s_pod_name: format!("bench-{i}"),
        k8s_namespace: "default".to_owned(),
        labels: labels(i)
            .into_iter()
            .map(|(key, value)| LabelPair { key, value })
            .collect(),
    }
}

/// Creates one endpoint over the API and returns creation-to-ready and its id.
async fn create_ready(
    client: &AgentClient,
    i: usize,
    container: &str,
    ns: &Netns,
) -> (Duration, u16) {
    let start = Instant::now();
    let mut endpoint: api::Endpoint = client
        .send_json(Method::PUT, "/endpoint/0", &request(i, container, ns))
        .await
        .unwrap_or_else(|e| panic!("create endpoint {i}: {e}"));
    while endpoint.status.state != "ready" {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "endpoint {} stuck in {}",
            endpoint.id,
            endpoint.status.state
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
        endpoint = client
            .get(&format!("/endpoint/{}", endpoint.id))
            .await
            .unwrap_or_else(|e| panic!("get endpoint {}: {e}", endpoint.id));
    }
    (start.elapsed(), endpoint.id)
}

async fn delete_all(client: &AgentClient, ids: &[u16]) -> Duration {
    let start = Instant::now();
    for id in ids {
        client
            .request_raw(Method::DELETE, &format!("/endpoint/{id}"), None)
            .await
            .unwrap_or_else(|e| panic!("delete endpoint {id}: {e}"));
    }
    start.elapsed()
}

async fn assert_empty(client: &AgentClient, node: &Node) {
    let endpoints: Vec<api::Endpoint> = client.get("/endpoint").await.expect("endpoint list");
    assert!(endpoints.is_empty(), "{} endpoints left", endpoints.len());
    assert_eq!(node.host_veths(), 0, "veths left");
}

fn cni_round(node: &Node, socket: &std::path::Path, pods: &[Netns]) -> Round {
    let mut create = Vec::with_capacity(pods.len());
    let containers: Vec<String> = pods.iter().map(|_| unique("bc")).collect();
    let all = Instant::now();
    for (i, (ns, container)) in pods.iter().zip(&containers).enumerate() {
        let labels = labels(i);
        let labels: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let start = Instant::now();
        let (ok, out) = cni("ADD", socket, container, &ns.path(), &labels);
        create.push(start.elapsed());
        assert!(ok, "ADD {i}: {out}");
    }
    let create_total = all.elapsed();
    assert_eq!(node.host_veths(), pods.len());
    let start = Instant::now();
    for (ns, container) in pods.iter().zip(&containers) {
        let (ok, out) = cni("DEL", socket, container, &ns.path(), &[]);
        assert!(ok, "DEL {container}: {out}");
    }
    Round {
        name: "cilium-cni, sequential",
        create,
        create_total,
        delete_total: start.elapsed(),
    }
}

async fn api_round(client: &AgentClient, pods: &Arc<Vec<Netns>>, concurrency: usize) -> Round {
    let next = Arc::new(AtomicUsize::new(0));
    let all = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, pods, next) = (client.clone(), pods.clone(), next.clone());
        workers.spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(ns) = pods.get(i) else {
                    return done;
                };
                let container = unique("ba");
                done.push(create_ready(&client, i, &container, ns).await);
            }
        });
    }
    let mut create = Vec::new();
    let mut ids = Vec::new();
    while let Some(done) = workers.join_next().await {
        for (latency, id) in done.expect("worker") {
            create.push(latency);
            ids.push(id);
        }
    }
    let create_total = all.elapsed();
    assert_eq!(create.len(), pods.len());
    let delete_total = delete_all(client, &ids).await;
    Round {
        name: if concurrency == 1 {
            "REST API, sequential"
        } else {
            "REST API, 8 concurrent"
        },
        create,
        create_total,
        delete_total,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter that excludes us means there is nothing to do.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"endpoint_create".contains(a.as_str()))
    {
        return;
    }
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("endpoint_create: needs root (netns, bpffs, BPF programs); skipped");
        return;
    }
    let node = Node::new("10.205.0.0/24");
    let agent = node.start_agent("agent.log");
    let pods: Arc<Vec<Netns>> = Arc::new((0..PODS).map(|_| Netns::add("bp")).collect());
    let client = AgentClient::new(&agent.socket);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    let mut rounds = Vec::new();
    rounds.push(cni_round(&node, &agent.socket, &pods));
    runtime.block_on(assert_empty(&client, &node));
    for concurrency in [1, CONCURRENCY] {
        rounds.push(runtime.block_on(api_round(&client, &pods, concurrency)));
        runtime.block_on(assert_empty(&client, &node));
    }

    println!("endpoint creation to ready, {PODS} pods, real agent and datapath:");
    for round in &rounds {
        round.print();
    }
    let status = agent.json(&["status"]);
    assert_eq!(status["ipam"]["allocated"], 0, "addresses released");
    agent.terminate();
}
