//! hubble-relay: serves the Hubble Observer API for a whole cluster (or several) by merging
//! the flows of every node's Hubble server. The work is done by `hubble::relay`; this binary
//! parses upstream's flags, sets up logging and runs until SIGTERM or SIGINT.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use hubble::relay::{
    DEFAULT_LISTEN_ADDRESS, DEFAULT_PEER_SERVICE, Relay, RelayConfig, parse_listen_address,
};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Parser)]
#[command(
    name = "hubble-relay",
    version,
    about = "Hubble Relay: one Observer API (GetFlows, GetNodes, GetNamespaces, ServerStatus) \
             for every node of one or more clusters",
    long_about = "Hubble Relay learns the nodes from Hubble Peer services (one per cluster), keeps a \
                  gRPC connection to each node's Hubble server, and serves the Observer API by \
                  merging every node's answer: flows in time order, counters summed, and nodes \
                  it cannot reach reported as unavailable.\n\n\
                  Point `hubble observe --server` at --listen-address."
)]
struct Flags {
    /// Address of a Hubble Peer service (HOST:PORT, IP, or unix://PATH); repeat it for every
    /// cluster behind this relay. The default is the local agent's Hubble server (upstream's
    /// default, hubble-peer.kube-system.svc.cluster.local:443, only resolves in Kubernetes).
    #[arg(long = "peer-service", value_name = "ADDR", default_value = DEFAULT_PEER_SERVICE)]
    peer_services: Vec<String>,
    /// Address to serve the Observer API on (`:PORT` listens on every IPv4 address).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN_ADDRESS)]
    listen_address: String,
    /// Most flows buffered per request to put the nodes' flows in time order.
    #[arg(long, default_value_t = 100)]
    sort_buffer_len_max: usize,
    /// How long a flow may wait in the sort buffer when it is not full (Go duration: 1s, 500ms).
    #[arg(long, default_value = "1s", value_parser = go_duration)]
    sort_buffer_drain_timeout: Duration,
    /// Limit for connecting to a node and for each request to it.
    #[arg(long, default_value = "5s", value_parser = go_duration)]
    dial_timeout: Duration,
    /// Wait between attempts to reach a Peer service.
    #[arg(long, default_value = "30s", value_parser = go_duration)]
    retry_timeout: Duration,
    /// Log line format (the level comes from RUST_LOG, default info).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn go_duration(text: &str) -> Result<Duration, String> {
    kvstore::config::parse_go_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration (examples: 1s, 500ms, 1m30s)"))
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

fn config(flags: &Flags) -> anyhow::Result<RelayConfig> {
    anyhow::ensure!(
        flags.sort_buffer_len_max > 0,
        "--sort-buffer-len-max must be at least 1"
    );
    anyhow::ensure!(
        !flags.dial_timeout.is_zero(),
        "--dial-timeout must be longer than 0s"
    );
    let defaults = RelayConfig::default();
    let node_name = nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or(defaults.node_name.clone());
    Ok(RelayConfig {
        peer_services: flags.peer_services.clone(),
        sort_buffer_len_max: flags.sort_buffer_len_max,
        sort_buffer_drain_timeout: flags.sort_buffer_drain_timeout,
        dial_timeout: flags.dial_timeout,
        retry_timeout: flags.retry_timeout,
        node_name,
        ..defaults
    })
}

async fn run(flags: Flags) -> anyhow::Result<()> {
    let config = config(&flags)?;
    let address = parse_listen_address(&flags.listen_address).context("check --listen-address")?;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {address}; is another hubble-relay running? (--listen-address)"
            )
        })?;
    let relay = Relay::start(config).context("check --peer-service")?;
    tracing::info!(
        %address,
        peer_services = ?flags.peer_services,
        "hubble-relay serving the Observer API"
    );
    let mut sigterm = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
        }
    };
    let served = relay.serve(listener, shutdown).await;
    relay.stop();
    served.context("the Observer server failed")
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    init_logging(flags.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hubble-relay")
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("hubble-relay: cannot start the tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(flags)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("hubble-relay: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_default_to_upstream_values_and_peer_service_repeats() {
        let flags = Flags::parse_from(["hubble-relay"]);
        assert_eq!(flags.peer_services, vec!["localhost:4244"]);
        assert_eq!(flags.listen_address, ":4245");
        let config = config(&flags).map_err(|e| e.to_string());
        let config = config
            .as_ref()
            .map(|c| (c.sort_buffer_len_max, c.sort_buffer_drain_timeout));
        assert_eq!(config, Ok((100, Duration::from_secs(1))));

        let flags = Flags::parse_from([
            "hubble-relay",
            "--peer-service",
            "10.0.0.1:4244",
            "--peer-service",
            "unix:///var/run/cilium/hubble.sock",
            "--sort-buffer-drain-timeout",
            "250ms",
        ]);
        assert_eq!(
            flags.peer_services,
            vec!["10.0.0.1:4244", "unix:///var/run/cilium/hubble.sock"]
        );
        assert_eq!(flags.sort_buffer_drain_timeout, Duration::from_millis(250));
    }

    #[test]
    fn bad_values_are_rejected_with_the_flag_named() {
        assert!(Flags::try_parse_from(["hubble-relay", "--dial-timeout", "soon"]).is_err());
        let flags = Flags::parse_from(["hubble-relay", "--sort-buffer-len-max", "0"]);
        let error = config(&flags).map(|_| ()).map_err(|e| e.to_string());
        assert_eq!(
            error,
            Err("--sort-buffer-len-max must be at least 1".to_owned())
        );
    }
}
