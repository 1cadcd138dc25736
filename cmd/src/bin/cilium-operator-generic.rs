//! `cilium-operator-generic` for a cluster without Kubernetes: parses upstream's flags,
//! connects to etcd and runs the `operator` crate (cluster-pool IPAM, node and identity GC,
//! heartbeat, leader election) until SIGTERM/SIGINT, then releases its leader lock so that a
//! standby operator takes over at once. Its Prometheus metrics are served on
//! `--operator-prometheus-serve-addr` (`:9963`) until it stops.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cilium_cmd::metrics::parse_listen_addr;
use clap::{Parser, ValueEnum};
use ipnet::Ipv4Net;
use kvstore::Backend;
use kvstore::config::{EtcdConfig, parse_go_duration};
use kvstore::etcd::EtcdBackend;
use model::identity::{ClusterId, ClusterName};
use operator::{Operator, OperatorConfig, OperatorMetrics};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

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
    /// Address the Prometheus metrics are served on (`:PORT` listens on every address);
    /// empty disables them.
    #[arg(long, default_value = ":9963")]
    operator_prometheus_serve_addr: String,
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
    let metrics_listener = bind_metrics(&flags.operator_prometheus_serve_addr).await?;
    let etcd_config = EtcdConfig::from_kvstore_opt_flags(&flags.kvstore_opt)
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

    let (stop_tx, stop_rx) = watch::channel(false);
    let metrics_server = metrics_listener.map(|listener| {
        tokio::spawn(serve_metrics(
            listener,
            operator.metrics().clone(),
            stop_rx.clone(),
        ))
    });
    let mut task = tokio::spawn(operator.run(stop_rx));
    let mut sigterm = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    let ended_early = tokio::select! {
        _ = sigterm.recv() => {
            tracing::info!("SIGTERM: shutting down");
            None
        }
        _ = sigint.recv() => {
            tracing::info!("SIGINT: shutting down");
            None
        }
        ended = &mut task => Some(ended),
    };
    stop_tx.send_replace(true);
    let result = match ended_early {
        Some(ended) => ended
            .context("operator task failed")?
            .context("operator stopped"),
        None => task
            .await
            .context("operator task failed")?
            .context("operator stopped with an error"),
    };
    if let Some(server) = metrics_server {
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "metrics server ended with an error"),
            Err(error) => tracing::warn!(%error, "metrics server task failed"),
        }
    }
    result?;
    tracing::info!("operator stopped");
    Ok(())
}

/// Listens on `--operator-prometheus-serve-addr`; `None` when it is empty (metrics disabled).
/// Bound before anything else starts, so a taken port fails the start instead of going unseen.
async fn bind_metrics(addr: &str) -> anyhow::Result<Option<TcpListener>> {
    if addr.is_empty() {
        return Ok(None);
    }
    let parsed = parse_listen_addr(addr).with_context(|| {
        format!("invalid --operator-prometheus-serve-addr {addr:?}: use :PORT or IP:PORT")
    })?;
    let listener = TcpListener::bind(parsed).await.with_context(|| {
        format!(
            "cannot listen on {parsed} for metrics: choose another --operator-prometheus-serve-addr"
        )
    })?;
    Ok(Some(listener))
}

async fn scrape(State(metrics): State<OperatorMetrics>) -> Response {
    match metrics.render() {
        Ok(text) => (
            [(header::CONTENT_TYPE, operator::metrics::CONTENT_TYPE)],
            text,
        )
            .into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

/// Serves `GET /metrics` until `stop` turns `true`, then finishes the scrapes under way.
fn serve_metrics(
    listener: TcpListener,
    metrics: OperatorMetrics,
    mut stop: watch::Receiver<bool>,
) -> impl Future<Output = std::io::Result<()>> {
    let router = Router::new()
        .route("/metrics", get(scrape))
        .with_state(metrics);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving metrics");
    }
    async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|stop| *stop).await;
            })
            .await
    }
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
        assert!(EtcdConfig::from_kvstore_opt_flags(&["etcd.config".to_owned()]).is_err());
    }

    #[tokio::test]
    async fn metrics_address_flag_defaults_to_upstreams_port_and_empty_disables() {
        let flags = Flags::try_parse_from(["cilium-operator-generic"]).unwrap();
        assert_eq!(flags.operator_prometheus_serve_addr, ":9963");
        let flags = Flags::try_parse_from([
            "cilium-operator-generic",
            "--operator-prometheus-serve-addr",
            "",
        ])
        .unwrap();
        assert!(
            bind_metrics(&flags.operator_prometheus_serve_addr)
                .await
                .unwrap()
                .is_none()
        );
        let err = bind_metrics("9963").await.unwrap_err();
        assert!(
            format!("{err:#}").contains("--operator-prometheus-serve-addr"),
            "{err:#}"
        );
    }

    /// A raw HTTP/1.1 exchange: the whole response, head and body.
    async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        String::from_utf8(response).unwrap()
    }

    #[tokio::test]
    async fn metrics_are_served_until_shutdown() {
        let listener = bind_metrics("127.0.0.1:0").await.unwrap().unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = OperatorMetrics::new();
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(serve_metrics(listener, metrics, stopped));

        let response = http_get(addr, "/metrics").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(
            response
                .to_ascii_lowercase()
                .contains("content-type: application/openmetrics-text"),
            "{response}"
        );
        assert!(
            response.contains("\ncilium_operator_is_leader 0\n"),
            "{response}"
        );
        assert!(response.ends_with("# EOF\n"), "{response}");
        let response = http_get(addr, "/other").await;
        assert!(response.starts_with("HTTP/1.1 404"), "{response}");

        stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("metrics server stops on shutdown")
            .expect("metrics server task did not panic")
            .expect("metrics server ended cleanly");
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
