//! `cilium`: the cluster CLI. Without Kubernetes it writes the cluster's desired state to the
//! kvstore, where every agent in kvstore mode watches it (DESIGN 4.5 ext): `policy`, `service`
//! and `clustermesh status`; `lab` builds a local lab of namespaces to try it all on.
//! `connectivity test` runs upstream's connectivity scenarios against a lab.

use std::io::Read as _;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use actors::clusterstate::AFFINITY_LABEL;
use actors::clusterstate::PolicyRef;
use anyhow::{Context as _, anyhow, bail};
use cilium_cmd::cluster_cli::mesh;
use cilium_cmd::cluster_cli::policy::{
    PolicyEntry, apply_policies, delete_all_policies, delete_policy, list_policies, parse_policies,
};
use cilium_cmd::cluster_cli::service::{
    PROTOCOLS, apply_services, delete_service, list_services, parse_services, service_from_flags,
};
use cilium_cmd::lab;
use clap::{Args, Parser, Subcommand, ValueEnum};
use comfy_table::Table;
use comfy_table::presets::NOTHING;
use kvstore::Backend;
use kvstore::config::EtcdConfig;
use kvstore::etcd::EtcdBackend;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, Parser)]
#[command(
    name = "cilium",
    version,
    about = "Manage a Cilium cluster: its policies and services in the kvstore",
    long_about = "Manage a Cilium cluster without Kubernetes. Policies and services are written \
                  to the kvstore (etcd), where every agent running with --kvstore etcd picks \
                  them up."
)]
struct Cli {
    /// How to reach etcd, as the agent's flag: etcd.config=FILE (YAML with `endpoints`) or
    /// etcd.address=URL. Repeatable.
    #[arg(long = "kvstore-opt", global = true, env = "CILIUM_KVSTORE_OPT")]
    kvstore_opt: Vec<String>,
    /// The cluster whose services are managed.
    #[arg(
        long = "cluster-name",
        global = true,
        env = "CILIUM_CLUSTER_NAME",
        default_value = "default"
    )]
    cluster_name: String,
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value = "text"
    )]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Network policies enforced by every agent of the cluster.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Load-balanced services of the cluster.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// The cluster's view of the other clusters of its mesh.
    Clustermesh {
        #[command(subcommand)]
        command: ClustermeshCommand,
    },
    /// A local lab: clusters of nodes in network namespaces, with etcd, the operator,
    /// ClusterMesh, Hubble and an external echo server; pods through cilium-cni.
    Lab {
        /// The lab's directory: its state, logs and node directories.
        #[arg(long, global = true, env = "CILIUM_LAB_DIR", default_value = lab::DEFAULT_DIR)]
        dir: PathBuf,
        #[command(subcommand)]
        command: LabCommand,
    },
    /// Check connectivity and policy enforcement on a lab (or agents) with upstream's
    /// scenarios.
    Connectivity {
        /// The lab's directory, as `cilium lab --dir`.
        #[arg(long, global = true, env = "CILIUM_LAB_DIR", default_value = lab::DEFAULT_DIR)]
        dir: PathBuf,
        #[command(subcommand)]
        command: ConnectivityCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConnectivityCommand {
    /// Deploy a test workload in namespace cilium-test (cluster 1, and cluster 2 when the lab
    /// has one), run each scenario (its policy applied and realized, then its probes), check
    /// the agents' drop counters, clean up; exits 1 if any scenario fails. Scenarios the
    /// target cannot run are reported as skipped.
    Test {
        /// Run only the scenarios whose name matches this regular expression.
        #[arg(long)]
        test: Option<String>,
        /// Instead of a lab, the API socket of an agent to check; repeat for every agent.
        /// Only the read-only checks run (agents healthy, no-unexpected-packet-drops since
        /// the agents started); scenarios that deploy pods are skipped.
        #[arg(long = "agent-socket")]
        agent_sockets: Vec<PathBuf>,
        /// Drop reasons no-unexpected-packet-drops accepts, by upstream's names (comma-separated
        /// or repeated), as upstream's flag: `+REASON` adds to the defaults (policy denials
        /// and the like), `-REASON` removes from them, plain names replace them.
        #[arg(
            long = "expected-drop-reasons",
            value_name = "REASON",
            allow_hyphen_values = true
        )]
        expected_drop_reasons: Option<Vec<String>>,
    },
    /// Serve a test pod: echo one line back followed by NAME, until killed.
    #[command(hide = true)]
    EchoServer {
        #[arg(long)]
        listen: SocketAddr,
        /// What the server answers as (the pod's name).
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LabKvstore {
    Etcd,
    Memory,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LabRouting {
    Native,
    Tunnel,
}

#[derive(Debug, Subcommand)]
enum LabCommand {
    /// Create the lab and wait until every agent has its pod CIDR.
    Up {
        /// How many clusters (1-9); with more than one, every agent joins the others' etcd.
        #[arg(long, default_value_t = 1)]
        clusters: u8,
        /// Nodes per cluster (1-9); default 2, or 1 with --kvstore memory.
        #[arg(long)]
        nodes: Option<u8>,
        /// etcd: one etcd, operator and clustermesh-apiserver per cluster; memory: one node, no
        /// etcd.
        #[arg(long, value_enum, default_value = "etcd")]
        kvstore: LabKvstore,
        /// How pods on different nodes reach each other.
        #[arg(long = "routing-mode", value_enum, default_value = "native")]
        routing: LabRouting,
        /// The prefix of the lab's namespaces; give each lab on a machine its own.
        #[arg(long, default_value = lab::DEFAULT_NAME)]
        name: String,
    },
    /// Whether every component runs and every agent is healthy; exits 1 when not.
    Status,
    /// Stop every process and remove every namespace and mount of the lab (idempotent).
    Down,
    /// The Star Wars demo on cluster 1: deathstar service with two backends, tiefighter,
    /// xwing and upstream's L3/L4 policy rule1; checks that only the empire lands.
    Demo,
    /// Pods made through cilium-cni, as a container runtime makes them.
    Pod {
        #[command(subcommand)]
        command: PodCommand,
    },
    /// Serve TCP echo (and a short HTTP answer) on ADDR until killed.
    #[command(hide = true)]
    EchoServer {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Connect to an echo server, send a probe and check the echo; exits 1 on failure.
    EchoClient {
        #[arg(long)]
        connect: SocketAddr,
        /// How long to wait for the connection and for the echo.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LabPodRuntime {
    Netns,
    Podman,
}

#[derive(Debug, Subcommand)]
enum PodCommand {
    /// Create a pod with an endpoint from the node's agent: a network namespace, or with
    /// `--runtime podman` a real container.
    Create {
        name: String,
        /// The node (`c1-n1`, ...).
        #[arg(long)]
        node: String,
        /// The pod's Kubernetes namespace (podman pods are always in `default`).
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// A pod label KEY=VALUE; repeatable.
        #[arg(short = 'l', long = "label")]
        labels: Vec<String>,
        /// netns: a network namespace, and the lab calls cilium-cni. podman: a container run
        /// by the lab's own podman (busybox rootfs, runc; storage under DIR/podman) whose CNI
        /// network is cilium-cni with the node's agent; `pod exec` runs inside the container.
        #[arg(long, value_enum, default_value = "netns")]
        runtime: LabPodRuntime,
        /// With --runtime podman: the container's command after `--` (default: a busybox echo
        /// server on port 80, `nc -ll -p 80 -e /bin/cat`).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Delete a pod (CNI DEL, then its namespace).
    Delete {
        name: String,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// List the pods: namespace, name, node, IP and security identity.
    List,
    /// Run a command inside a pod: `pod exec NAME -- CMD ARGS...` (in its network namespace;
    /// a podman pod: inside its container).
    Exec {
        name: String,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ClustermeshCommand {
    /// How every agent sees every remote cluster: connected, ready, synced, and counts.
    Status {
        /// An agent's API socket; repeat for every agent of the cluster.
        #[arg(long = "agent-socket", default_value = cilium_cmd::client::DEFAULT_SOCKET)]
        agent_sockets: Vec<PathBuf>,
        /// Wait until every agent sees every remote cluster ready and synced.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits (`5m`, `30s`).
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        wait_duration: std::time::Duration,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate every document of FILE, then write each (nothing is written if any is invalid).
    Apply {
        /// CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy or NetworkPolicy documents,
        /// YAML or JSON, several separated by `---`; `-` reads stdin.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Delete a policy by name, or every policy with --all.
    Delete {
        /// The policy's name.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        /// The policy's namespace.
        #[arg(
            short = 'n',
            long,
            default_value = "default",
            conflicts_with = "clusterwide"
        )]
        namespace: String,
        /// The policy is a CiliumClusterwideNetworkPolicy (it has no namespace).
        #[arg(long)]
        clusterwide: bool,
        /// Delete every policy of the cluster.
        #[arg(long)]
        all: bool,
    },
    /// List the stored policies (and why agents skip any of them).
    List,
}

#[derive(Debug, Subcommand)]
enum ServiceCommand {
    /// Write services from FILE (ClusterService records) or from flags.
    Apply(ServiceApply),
    /// Delete a service.
    Delete {
        /// The service's name.
        name: String,
        /// The service's namespace.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// List the cluster's services.
    List,
}

#[derive(Debug, Args)]
struct ServiceApply {
    /// ClusterService records (YAML or JSON, several separated by `---`); `-` reads stdin.
    #[arg(short = 'f', long = "filename", conflicts_with_all = ["name", "frontend", "backends"])]
    file: Option<PathBuf>,
    /// The service's name (with --frontend).
    #[arg(long, required_unless_present = "file", requires = "frontend")]
    name: Option<String>,
    /// The service's namespace.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// The frontend, IP:PORT.
    #[arg(long, requires = "name")]
    frontend: Option<SocketAddrV4>,
    /// The backends, IP:PORT,IP:PORT,...
    #[arg(long, value_delimiter = ',')]
    backends: Vec<SocketAddrV4>,
    /// tcp or udp.
    #[arg(long, default_value = "tcp")]
    protocol: String,
    /// The name of the port (frontend and backends share it).
    #[arg(long, default_value = "http")]
    port_name: String,
    /// This cluster's id (1-255 in a mesh), written into records that carry none: other
    /// clusters refuse a record whose id is not the one of its cluster.
    #[arg(long, env = "CILIUM_CLUSTER_ID", default_value_t = 0)]
    cluster_id: u8,
    /// A global service (upstream `service.cilium.io/global`): it also gets the backends of
    /// every cluster of the mesh whose service of the same namespace and name is shared.
    #[arg(long, requires = "name")]
    global: bool,
    /// Whether other clusters may use this service's backends (upstream
    /// `service.cilium.io/shared`); defaults to true for a global service, as upstream.
    #[arg(long, requires = "name")]
    shared: Option<bool>,
    /// Which backends a global service prefers (upstream `service.cilium.io/affinity`): `local`
    /// while any local backend exists, `remote`, or `none`.
    #[arg(long, requires = "global", value_parser = ["local", "remote", "none"])]
    affinity: Option<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("Error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let json = cli.output == Output::Json;
    match cli.command {
        Command::Policy { command } => policy(command, &cli.kvstore_opt, json).await,
        Command::Service { command } => {
            service(command, &cli.kvstore_opt, &cli.cluster_name, json).await
        }
        Command::Clustermesh {
            command:
                ClustermeshCommand::Status {
                    agent_sockets,
                    wait,
                    wait_duration,
                },
        } => clustermesh_status(&agent_sockets, wait, wait_duration, json).await,
        Command::Lab { dir, command } => lab_command(&dir, command, json),
        Command::Connectivity {
            dir,
            command:
                ConnectivityCommand::Test {
                    test,
                    agent_sockets,
                    expected_drop_reasons,
                },
        } => {
            let expected_drops = match expected_drop_reasons {
                Some(entries) => lab::connectivity::ExpectedDropReasons::parse(&entries)?,
                None => lab::connectivity::ExpectedDropReasons::default(),
            };
            let target = if agent_sockets.is_empty() {
                lab::connectivity::Target::Lab(dir)
            } else {
                lab::connectivity::Target::Agents {
                    sockets: agent_sockets,
                    bin_dir: bin_dir()?,
                }
            };
            connectivity_test(&target, test.as_deref(), &expected_drops, json)
        }
        Command::Connectivity {
            command: ConnectivityCommand::EchoServer { listen, name },
            ..
        } => {
            println!("test pod {name} serving on {listen}");
            lab::connectivity::serve_echo(listen, &name)?;
            Ok(())
        }
    }
}

fn connectivity_test(
    target: &lab::connectivity::Target,
    test: Option<&str>,
    expected_drops: &lab::connectivity::ExpectedDropReasons,
    json: bool,
) -> anyhow::Result<()> {
    let filter = test
        .map(regex::Regex::new)
        .transpose()
        .context("--test is not a valid regular expression")?;
    let report = lab::connectivity::run(
        target,
        filter.as_ref(),
        expected_drops,
        &mut |step: &str| eprintln!("{step}"),
        &mut |scenario: &lab::connectivity::ScenarioReport| {
            if !json {
                println!("{}", scenario.line());
            }
        },
    )?;
    if json {
        print_json(&report)?;
    } else {
        println!("{}", report.summary());
    }
    if !report.success() {
        bail!(
            "{} of {} scenarios failed: see their failed probes and flows (`hubble observe` \
             in the lab shows more)",
            report.failed,
            report.scenarios.len()
        );
    }
    Ok(())
}

/// Where the other Cilium binaries are: next to this one.
fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the cilium binary's path")?;
    exe.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))
}

fn lab_command(dir: &Path, command: LabCommand, json: bool) -> anyhow::Result<()> {
    // Progress must never abort a step half-way, not even when stderr is a closed pipe.
    let mut progress = |step: &str| {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "{step}");
    };
    match command {
        LabCommand::Up {
            clusters,
            nodes,
            kvstore,
            routing,
            name,
        } => {
            let kvstore = match kvstore {
                LabKvstore::Etcd => lab::KvstoreKind::Etcd,
                LabKvstore::Memory => lab::KvstoreKind::Memory,
            };
            let options = lab::LabOptions {
                dir: dir.to_owned(),
                name,
                clusters,
                nodes: nodes.unwrap_or(if kvstore == lab::KvstoreKind::Memory {
                    1
                } else {
                    2
                }),
                kvstore,
                routing: match routing {
                    LabRouting::Native => lab::RoutingMode::Native,
                    LabRouting::Tunnel => lab::RoutingMode::Tunnel,
                },
                bin_dir: bin_dir()?,
            };
            let started = std::time::Instant::now();
            match lab::up(&options, &mut progress) {
                Ok(state) => {
                    eprintln!("lab {} is up in {:.1?}\n", state.name, started.elapsed());
                    let status = lab::status(&state.dir)?;
                    print!("{}", lab::status::render(&status));
                    println!(
                        "\nNext: cilium lab pod create NAME --node {} --label app=demo --dir {}",
                        state.nodes().next().map_or("c1-n1", |n| n.name.as_str()),
                        state.dir.display()
                    );
                    Ok(())
                }
                // Refused before anything was created: nothing to inspect or take down.
                Err(
                    err @ (lab::LabError::AlreadyUp { .. } | lab::LabError::InvalidOption { .. }),
                ) => Err(err.into()),
                Err(err) => Err(anyhow!(err).context(format!(
                    "lab up failed; what was created stays recorded in {}: inspect it, then \
                     remove it with `cilium lab down --dir {}`",
                    dir.display(),
                    dir.display()
                ))),
            }
        }
        LabCommand::Status => {
            let status = lab::status(dir)?;
            if json {
                print_json(&status)?;
            } else {
                print!("{}", lab::status::render(&status));
            }
            if !status.healthy {
                bail!("the lab is not healthy: see the components and logs above");
            }
            Ok(())
        }
        LabCommand::Down => {
            lab::down(dir, &mut progress)?;
            Ok(())
        }
        LabCommand::Demo => {
            let report = lab::demo(dir, &mut progress)?;
            if json {
                return print_json(&report);
            }
            if report.already_there {
                println!("The demo was already there; it still works.");
            } else {
                println!("The demo is up.");
            }
            println!(
                "tiefighter -> {} {}: {}\nxwing -> {} {}: {}\n\nTry next:",
                report.service,
                report.frontend,
                report.tiefighter,
                report.service,
                report.frontend,
                report.xwing
            );
            for step in &report.next_steps {
                println!("  {step}");
            }
            Ok(())
        }
        LabCommand::Pod { command } => lab_pod(dir, command, json),
        LabCommand::EchoServer { listen } => {
            println!("echo server listening on {listen}");
            lab::echo::serve(listen)?;
            Ok(())
        }
        LabCommand::EchoClient { connect, timeout } => {
            let took = lab::echo::probe(connect, timeout)?;
            println!("echo from {connect} in {took:.1?}");
            Ok(())
        }
    }
}

fn lab_pod(dir: &Path, command: PodCommand, json: bool) -> anyhow::Result<()> {
    match command {
        PodCommand::Create {
            name,
            node,
            namespace,
            labels,
            runtime,
            command,
        } => {
            let spec = lab::PodSpec {
                name,
                namespace,
                node,
                labels: lab::pod::parse_labels(&labels)?,
            };
            let pod = match runtime {
                LabPodRuntime::Netns if !command.is_empty() => {
                    bail!("a command after `--` needs --runtime podman")
                }
                LabPodRuntime::Netns => lab::create_pod(dir, &spec)?,
                LabPodRuntime::Podman => lab::create_podman_pod(dir, &spec, &command)?,
            };
            if json {
                print_json(&pod)?;
            } else {
                println!(
                    "pod {}/{} on {} ({}): {}, identity {}",
                    pod.namespace,
                    pod.name,
                    pod.node,
                    pod.runtime.name(),
                    pod.ip.map_or("-".to_owned(), |ip| ip.to_string()),
                    pod.identity.map_or("-".to_owned(), |id| id.to_string())
                );
            }
            Ok(())
        }
        PodCommand::Delete { name, namespace } => {
            lab::delete_pod(dir, &name, namespace.as_deref())?;
            Ok(())
        }
        PodCommand::List => {
            let pods = lab::list_pods(dir)?;
            if json {
                return print_json(&pods);
            }
            let mut table = Table::new();
            table.load_style(NOTHING);
            table.set_header([
                "NAMESPACE",
                "NAME",
                "NODE",
                "RUNTIME",
                "IP",
                "IDENTITY",
                "LABELS",
            ]);
            for pod in pods {
                let labels: Vec<String> =
                    pod.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                table.add_row([
                    pod.namespace,
                    pod.name,
                    pod.node,
                    pod.runtime.name().to_owned(),
                    pod.ip.map_or("-".to_owned(), |ip| ip.to_string()),
                    pod.identity.map_or("-".to_owned(), |id| id.to_string()),
                    labels.join(","),
                ]);
            }
            println!("{table}");
            Ok(())
        }
        PodCommand::Exec {
            name,
            namespace,
            command,
        } => {
            use std::os::unix::process::CommandExt as _;
            let mut exec = lab::pod_exec_command(dir, &name, namespace.as_deref(), &command)?;
            // Replaces this process, so the command's PID, exit status and signals are the
            // caller's to handle.
            let err = exec.exec();
            Err(anyhow!(err).context(format!("cannot run {command:?} in pod {name}")))
        }
    }
}

/// Asks every agent for its status; with `wait`, again until the mesh is healthy or the time
/// is up. Fails (exit 1) when the mesh is not healthy, so scripts can wait on it.
async fn clustermesh_status(
    sockets: &[PathBuf],
    wait: bool,
    wait_duration: std::time::Duration,
    json: bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + wait_duration;
    let summary = loop {
        let mut reports = Vec::new();
        for socket in sockets {
            let status = cilium_cmd::client::AgentClient::new(socket.clone())
                .healthz()
                .await
                .map_err(|e| format!("{e:#}"));
            reports.push(mesh::AgentReport {
                socket: socket.clone(),
                status,
            });
        }
        let summary = mesh::summarize(&reports);
        if !wait || summary.healthy() || tokio::time::Instant::now() >= deadline {
            break summary;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    };
    if json {
        print_json(&summary)?;
    } else {
        print!("{}", mesh::render(&summary));
    }
    if !summary.healthy() {
        bail!(
            "the mesh is not healthy: check the agents' --clustermesh-config files, the remote \
             clusters' etcd and their clustermesh-apiserver (cluster config, heartbeat)"
        );
    }
    Ok(())
}

async fn connect(opts: &[String]) -> anyhow::Result<Arc<dyn Backend>> {
    if opts.is_empty() {
        bail!(
            "no kvstore given: pass --kvstore-opt etcd.config=FILE (or etcd.address=URL), \
             or set CILIUM_KVSTORE_OPT"
        );
    }
    let config = EtcdConfig::from_kvstore_opt_flags(opts).context("invalid --kvstore-opt")?;
    let backend = EtcdBackend::connect(&config)
        .await
        .with_context(|| format!("cannot connect to etcd at {:?}", config.endpoints))?;
    Ok(Arc::new(backend))
}

fn read_input(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read stdin")?;
        return Ok(text);
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn namespace_of(entry: &PolicyEntry) -> &str {
    entry.namespace.as_deref().unwrap_or("<clusterwide>")
}

async fn policy(command: PolicyCommand, opts: &[String], json: bool) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Apply { file } => {
            // Validate before connecting: a bad file fails the same with or without etcd.
            let documents = parse_policies(&read_input(&file)?)
                .with_context(|| format!("{} was not applied", file.display()))?;
            let backend = connect(opts).await?;
            let entries = apply_policies(backend.as_ref(), &documents).await?;
            if json {
                return print_json(&entries);
            }
            for entry in &entries {
                let result = entry.result.map(|r| r.to_string()).unwrap_or_default();
                println!(
                    "{} {}/{} {result}",
                    entry.kind,
                    namespace_of(entry),
                    entry.name
                );
            }
            Ok(())
        }
        PolicyCommand::Delete {
            name,
            namespace,
            clusterwide,
            all,
        } => {
            let backend = connect(opts).await?;
            if all {
                let deleted = delete_all_policies(backend.as_ref()).await?;
                if json {
                    return print_json(&serde_json::json!({ "deleted": deleted }));
                }
                println!("{deleted} policies deleted");
                return Ok(());
            }
            let name = name.ok_or_else(|| anyhow!("pass a policy NAME or --all"))?;
            let policy = PolicyRef {
                namespace: (!clusterwide).then_some(namespace),
                name,
            };
            if !delete_policy(backend.as_ref(), &policy).await? {
                bail!(
                    "policy {} not found (cluster-wide policies need --clusterwide; see `cilium policy list`)",
                    policy.key_name()
                );
            }
            if json {
                return print_json(&serde_json::json!({ "deleted": policy.key() }));
            }
            println!("policy {} deleted", policy.key_name());
            Ok(())
        }
        PolicyCommand::List => {
            let backend = connect(opts).await?;
            let entries = list_policies(backend.as_ref()).await?;
            if json {
                return print_json(&entries);
            }
            let mut table = Table::new();
            table.load_style(NOTHING);
            table.set_header(["KIND", "NAMESPACE", "NAME", "STATUS"]);
            for entry in &entries {
                table.add_row([
                    entry.kind.as_str(),
                    namespace_of(entry),
                    &entry.name,
                    entry.error.as_deref().unwrap_or("ok"),
                ]);
            }
            println!("{table}");
            Ok(())
        }
    }
}

async fn service(
    command: ServiceCommand,
    opts: &[String],
    cluster: &str,
    json: bool,
) -> anyhow::Result<()> {
    match command {
        ServiceCommand::Apply(apply) => {
            let mut services = match &apply.file {
                Some(file) => parse_services(&read_input(file)?, cluster)
                    .with_context(|| format!("{} was not applied", file.display()))?,
                None => {
                    let (Some(name), Some(frontend)) = (&apply.name, apply.frontend) else {
                        bail!("pass -f FILE, or --name and --frontend IP:PORT");
                    };
                    if !PROTOCOLS
                        .iter()
                        .any(|p| p.eq_ignore_ascii_case(&apply.protocol))
                    {
                        bail!("--protocol {:?}: use tcp or udp", apply.protocol);
                    }
                    let mut service = service_from_flags(
                        cluster,
                        &apply.namespace,
                        name,
                        frontend,
                        &apply.backends,
                        &apply.protocol,
                        &apply.port_name,
                    )?;
                    service.include_external = apply.global;
                    service.shared = apply.shared.unwrap_or(apply.global);
                    if let Some(affinity) = &apply.affinity {
                        service
                            .labels
                            .insert(AFFINITY_LABEL.to_owned(), affinity.clone());
                    }
                    vec![service]
                }
            };
            for service in &mut services {
                if service.cluster_id == 0 {
                    service.cluster_id = u32::from(apply.cluster_id);
                }
            }
            let backend = connect(opts).await?;
            let entries = apply_services(backend.as_ref(), &services).await?;
            if json {
                return print_json(&entries);
            }
            for entry in &entries {
                let result = entry.result.map(|r| r.to_string()).unwrap_or_default();
                println!("service {} {result}", entry.key);
            }
            Ok(())
        }
        ServiceCommand::Delete { name, namespace } => {
            let backend = connect(opts).await?;
            if !delete_service(backend.as_ref(), cluster, &namespace, &name).await? {
                bail!(
                    "service {namespace}/{name} not found in cluster {cluster:?} (see `cilium service list`)"
                );
            }
            if json {
                return print_json(
                    &serde_json::json!({ "deleted": format!("{namespace}/{name}") }),
                );
            }
            println!("service {namespace}/{name} deleted");
            Ok(())
        }
        ServiceCommand::List => {
            let backend = connect(opts).await?;
            let entries = list_services(backend.as_ref(), cluster).await?;
            if json {
                return print_json(&entries);
            }
            let mut table = Table::new();
            table.load_style(NOTHING);
            table.set_header(["NAMESPACE", "NAME", "FRONTENDS", "BACKENDS", "STATUS"]);
            for entry in &entries {
                match &entry.service {
                    Some(service) => table.add_row([
                        service.namespace.clone(),
                        service.name.clone(),
                        addresses(&service.frontends),
                        addresses(&service.backends),
                        "ok".to_owned(),
                    ]),
                    None => table.add_row([
                        String::new(),
                        entry.key.clone(),
                        String::new(),
                        String::new(),
                        entry.error.clone().unwrap_or_default(),
                    ]),
                };
            }
            println!("{table}");
            Ok(())
        }
    }
}

/// `ip:port/PROTO` per address and port, comma-separated.
fn addresses(map: &std::collections::BTreeMap<String, kvstore::keys::PortConfiguration>) -> String {
    let mut out = Vec::new();
    for (ip, ports) in map {
        for l4 in ports.values().flatten() {
            out.push(format!("{ip}:{}/{}", l4.port, l4.protocol));
        }
    }
    out.join(",")
}
