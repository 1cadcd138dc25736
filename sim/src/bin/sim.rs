//! `sim run`: runs a built-in scenario over a simulated world of production actors and prints
//! the report (text, or JSON with `-o json`). Exits 1 when the oracle finds a violation; the
//! report then names the seed that replays it.

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

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a scenario and report convergence, work, memory and the oracle's verdict.
    Run(RunArgs),
    /// List the built-in scenarios.
    List,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// A built-in scenario (see `sim list`).
    #[arg(long, default_value = "smoke")]
    scenario: String,
    #[arg(long, default_value_t = 1)]
    clusters: usize,
    /// Nodes per cluster at the start.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Pods per node at the start.
    #[arg(long, default_value_t = 3)]
    pods: usize,
    /// Distinct app labels (identities per cluster).
    #[arg(long, default_value_t = 4)]
    apps: u32,
    /// Every node runs ClusterMesh with every other cluster.
    #[arg(long)]
    mesh: bool,
    /// Fixes every random choice; the same seed gives the same run and final hash.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Text)]
    output: Output,
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
    let scenario = Scenario::builtin(&args.scenario, args.clusters, args.nodes, args.pods)
        .with_context(|| {
            format!(
                "unknown scenario {:?}; built-in scenarios: {}",
                args.scenario,
                BUILTIN_SCENARIOS.join(", ")
            )
        })?
        .apps(args.apps);
    let scenario = if args.mesh {
        scenario.mesh(true)
    } else {
        scenario
    };
    let report = scenario
        .run(args.seed)
        .with_context(|| format!("scenario {} with seed {}", args.scenario, args.seed))?;
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
