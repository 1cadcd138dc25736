//! `cilium-dbg`: the node CLI (DESIGN 4.4). Talks to the agent's REST API over its unix
//! socket (`-H unix:///path` or `CILIUM_SOCK`); `monitor` reads the pinned event ring buffer
//! directly and `kvstore get` asks etcd directly. `-o json` prints the API's JSON on every
//! command; otherwise tables.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use cilium_cmd::api::{self, BackendAddress, L4Address, PolicyDeleteRequest, ServiceSpec};
use cilium_cmd::client::{AgentClient, DEFAULT_SOCKET, socket_from_host};
use cilium_cmd::server::METRICS_MAP;
use clap::{Parser, Subcommand, ValueEnum};
use comfy_table::presets::NOTHING;
use comfy_table::{Cell, Table};
use datapath::api::{EndpointId, MapName};
use datapath::monitor::{EventReader, MonitorEventType, MonitorFilter, format_monitor_line};
use kvstore::Backend;
use kvstore::config::EtcdConfig;
use kvstore::etcd::EtcdBackend;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Json,
}

#[derive(Debug, Parser)]
#[command(
    name = "cilium-dbg",
    version,
    about = "CLI for the Cilium agent of this node"
)]
struct Cli {
    /// The agent's API socket (unix:///path); defaults to $CILIUM_SOCK or the agent's default.
    #[arg(short = 'H', long = "host", global = true, env = "CILIUM_SOCK")]
    host: Option<String>,
    /// Print JSON instead of tables.
    #[arg(short = 'o', long = "output", global = true, value_enum)]
    output: Option<Output>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The agent's health.
    Status {
        #[arg(long)]
        verbose: bool,
    },
    /// Endpoints on this node.
    Endpoint {
        #[command(subcommand)]
        command: EndpointCommand,
    },
    /// Security identities.
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
    /// The policy repository.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Load-balanced services.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// What the BPF maps hold.
    Bpf {
        #[command(subcommand)]
        command: BpfCommand,
    },
    /// Datapath events, read from the pinned ring buffer.
    Monitor {
        /// drop, trace or policy-verdict; repeatable.
        #[arg(long = "type")]
        types: Vec<MonitorEventType>,
        #[arg(long, default_value = "/sys/fs/bpf")]
        bpf_root: PathBuf,
    },
    /// Cluster nodes.
    Node {
        #[command(subcommand)]
        command: ListOnly,
    },
    /// The kvstore, read directly with the agent's --kvstore-opt.
    Kvstore {
        #[command(subcommand)]
        command: KvstoreCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ListOnly {
    List,
}

#[derive(Debug, Subcommand)]
enum EndpointCommand {
    List,
    Get { id: String },
}

#[derive(Debug, Subcommand)]
enum IdentityCommand {
    List,
    Get { id: u32 },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Imports policy documents (YAML or JSON, multi-document) from FILE (`-` for stdin).
    Import {
        file: PathBuf,
    },
    Get,
    /// Deletes one policy by name, or every rule with --all.
    Delete {
        name: Option<String>,
        /// Only the policy of that name in this namespace.
        #[arg(long)]
        namespace: Option<String>,
        #[arg(long)]
        all: bool,
    },
    Selectors,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Protocol {
    Tcp,
    Udp,
}

#[derive(Debug, Subcommand)]
enum ServiceCommand {
    List,
    Update {
        #[arg(long)]
        id: u16,
        #[arg(long)]
        frontend: std::net::SocketAddrV4,
        #[arg(long, value_delimiter = ',')]
        backends: Vec<std::net::SocketAddrV4>,
        #[arg(long, value_enum, default_value = "tcp")]
        protocol: Protocol,
    },
    Delete {
        id: u16,
    },
}

#[derive(Debug, Subcommand)]
enum BpfCommand {
    Policy {
        #[command(subcommand)]
        command: BpfPolicyCommand,
    },
    Ipcache {
        #[command(subcommand)]
        command: ListOnly,
    },
    Lb {
        #[command(subcommand)]
        command: ListOnly,
    },
    Endpoint {
        #[command(subcommand)]
        command: ListOnly,
    },
    Ct {
        #[command(subcommand)]
        command: CtCommand,
    },
    Metrics {
        #[command(subcommand)]
        command: ListOnly,
    },
}

#[derive(Debug, Subcommand)]
enum BpfPolicyCommand {
    Get { endpoint: u16 },
}

#[derive(Debug, Subcommand)]
enum CtCommand {
    List {
        /// Only `global` exists.
        scope: String,
    },
}

#[derive(Debug, Subcommand)]
enum KvstoreCommand {
    Get {
        key: String,
        #[arg(long)]
        recursive: bool,
        /// The agent's `--kvstore-opt` (etcd.config=FILE); repeatable.
        #[arg(long = "kvstore-opt")]
        kvstore_opt: Vec<String>,
    },
}

struct Ctx {
    client: AgentClient,
    json: bool,
}

impl Ctx {
    fn print_json<T: Serialize>(&self, value: &T) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }
}

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_style(NOTHING);
    table.set_header(header.iter().map(|h| Cell::new(*h)));
    table
}

async fn status(ctx: &Ctx, verbose: bool) -> anyhow::Result<()> {
    let status = ctx.client.healthz().await?;
    if ctx.json {
        return ctx.print_json(&status);
    }
    let line = |name: &str, s: &api::SubsystemStatus| {
        if s.msg.is_empty() {
            println!("{name:<14}{}", s.state);
        } else {
            println!("{name:<14}{}   {}", s.state, s.msg);
        }
    };
    line("KVStore:", &status.kvstore);
    if let Some(nodes) = &status.nodes {
        line("Nodes:", nodes);
    }
    line("Cilium:", &status.cilium);
    line("Datapath:", &status.datapath);
    line("Hubble:", &status.hubble);
    println!(
        "{:<14}{} (cluster {}, id {})",
        "Node:", status.node_name, status.cluster.name, status.cluster.id
    );
    match &status.ipam {
        Some(ipam) => println!(
            "{:<14}IPv4: {}/{} allocated from {}",
            "IPAM:", ipam.allocated, ipam.capacity, ipam.alloc_range
        ),
        None => println!("{:<14}Disabled", "IPAM:"),
    }
    println!(
        "{:<14}revision {}, {} rules, enforcement {}",
        "Policy:", status.policy.revision, status.policy.rule_count, status.policy.enforcement
    );
    if verbose {
        println!(
            "{:<14}realized revision {}",
            "", status.policy.realized_revision
        );
        println!("{:<14}{}", "Identities:", status.identity_count);
        println!("{:<14}{}", "Services:", status.service_count);
    }
    if let Some(mesh) = &status.cluster_mesh {
        print_cluster_mesh(mesh, verbose);
    }
    Ok(())
}

/// The ClusterMesh lines of `status`, shaped like upstream's.
fn print_cluster_mesh(mesh: &api::ClusterMeshStatus, verbose: bool) {
    let ready = mesh.clusters.iter().filter(|c| c.ready).count();
    println!(
        "{:<14}{ready}/{} remote clusters ready",
        "ClusterMesh:",
        mesh.clusters.len()
    );
    if !verbose {
        return;
    }
    for c in &mesh.clusters {
        println!(
            "   {}: {}, {} nodes, {} endpoints, {} identities, {} services, {} failures (last: {})",
            c.name,
            if c.ready { "ready" } else { "not-ready" },
            c.num_nodes,
            c.num_endpoints,
            c.num_identities,
            c.num_shared_services,
            c.num_failures,
            c.last_failure.as_deref().unwrap_or("never"),
        );
        println!("   └  {}", c.status);
        if let Some(message) = &c.last_failure_message {
            println!("   └  last failure: {message}");
        }
        if let Some(config) = &c.config {
            println!(
                "   └  remote configuration: expected={}, retrieved={}, cluster-id={}, \
                 kvstoremesh={}, sync-canaries={}",
                config.required,
                config.retrieved,
                config.cluster_id,
                config.kvstoremesh,
                config.sync_canaries
            );
        }
        println!(
            "   └  synchronization status: nodes={}, endpoints={}, identities={}, services={}",
            c.synced.nodes, c.synced.endpoints, c.synced.identities, c.synced.services
        );
    }
}

fn endpoint_row(table: &mut Table, ep: &api::Endpoint) {
    let ipv4 = ep
        .status
        .networking
        .addressing
        .first()
        .map(|a| a.ipv4.to_string())
        .unwrap_or_default();
    table.add_row(vec![
        ep.id.to_string(),
        ep.status.identity.id.to_string(),
        ep.status.identity.labels.join("\n"),
        ipv4,
        ep.status.state.clone(),
    ]);
}

async fn endpoint(ctx: &Ctx, command: EndpointCommand) -> anyhow::Result<()> {
    let endpoints: Vec<api::Endpoint> = match command {
        EndpointCommand::List => ctx.client.get("/endpoint").await?,
        EndpointCommand::Get { id } => {
            let ep: api::Endpoint = ctx.client.get(&format!("/endpoint/{id}")).await?;
            if ctx.json {
                return ctx.print_json(&ep);
            }
            vec![ep]
        }
    };
    if ctx.json {
        return ctx.print_json(&endpoints);
    }
    let mut t = table(&["ENDPOINT", "IDENTITY", "LABELS", "IPv4", "STATUS"]);
    for ep in &endpoints {
        endpoint_row(&mut t, ep);
    }
    println!("{t}");
    Ok(())
}

async fn identity(ctx: &Ctx, command: IdentityCommand) -> anyhow::Result<()> {
    let identities: Vec<api::Identity> = match command {
        IdentityCommand::List => ctx.client.get("/identity").await?,
        IdentityCommand::Get { id } => {
            let identity: api::Identity = ctx.client.get(&format!("/identity/{id}")).await?;
            if ctx.json {
                return ctx.print_json(&identity);
            }
            vec![identity]
        }
    };
    if ctx.json {
        return ctx.print_json(&identities);
    }
    let mut t = table(&["ID", "LABELS"]);
    for identity in &identities {
        t.add_row(vec![identity.id.to_string(), identity.labels.join("\n")]);
    }
    println!("{t}");
    Ok(())
}

async fn policy(ctx: &Ctx, command: PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Import { file } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("cannot read stdin")?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?
            };
            let policy = ctx.client.policy_import(text).await?;
            if ctx.json {
                return ctx.print_json(&policy);
            }
            println!("Revision: {}", policy.revision);
        }
        PolicyCommand::Get => {
            let policy: api::Policy = ctx.client.get("/policy").await?;
            if ctx.json {
                return ctx.print_json(&policy);
            }
            println!("{}\nRevision: {}", policy.policy, policy.revision);
        }
        PolicyCommand::Delete {
            name,
            namespace,
            all,
        } => {
            if name.is_none() && !all {
                bail!("say which policy to delete: a NAME or --all");
            }
            let deleted = ctx
                .client
                .policy_delete(&PolicyDeleteRequest {
                    labels: Vec::new(),
                    // Without --namespace the name matches in every namespace and the
                    // clusterwide policy of that name.
                    namespace,
                    name,
                    all,
                })
                .await?;
            if ctx.json {
                return ctx.print_json(&deleted);
            }
            println!(
                "Deleted {} rules\nRevision: {}",
                deleted.deleted, deleted.revision
            );
        }
        PolicyCommand::Selectors => {
            let selectors: Vec<api::SelectorIdentityMapping> =
                ctx.client.get("/policy/selectors").await?;
            if ctx.json {
                return ctx.print_json(&selectors);
            }
            let mut t = table(&["SELECTOR", "USERS", "IDENTITIES"]);
            for s in &selectors {
                let ids: Vec<String> = s.identities.iter().map(ToString::to_string).collect();
                t.add_row(vec![
                    s.selector.clone(),
                    s.users.to_string(),
                    ids.join("\n"),
                ]);
            }
            println!("{t}");
        }
    }
    Ok(())
}

