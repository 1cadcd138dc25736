//! `cilium-operator-generic` for a cluster without Kubernetes: parses upstream's flags,
//! connects to etcd and runs the `operator` crate (cluster-pool IPAM, node and identity GC,
//! heartbeat, leader election) until SIGTERM/SIGINT, then releases its leader lock so that a
//! standby operator takes over at once.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use clap::{Parser, ValueEnum};
use ipnet::Ipv4Net;
use kvstore::Backend;
use kvstore::config::{EtcdConfig, parse_go_duration};
use kvstore::etcd::EtcdBackend;
use model::identity::{ClusterId, ClusterName};
use operator::{Operator, OperatorConfig};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Parser)]
#[command(
    name = "cilium-operator-generic",
    version,
    about = "Cilium operator: cluster-pool IPAM, node and identity garbage collection, kvstore \
             heartbeat; one leader at a time through an etcd lock"
)]
struct Flags {
    /// Name of the cluster whose nodes get pod CIDRs.
    #[arg(long, default_value = ClusterName::DEFAULT)]
    cluster_name: String,
    /// Cluster id (0-255): the identity range the identity GC collects.
    #[arg(long, default_value_t = 0)]
    cluster_id: u8,
    /// The kvstore holding the cluster's state; only `etcd` is supported.
    #[arg(long, default_value = "")]
    kvstore: String,
    /// `etcd.config=FILE` (YAML with `endpoints`, optional TLS files) or `etcd.address=URL`;
    /// repeatable.
    #[arg(long = "kvstore-opt")]
    kvstore_opt: Vec<String>,
    /// The pool every node's pod CIDR is cut from.
    #[arg(long, default_value_t = operator::config::DEFAULT_POOL)]
    cluster_pool_ipv4_cidr: Ipv4Net,
    /// Prefix length of each node's pod CIDR.
    #[arg(long, default_value_t = 24)]
    cluster_pool_ipv4_mask_size: u8,
    /// Time between identity garbage collection runs (Go duration: 15m, 30s).
    #[arg(long, default_value = "15m", value_parser = go_duration)]
    identity_gc_interval: Duration,
    /// Maximum identities deleted per --identity-gc-rate-interval (0: no limit).
    #[arg(long, default_value_t = 2500)]
    identity_gc_rate_limit: u32,
    /// The interval --identity-gc-rate-limit counts over.
    #[arg(long, default_value = "1m", value_parser = go_duration)]
    identity_gc_rate_interval: Duration,
    /// How long a node's record must be gone before its pod CIDR and its unleased ipcache
    /// entries are removed.
    #[arg(long, default_value = "5m", value_parser = go_duration)]
    nodes_gc_interval: Duration,
    /// TTL of the operator's kvstore lease (the heartbeat key hangs on it).
    #[arg(long, default_value = "15m", value_parser = go_duration)]
    kvstore_lease_ttl: Duration,
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn go_duration(text: &str) -> Result<Duration, String> {
    parse_go_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration (examples: 15m, 30s, 1h30m)"))
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

/// `--kvstore-opt` values as the key/value pairs [`EtcdConfig::from_kvstore_opts`] takes.
fn kvstore_opts(opts: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    opts.iter()
        .map(|opt| {
            opt.split_once('=')
                .map(|(key, value)| (key.to_owned(), value.to_owned()))
                .ok_or_else(|| anyhow!("--kvstore-opt {opt:?} is not KEY=VALUE (etcd.config=FILE)"))
        })
        .collect()
}

fn operator_config(flags: &Flags) -> anyhow::Result<OperatorConfig> {
    let cluster_name = ClusterName::new(flags.cluster_name.clone())
        .with_context(|| format!("invalid --cluster-name {:?}", flags.cluster_name))?;
    Ok(OperatorConfig {
        cluster_name,
        cluster_id: ClusterId::new(flags.cluster_id),
        cluster_pool_ipv4_cidr: flags.cluster_pool_ipv4_cidr,
        cluster_pool_ipv4_mask_size: flags.cluster_pool_ipv4_mask_size,
        identity_gc_interval: flags.identity_gc_interval,
        identity_gc_rate_limit: flags.identity_gc_rate_limit,
        identity_gc_rate_interval: flags.identity_gc_rate_interval,
        nodes_gc_interval: flags.nodes_gc_interval,
        lease_ttl: flags.kvstore_lease_ttl,
        ..OperatorConfig::default()
    })
}

async fn run(flags: Flags) -> anyhow::Result<()> {
    if flags.kvstore != "etcd" {
        bail!(
            "--kvstore {:?} is not supported: without Kubernetes the operator keeps the cluster's \
             state in etcd; pass --kvstore etcd --kvstore-opt etcd.config=FILE",
            flags.kvstore
        );
    }
    let config = operator_config(&flags)?;
    config
        .validate()
        .context("invalid operator configuration")?;
    let etcd_config = EtcdConfig::from_kvstore_opts(kvstore_opts(&flags.kvstore_opt)?)
        .context("invalid --kvstore-opt: pass etcd.config=FILE with an endpoints list")?;
    let endpoints = etcd_config.endpoints.clone();
    let etcd = EtcdBackend::connect(&etcd_config).await.with_context(|| {
        format!("cannot connect to etcd at {endpoints:?}: check the endpoints and TLS files")
    })?;
    let backend: Arc<dyn Backend> = Arc::new(etcd);
    // Not fatal: the operator keeps retrying until etcd answers, but the user should know.
    if let Err(error) = backend.status().await {
        tracing::warn!(?endpoints, %error, "etcd does not answer yet; retrying until it does");
    }
    let operator = Operator::new(config, backend).context("invalid operator configuration")?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut task = tokio::spawn(operator.run(stop_rx));
    let mut sigterm = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
        ended = &mut task => {
            return ended
                .context("operator task failed")?
                .context("operator stopped");
        }
    }
    stop_tx.send_replace(true);
    task.await
        .context("operator task failed")?
        .context("operator stopped with an error")?;
    tracing::info!("operator stopped");
    Ok(())
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    init_logging(flags.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cilium-operator")
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cilium-operator-generic: cannot start the tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(flags)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("cilium-operator-generic: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_with_upstream_defaults() {
        let flags = Flags::try_parse_from(["cilium-operator-generic"]).unwrap();
        let config = operator_config(&flags).unwrap();
        assert_eq!(config.cluster_name.as_str(), "default");
        assert_eq!(config.cluster_pool_ipv4_cidr.to_string(), "10.0.0.0/8");
        assert_eq!(config.cluster_pool_ipv4_mask_size, 24);
        assert_eq!(config.identity_gc_interval, Duration::from_secs(900));
        assert_eq!(config.nodes_gc_interval, Duration::from_secs(300));
        assert_eq!(config.identity_gc_deletes_per_sec(), 42);
    }

    #[test]
    fn go_durations_and_bad_values() {
        let flags = Flags::try_parse_from([
            "cilium-operator-generic",
            "--nodes-gc-interval",
            "2s",
            "--identity-gc-interval",
            "1m30s",
            "--cluster-name",
            "c1",
        ])
        .unwrap();
        assert_eq!(flags.nodes_gc_interval, Duration::from_secs(2));
        assert_eq!(flags.identity_gc_interval, Duration::from_secs(90));
        let err = Flags::try_parse_from(["cilium-operator-generic", "--nodes-gc-interval", "5"])
            .unwrap_err();
        assert!(err.to_string().contains("not a duration"), "{err}");
        let flags =
            Flags::try_parse_from(["cilium-operator-generic", "--cluster-name", "Bad_Name"])
                .unwrap();
        assert!(operator_config(&flags).is_err());
        assert!(kvstore_opts(&["etcd.config".to_owned()]).is_err());
    }
}
