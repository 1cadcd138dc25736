//! `cilium-agent`: the per-node daemon. Parses the flags of DESIGN 4.1, mounts bpffs if
//! needed, loads the datapath, starts the actors (`cilium_cmd::daemon`), serves the REST API
//! on the unix socket and Prometheus metrics, and stops on SIGTERM/SIGINT without tearing the
//! datapath down: programs, links and maps stay pinned and keep enforcing.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actors::identity::IdentityBackend;
use actors::policy::EnforcementMode;
use anyhow::{Context as _, anyhow, bail};
use cilium_cmd::daemon::{
    AgentConfig, ClusterMembership, KvstoreMode, MeshMembership, start_agent,
};
use cilium_cmd::hubble_server::{self, HubbleConfig};
use cilium_cmd::kvstore_mode::{EtcdConnector, local_node, wait_for_pod_cidr};
use cilium_cmd::{metrics, server};
use clap::{Parser, ValueEnum};
use datapath::routes::{NetlinkNodeRoutes, RoutingMode};
use datapath::{KernelDatapath, LoadOptions};
use hubble::ring::Capacity;
use ipnet::Ipv4Net;
use kvstore::Backend;
use kvstore::allocator::IdentityAllocator;
use kvstore::config::EtcdConfig;
use kvstore::etcd::EtcdBackend;
use kvstore::lease::LeaseKeeper;
use model::identity::{ClusterId, ClusterName};
use tokio::signal::unix::{SignalKind, signal};

/// `statfs` magic of a bpffs mount.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Ipam {
    #[value(name = "host-scope")]
    HostScope,
    #[value(name = "cluster-pool")]
    ClusterPool,
}

#[derive(Debug, Parser)]
#[command(
    name = "cilium-agent",
    version,
    about = "Cilium agent: CNI, identities, policy and load balancing on one node"
)]
struct Flags {
    /// This node's name.
    #[arg(long)]
    node_name: Option<String>,
    #[arg(long, default_value = "default")]
    cluster_name: String,
    /// 0-255; 1-255 in a cluster mesh.
    #[arg(long, default_value_t = 0)]
    cluster_id: u8,
    /// Empty: identities are allocated locally; `etcd`: cluster-wide through etcd.
    #[arg(long, default_value = "")]
    kvstore: String,
    /// `etcd.config=FILE` (YAML with `endpoints`, optional TLS files); repeatable.
    #[arg(long = "kvstore-opt")]
    kvstore_opt: Vec<String>,
    /// Lifetime of the lease carrying this agent's kvstore keys (`15m`, `30s`): how long its
    /// node, endpoints and identities outlive a dead agent.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    kvstore_lease_ttl: Duration,
    #[arg(long, value_enum, default_value = "host-scope")]
    ipam: Ipam,
    /// This node's pod CIDR. With `--ipam cluster-pool` and no range, the agent waits for the
    /// operator to allocate one.
    #[arg(long)]
    ipv4_range: Option<Ipv4Net>,
    /// This node's IPv4 address on the underlay; default: the first IPv4 address of the first
    /// of `--devices`.
    #[arg(long)]
    ipv4_node: Option<Ipv4Addr>,
    #[arg(long, default_value = cilium_cmd::client::DEFAULT_SOCKET)]
    socket_path: PathBuf,
    #[arg(long, default_value = "/var/run/cilium")]
    state_dir: PathBuf,
    /// The bpffs mount; mounted if missing.
    #[arg(long, default_value = "/sys/fs/bpf")]
    bpf_root: PathBuf,
    /// Native devices (comma separated).
    #[arg(long, value_delimiter = ',')]
    devices: Vec<String>,
    /// `native`: pod CIDRs of other nodes are routed over the underlay; `tunnel`: through
    /// VXLAN to the other node's address.
    #[arg(long, default_value = "native")]
    routing_mode: RoutingMode,
    /// default, always or never.
    #[arg(long, default_value = "default")]
    enable_policy: EnforcementMode,
    #[arg(long)]
    enable_hubble: bool,
    /// Hubble's gRPC server (Observer, Peer); empty: none on TCP.
    #[arg(long, default_value = ":4244")]
    hubble_listen_address: String,
    /// Hubble's gRPC server on a unix socket; empty: none.
    #[arg(long, default_value = cilium_cmd::hubble_server::DEFAULT_SOCKET_PATH)]
    hubble_socket_path: String,
    /// Flows kept for Hubble: one less than a power of two, at most 65535.
    #[arg(long, default_value_t = Capacity::DEFAULT)]
    hubble_event_buffer_capacity: Capacity,
    /// Hubble's Prometheus metrics; empty disables them.
    #[arg(long, default_value = ":9965")]
    hubble_metrics_server: String,
    /// One etcd config file per remote cluster, file name = cluster name.
    #[arg(long)]
    clustermesh_config: Option<PathBuf>,
    /// Empty disables metrics.
    #[arg(long, default_value = ":9962")]
    prometheus_serve_addr: String,
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Mounts bpffs at `root` unless a bpffs is already mounted there.
fn ensure_bpffs(root: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(root)
        .with_context(|| format!("cannot create the bpf root {}: run as root", root.display()))?;
    let stat = nix::sys::statfs::statfs(root)
        .with_context(|| format!("cannot inspect the bpf root {}", root.display()))?;
    #[allow(clippy::unnecessary_cast)] // the field's type differs between libc targets
    if stat.filesystem_type().0 as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpffs"),
        root,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| {
        format!(
            "bpffs not mountable at {}: run as root (CAP_SYS_ADMIN) or mount it first with \
             `mount -t bpf bpffs {}`",
            root.display(),
            root.display()
        )
    })?;
    tracing::info!(root = %root.display(), "mounted bpffs");
    Ok(())
}