async fn service(ctx: &Ctx, command: ServiceCommand) -> anyhow::Result<()> {
    match command {
        ServiceCommand::List => {
            let services: Vec<api::Service> = ctx.client.get("/service").await?;
            if ctx.json {
                return ctx.print_json(&services);
            }
            let mut t = table(&["ID", "Frontend", "Service Type", "Backend"]);
            for s in &services {
                let f = &s.spec.frontend_address;
                let backends: Vec<String> = s
                    .spec
                    .backend_addresses
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        format!(
                            "{} => {}:{}/{} ({})",
                            i + 1,
                            b.ip,
                            b.port,
                            f.protocol.as_deref().unwrap_or("TCP"),
                            b.state.as_deref().unwrap_or("active")
                        )
                    })
                    .collect();
                t.add_row(vec![
                    s.spec.id.to_string(),
                    format!(
                        "{}:{}/{}",
                        f.ip,
                        f.port,
                        f.protocol.as_deref().unwrap_or("TCP")
                    ),
                    "ClusterIP".to_owned(),
                    backends.join("\n"),
                ]);
            }
            println!("{t}");
        }
        ServiceCommand::Update {
            id,
            frontend,
            backends,
            protocol,
        } => {
            if id == 0 {
                bail!("--id must be between 1 and 65535");
            }
            let protocol = match protocol {
                Protocol::Tcp => "TCP",
                Protocol::Udp => "UDP",
            };
            let spec = ServiceSpec {
                id,
                frontend_address: L4Address {
                    ip: *frontend.ip(),
                    port: frontend.port(),
                    protocol: Some(protocol.to_owned()),
                },
                backend_addresses: backends
                    .iter()
                    .map(|b| BackendAddress {
                        ip: *b.ip(),
                        port: b.port(),
                        state: None,
                        backend_id: None,
                    })
                    .collect(),
            };
            let updated = ctx.client.service_update(&spec).await?;
            if ctx.json {
                return ctx.print_json(&updated);
            }
            let verb = if updated.created { "Added" } else { "Updated" };
            println!("{verb} service with {} backends", backends.len());
        }
        ServiceCommand::Delete { id } => {
            ctx.client.service_delete(id).await?;
            if ctx.json {
                return ctx.print_json(&serde_json::json!({"deleted": id}));
            }
            println!("Service {id} deleted");
        }
    }
    Ok(())
}

