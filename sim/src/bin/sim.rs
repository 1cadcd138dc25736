//! `sim run`: runs a built-in scenario or a scenario file over a simulated world of
//! production actors and prints the report (text, or JSON with `-o json`). Exits 1 when the
//! oracle or an invariant finds a violation; the report then names the seed that replays it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use sim::{BUILTIN_SCENARIOS, Scenario};

#[derive(Debug, Parser)]
#[command(
    name = "sim",
    about = "Simulate Cilium clusters with the production control plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What `sim run --file` reads (see also `sim/scenarios/*.yaml`).
const FILE_FORMAT: &str = "\
SCENARIO FILES (--file):
  A YAML mapping; every field is optional. Durations are humantime strings (30s, 5m, 250ms).
    name: mesh                 # default: the file's stem
    clusters: 3                # 1..255
    nodes: 5                   # per cluster at the start
    pods_per_node: 2
    apps: 4                    # distinct app labels (identities per cluster)
    mesh: true                 # ClusterMesh between every cluster
    lease_ttl: 15m
    kvstore_latency: 1ms       # per request
    quiet: 30s                 # how long nothing may change at a quiescent point
    settle_limit: 1h
    invariant_interval: 5s     # continuous invariant checks (0s: quiescent points only)
    invariant_nodes: 4         # datapaths read per continuous check
    kvstore_faults: { latency_jitter: 5ms, error_rate: 0.01, exempt: [revoke-lease] }
    datapath_faults: { error_rate: 0.05 }
    steps:                     # `kind` names the step
      - { kind: scale-up, nodes: 1 }
      - { kind: pod-churn, rate: 2, duration: 10s }
      - { kind: policy-churn, rate: 1, duration: 10s }
      - { kind: service-churn, rate: 1, duration: 10s, global: true }
      - { kind: identity-storm, pods: 20 }
      - { kind: node-loss, nodes: 1, revoke: true }
      - { kind: kvstore-outage, duration: 30s }
      - { kind: kvstore-restart, duration: 5s }
      - { kind: node-partition, nodes: 1, duration: 60s }
      - { kind: lease-expiry, nodes: 1 }
      - { kind: cluster-disconnect, duration: 60s }
      - { kind: watch-event-loss, nodes: 2, rate: 2, duration: 20s, resync: true }
      - { kind: wait, duration: 1m }
    faults:                    # bugs wired into one node from the start
      - { cluster: 0, node: 1, fault: { kind: drop-upsert-ip, nth: 2 } }
      - { cluster: 0, node: 0, fault: { kind: drop-identities-added, nth: 2 } }
      - { cluster: 1, node: 0, fault: { kind: flush-on-kvstore-loss } }
  Unknown fields and kinds are refused, naming the field and the file.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a scenario and report convergence, work, memory and the oracle's verdict.
    #[command(after_long_help = FILE_FORMAT)]
    Run(RunArgs),
    /// List the built-in scenarios.
    List,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// A built-in scenario (see `sim list`).
    #[arg(long, default_value = "smoke", conflicts_with = "file")]
    scenario: String,
    /// A scenario file (YAML; `sim run --help` describes the format). The size flags below
    /// override the file's values when given.
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Clusters [default: 1].
    #[arg(long)]
    clusters: Option<usize>,
    /// Nodes per cluster at the start [default: 5].
    #[arg(long)]
    nodes: Option<usize>,
    /// Pods per node at the start [default: 3].
    #[arg(long)]
    pods: Option<usize>,
    /// Distinct app labels (identities per cluster) [default: 4].
    #[arg(long)]
    apps: Option<u32>,
    /// Every node runs ClusterMesh with every other cluster.
    #[arg(long)]
    mesh: bool,
    /// Where each cluster keeps its state. `etcd` starts a private etcd per cluster (the
    /// binary needs the `etcd` feature and `etcd` on the PATH or in ETCD_BIN): real time, not
    /// deterministic, no mesh; for small runs with a short --quiet.
    #[arg(long, value_enum, default_value_t = KvstoreKind::Memory)]
    kvstore: KvstoreKind,
    /// How long nothing may change for a point to count as quiescent (a humantime duration:
    /// 30s, 2s, 500ms) [default: the scenario's, 30s].
    #[arg(long, value_parser = humantime::parse_duration)]
    quiet: Option<std::time::Duration>,
    /// Fixes every random choice; the same seed gives the same run and final hash.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum KvstoreKind {
    Memory,
    Etcd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::List => {
            for name in BUILTIN_SCENARIOS {
                println!("{name}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => run(args),
    }
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    // Progress goes to stderr so that `-o json` keeps stdout parseable.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("sim=info,error")),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    let mut scenario = match &args.file {
        Some(path) => {
            let mut scenario = Scenario::from_file(path)?;
            if let Some(clusters) = args.clusters {
                scenario.clusters = clusters;
            }
            if let Some(nodes) = args.nodes {
                scenario.nodes = nodes;
            }
            if let Some(pods) = args.pods {
                scenario.pods_per_node = pods;
            }
            scenario
        }
        None => Scenario::builtin(
            &args.scenario,
            args.clusters.unwrap_or(1),
            args.nodes.unwrap_or(5),
            args.pods.unwrap_or(3),
        )
        .with_context(|| {
            format!(
                "unknown scenario {:?}; built-in scenarios: {}",
                args.scenario,
                BUILTIN_SCENARIOS.join(", ")
            )
        })?
        .apps(4),
    };
    if let Some(apps) = args.apps {
        scenario.apps = apps;
    }
    if args.mesh {
        scenario.mesh = true;
    }
    if let Some(quiet) = args.quiet {
        scenario.quiet = quiet;
    }
    let report = match args.kvstore {
        KvstoreKind::Memory => scenario.run(args.seed),
        KvstoreKind::Etcd => run_on_etcd(&scenario, args.seed)?,
    }
    .with_context(|| format!("scenario {} with seed {}", scenario.name, args.seed))?;
    match args.output {
        Output::Text => print!("{report}"),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).context("encoding the report")?
        ),
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(feature = "etcd")]
fn run_on_etcd(
    scenario: &Scenario,
    seed: u64,
) -> anyhow::Result<Result<sim::Report, sim::SimError>> {
    Ok(scenario.run_on(seed, &sim::etcd::PrivateEtcd))
}

#[cfg(not(feature = "etcd"))]
fn run_on_etcd(_: &Scenario, _: u64) -> anyhow::Result<Result<sim::Report, sim::SimError>> {
    anyhow::bail!(
        "this sim is built without etcd support; build it with `cargo build -p sim --features etcd`"
    )
}