/// What kvstore mode gives the rest of the start: the identity backend, the health answer,
/// the store and the agent's lease.
struct Kvstore {
    identity: IdentityBackend,
    mode: KvstoreMode,
    backend: Arc<dyn Backend>,
    lease: LeaseKeeper,
}

/// Connects to etcd, takes the agent's lease and keeps it alive, and starts the identity
/// allocator on it. Slave keys carry the node's IP, as upstream's do.
async fn connect_kvstore(
    flags: &Flags,
    node_ip: Ipv4Addr,
    cluster_id: ClusterId,
) -> anyhow::Result<Kvstore> {
    let config = EtcdConfig::from_kvstore_opt_flags(&flags.kvstore_opt)
        .context("invalid --kvstore-opt: pass etcd.config=FILE with an endpoints list")?;
    let endpoints = config.endpoints.clone();
    tracing::info!(?endpoints, "connecting to etcd");
    let etcd = EtcdBackend::connect(&config).await.with_context(|| {
        format!("cannot connect to etcd at {endpoints:?}: is etcd running and reachable?")
    })?;
    let backend: Arc<dyn Backend> = Arc::new(etcd);
    let lease = LeaseKeeper::start(Arc::clone(&backend), flags.kvstore_lease_ttl)
        .await
        .context("cannot take a lease from etcd")?;
    let allocator = Arc::new(
        IdentityAllocator::new(
            Arc::clone(&backend),
            cluster_id,
            node_ip.to_string(),
            lease.lease(),
            std::process::id().into(),
        )
        .await
        .context("cannot list the cluster's identities in etcd")?,
    );
    Ok(Kvstore {
        identity: IdentityBackend::Kvstore {
            allocator,
            backend: Arc::clone(&backend),
        },
        mode: KvstoreMode::Etcd { endpoints },
        backend,
        lease,
    })
}

/// The node's underlay address: `--ipv4-node`, else the first IPv4 address of the first of
/// `--devices` that has one, else the first non-loopback IPv4 address of the namespace.
fn node_ip(flags: &Flags) -> anyhow::Result<Ipv4Addr> {
    if let Some(ip) = flags.ipv4_node {
        return Ok(ip);
    }
    let addrs: Vec<(String, Ipv4Addr)> = nix::ifaddrs::getifaddrs()
        .context("cannot list the node's addresses: pass --ipv4-node")?
        .filter_map(|ifa| {
            let ip = ifa.address.as_ref()?.as_sockaddr_in()?.ip();
            Some((ifa.interface_name, ip))
        })
        .collect();
    for device in &flags.devices {
        if let Some((_, ip)) = addrs.iter().find(|(name, _)| name == device) {
            return Ok(*ip);
        }
    }
    if !flags.devices.is_empty() {
        bail!(
            "none of --devices {:?} has an IPv4 address: pass --ipv4-node or fix --devices",
            flags.devices
        );
    }
    addrs
        .iter()
        .find(|(_, ip)| !ip.is_loopback())
        .map(|(name, ip)| {
            tracing::info!(device = %name, %ip, "node address taken from the first device");
            *ip
        })
        .ok_or_else(|| anyhow!("the node has no IPv4 address: pass --ipv4-node or --devices"))
}