async fn print_maps(ctx: &Ctx, names: &[String]) -> anyhow::Result<()> {
    let mut maps = Vec::new();
    for name in names {
        let map: api::BpfMap = ctx.client.get(&format!("/map/{name}")).await?;
        maps.push(map);
    }
    if ctx.json {
        return if let [one] = maps.as_slice() {
            ctx.print_json(one)
        } else {
            ctx.print_json(&maps)
        };
    }
    let mut t = table(&["KEY", "VALUE"]);
    let mut empty = true;
    for map in &maps {
        for entry in &map.cache {
            empty = false;
            t.add_row(vec![entry.key.clone(), entry.value.clone()]);
        }
    }
    if empty {
        println!("No entries found.");
    } else {
        println!("{t}");
    }
    Ok(())
}

async fn bpf(ctx: &Ctx, command: BpfCommand) -> anyhow::Result<()> {
    let names: Vec<String> = match command {
        BpfCommand::Policy {
            command: BpfPolicyCommand::Get { endpoint },
        } => vec![MapName::Policy(EndpointId::new(endpoint)).to_string()],
        BpfCommand::Ipcache { .. } => vec![MapName::Ipcache.to_string()],
        BpfCommand::Lb { .. } => vec![
            MapName::Lb4Services.to_string(),
            MapName::Lb4Backends.to_string(),
            MapName::Lb4ReverseNat.to_string(),
        ],
        BpfCommand::Endpoint { .. } => vec![MapName::Lxc.to_string()],
        BpfCommand::Ct {
            command: CtCommand::List { scope },
        } => {
            if scope != "global" {
                bail!("unknown conntrack table {scope:?}: only `global` exists");
            }
            vec![
                MapName::Ct4Global.to_string(),
                MapName::CtAny4Global.to_string(),
            ]
        }
        BpfCommand::Metrics { .. } => vec![METRICS_MAP.to_owned()],
    };
    print_maps(ctx, &names).await
}