async fn run(flags: Flags) -> anyhow::Result<()> {
    let node_name = match &flags.node_name {
        Some(name) => name.clone(),
        None => nix::unistd::gethostname()
            .context("cannot read the hostname: pass --node-name")?
            .to_string_lossy()
            .into_owned(),
    };
    let cluster_name = ClusterName::new(flags.cluster_name.clone())
        .with_context(|| format!("invalid --cluster-name {:?}", flags.cluster_name))?;
    let cluster_id = ClusterId::new(flags.cluster_id);
    let wait_for_cidr = flags.ipam == Ipam::ClusterPool && flags.ipv4_range.is_none();
    if wait_for_cidr && flags.kvstore.is_empty() {
        bail!(
            "--ipam cluster-pool without --ipv4-range waits for cilium-operator-generic to \
             allocate the pod CIDR through the kvstore: pass --kvstore etcd --kvstore-opt \
             etcd.config=FILE, or --ipv4-range"
        );
    }
    if flags.clustermesh_config.is_some() {
        if flags.kvstore.is_empty() {
            bail!(
                "--clustermesh-config needs this cluster's kvstore too: pass --kvstore etcd \
                 --kvstore-opt etcd.config=FILE"
            );
        }
        if cluster_id == ClusterId::UNSET {
            bail!(
                "--clustermesh-config needs a --cluster-id between 1 and 255, distinct from every \
                 other cluster of the mesh"
            );
        }
    }
    if !flags.devices.is_empty() {
        tracing::info!(devices = ?flags.devices, "native devices");
    }
    std::fs::create_dir_all(&flags.state_dir).with_context(|| {
        format!(
            "cannot create --state-dir {}: run as root or choose a writable directory",
            flags.state_dir.display()
        )
    })?;

    let kvstore = match flags.kvstore.as_str() {
        "" => None,
        "etcd" => {
            let node_ip = node_ip(&flags)?;
            tracing::info!(%node_ip, "node address");
            Some((connect_kvstore(&flags, node_ip, cluster_id).await?, node_ip))
        }
        other => bail!("--kvstore {other:?} is not supported: use etcd or leave it empty"),
    };
    let mut ipv4_range = flags.ipv4_range;
    if wait_for_cidr && let Some((kv, node_ip)) = &kvstore {
        let node = local_node(&cluster_name, cluster_id, &node_name, *node_ip, None);
        ipv4_range =
            Some(wait_for_pod_cidr(Arc::clone(&kv.backend), &node, kv.lease.lease()).await);
    }
    let (identity_backend, kvstore_mode, cluster) = match kvstore {
        None => {
            if flags.routing_mode == RoutingMode::Tunnel {
                tracing::warn!("--routing-mode tunnel has no peers to reach without --kvstore");
            }
            (IdentityBackend::Local, KvstoreMode::Disabled, None)
        }
        Some((kv, node_ip)) => {
            let membership = ClusterMembership {
                backend: kv.backend,
                lease: Arc::new(kv.lease),
                node_ip,
                routes: Arc::new(NetlinkNodeRoutes::new(flags.routing_mode, node_ip)),
                mesh: flags
                    .clustermesh_config
                    .clone()
                    .map(|config_dir| MeshMembership {
                        config_dir,
                        connector: Arc::new(EtcdConnector),
                    }),
            };
            (kv.identity, kv.mode, Some(membership))
        }
    };

    ensure_bpffs(&flags.bpf_root)?;
    let load = LoadOptions {
        bpf_root: Some(flags.bpf_root.clone()),
        ..LoadOptions::default()
    };
    let map_dir = load
        .pin_dir()
        .unwrap_or_else(|| flags.bpf_root.join("tc/globals"));
    let kernel = KernelDatapath::load(&load).with_context(|| {
        format!(
            "cannot load the BPF datapath under {}: run as root (CAP_BPF, CAP_NET_ADMIN) \
             on a kernel with BPF support",
            flags.bpf_root.display()
        )
    })?;

    let config = AgentConfig {
        node_name,
        cluster_name,
        cluster_id,
        enforcement: flags.enable_policy,
        ipv4_range,
        state_dir: flags.state_dir.clone(),
        map_dir,
        identity_backend,
        kvstore: kvstore_mode,
        cluster,
        hubble_enabled: flags.enable_hubble,
    };
    let links = Arc::new(datapath::link::NetlinkLinks::new());
    let agent = start_agent(config, Box::new(kernel), links)
        .await
        .context("cannot start the agent")?;

    let listener = server::bind_socket(&flags.socket_path)
        .context("cannot serve the API: run as root or choose another --socket-path")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut api_stop = stop_rx.clone();
    let api = tokio::spawn(server::serve(listener, agent.handles.clone(), async move {
        let _ = api_stop.wait_for(|stop| *stop).await;
    }));
    tracing::info!(socket = %flags.socket_path.display(), "serving the API");
    // Served while the restore runs: CNI calls meanwhile get 503 ("try again later").
    agent
        .restore()
        .await
        .context("cannot restore the previous agent's state")?;

    let metrics_task = if flags.prometheus_serve_addr.is_empty() {
        None
    } else {
        let addr = metrics::parse_listen_addr(&flags.prometheus_serve_addr).with_context(|| {
            format!(
                "invalid --prometheus-serve-addr {:?}: use :PORT or IP:PORT",
                flags.prometheus_serve_addr
            )
        })?;
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} for metrics: choose another --prometheus-serve-addr")
        })?;
        let mut metrics_stop = stop_rx.clone();
        let router = metrics::router(agent.handles.clone());
        tracing::info!(%addr, "serving metrics");
        Some(tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = metrics_stop.wait_for(|stop| *stop).await;
                })
                .await
        }))
    };

    let hubble = if flags.enable_hubble {
        let node_ip = match node_ip(&flags) {
            Ok(ip) => IpAddr::V4(ip),
            Err(error) => {
                tracing::warn!("{error:#}; Hubble's Peer service announces this node on 127.0.0.1");
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            }
        };
        let config = HubbleConfig {
            listen_address: flags.hubble_listen_address.clone(),
            socket_path: (!flags.hubble_socket_path.is_empty())
                .then(|| PathBuf::from(&flags.hubble_socket_path)),
            capacity: flags.hubble_event_buffer_capacity,
            metrics_address: flags.hubble_metrics_server.clone(),
            node_ip,
        };
        let events = hubble_server::open_datapath_events(&agent.handles.config.map_dir)?;
        Some(
            hubble_server::start(&agent.handles, config, events)
                .await
                .context("cannot start Hubble")?,
        )
    } else {
        None
    };

    let mut sigterm = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
    }
    let _ = stop_tx.send(true);
    match api.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "API server ended with an error"),
        Err(error) => tracing::warn!(%error, "API server task failed"),
    }
    if let Some(task) = metrics_task
        && let Ok(Err(error)) = task.await
    {
        tracing::warn!(%error, "metrics server ended with an error");
    }
    let _ = std::fs::remove_file(&flags.socket_path);
    // The datapath stays: programs, links and maps are pinned and keep enforcing.
    if let Some(hubble) = hubble {
        hubble.stop().await;
    }
    agent.stop();
    tracing::info!("agent stopped; the datapath keeps running");
    Ok(())
}

fn main() -> std::process::ExitCode {
    let flags = Flags::parse();
    init_logging(flags.log_format);
    let system = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("cilium-agent")
            .build()
            .unwrap_or_else(|err| {
                eprintln!("cannot start the tokio runtime: {err}");
                std::process::exit(1)
            })
    });
    let result = system.block_on(run(flags));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("cilium-agent: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