async fn monitor(
    json: bool,
    types: Vec<MonitorEventType>,
    bpf_root: PathBuf,
) -> anyhow::Result<()> {
    let pin_dir = bpf_root.join("tc").join("globals");
    let reader = EventReader::open_pinned(&pin_dir).with_context(|| {
        format!(
            "cannot open the event ring buffer under {}: is cilium-agent running, and are you \
             root? (pass --bpf-root if the agent uses another)",
            pin_dir.display()
        )
    })?;
    let mut reader = reader
        .into_async()
        .context("cannot watch the event ring buffer")?;
    let filter = MonitorFilter::new(types);
    eprintln!("Listening for events... Press Ctrl-C to quit");
    loop {
        let batch = reader
            .next_batch()
            .await
            .context("reading the event ring buffer failed")?;
        for event in batch.iter().filter(|e| filter.matches(e)) {
            if json {
                println!("{}", serde_json::to_string(event)?);
            } else {
                println!("{}", format_monitor_line(event));
            }
        }
    }
}

async fn node_list(ctx: &Ctx) -> anyhow::Result<()> {
    let nodes: api::ClusterNodeStatus = ctx.client.get("/cluster/nodes").await?;
    if ctx.json {
        return ctx.print_json(&nodes);
    }
    let mut t = table(&["Name", "IPv4 Address", "Endpoint CIDR"]);
    for node in &nodes.nodes_added {
        let address = node
            .primary_address
            .as_ref()
            .and_then(|a| a.ipv4.ip.clone())
            .or_else(|| node.ipv4_router.map(|ip| ip.to_string()))
            .unwrap_or_default();
        t.add_row(vec![
            node.name.clone(),
            address,
            node.ipv4_alloc_cidr.clone().unwrap_or_default(),
        ]);
    }
    println!("{t}");
    Ok(())
}

async fn kvstore_get(
    json: bool,
    key: String,
    recursive: bool,
    opts: Vec<String>,
) -> anyhow::Result<()> {
    if opts.is_empty() {
        bail!("pass the agent's --kvstore-opt etcd.config=FILE so cilium-dbg can reach etcd");
    }
    let config = EtcdConfig::from_kvstore_opt_flags(&opts).context("invalid --kvstore-opt")?;
    let backend: Arc<dyn Backend> = Arc::new(
        EtcdBackend::connect(&config)
            .await
            .with_context(|| format!("cannot connect to etcd at {:?}", config.endpoints))?,
    );
    let kvs = if recursive {
        backend.list_prefix(&key).await?.kvs
    } else {
        backend.get(&key).await?.into_iter().collect()
    };
    if kvs.is_empty() {
        bail!("key {key:?} not found");
    }
    let pairs: Vec<(String, String)> = kvs
        .into_iter()
        .map(|kv| (kv.key, String::from_utf8_lossy(&kv.value).into_owned()))
        .collect();
    if json {
        let map: serde_json::Map<String, serde_json::Value> = pairs
            .into_iter()
            .map(|(k, v)| {
                let value = serde_json::from_str(&v).unwrap_or(serde_json::Value::String(v));
                (k, value)
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&map)?);
    } else {
        for (k, v) in pairs {
            println!("{k} => {v}");
        }
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let socket = cli
        .host
        .as_deref()
        .map(socket_from_host)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    let ctx = Ctx {
        client: AgentClient::new(socket),
        json: cli.output == Some(Output::Json),
    };
    match cli.command {
        Command::Status { verbose } => status(&ctx, verbose).await,
        Command::Endpoint { command } => endpoint(&ctx, command).await,
        Command::Identity { command } => identity(&ctx, command).await,
        Command::Policy { command } => policy(&ctx, command).await,
        Command::Service { command } => service(&ctx, command).await,
        Command::Bpf { command } => bpf(&ctx, command).await,
        Command::Monitor { types, bpf_root } => monitor(ctx.json, types, bpf_root).await,
        Command::Node {
            command: ListOnly::List,
        } => node_list(&ctx).await,
        Command::Kvstore {
            command:
                KvstoreCommand::Get {
                    key,
                    recursive,
                    kvstore_opt,
                },
        } => kvstore_get(ctx.json, key, recursive, kvstore_opt).await,
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("Error: cannot start the runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("Error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
