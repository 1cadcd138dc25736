//! `clustermesh-apiserver` for a cluster without Kubernetes.
//!
//! It always publishes the cluster into its own etcd for the other clusters of the mesh: the
//! cluster configuration, the sync canaries and the heartbeat (`clustermesh::apiserver`). With
//! `--kvstoremesh` it also caches every remote cluster of `--clustermesh-config DIR` into that
//! same etcd (`clustermesh::kvstoremesh`), so that the cluster's agents read only their own etcd;
//! upstream runs the two as containers of one pod sharing the etcd, here they are one process.
//! It runs until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use cilium_cmd::kvstore_mode::EtcdConnector;
use clap::{Parser, ValueEnum};
use clustermesh::apiserver::{Publisher, PublisherConfig};
use clustermesh::kvstoremesh::{KvstoreMesh, KvstoreMeshConfig};
use kvstore::Backend;
use kvstore::config::{EtcdConfig, parse_go_duration};
use kvstore::etcd::EtcdBackend;
use model::identity::{ClusterId, ClusterName};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Parser)]
#[command(
    name = "clustermesh-apiserver",
    version,
    about = "Publishes a cluster's state for the other clusters of a ClusterMesh (cluster \
             configuration, sync canaries, heartbeat) and, with --kvstoremesh, caches the remote \
             clusters into the local etcd"
)]
struct Flags {
    /// Name of this cluster (lower-case letters, digits and '-', at most 32 characters).
    #[arg(long, default_value = ClusterName::DEFAULT)]
    cluster_name: String,
    /// Id of this cluster in the mesh, unique across it (1-255).
    #[arg(long, required = true, value_parser = clap::value_parser!(u8).range(1..=255))]
    cluster_id: Option<u8>,
    /// The kvstore holding the cluster's state; only `etcd` is supported.
    #[arg(long, default_value = "")]
    kvstore: String,
    /// `etcd.config=FILE` (YAML with `endpoints`, optional TLS files) or `etcd.address=URL`;
    /// repeatable.
    #[arg(long = "kvstore-opt")]
    kvstore_opt: Vec<String>,
    /// Also cache every remote cluster of --clustermesh-config into the local etcd
    /// (`cilium/cache/...`).
    #[arg(long, requires = "clustermesh_config")]
    kvstoremesh: bool,
    /// Directory with one etcd configuration file per remote cluster, named after the cluster
    /// (used with --kvstoremesh).
    #[arg(long)]
    clustermesh_config: Option<PathBuf>,
    /// How often `cilium/.heartbeat` is rewritten (Go duration); readers give a cluster up
    /// after two minutes of silence.
    #[arg(long, default_value = "1m", value_parser = go_duration)]
    heartbeat_interval: Duration,
    /// TTL of the lease every published and cached key hangs on.
    #[arg(long, default_value = "15m", value_parser = go_duration)]
    kvstore_lease_ttl: Duration,
    /// How long a removed remote cluster's cached data stays after its configuration is
    /// deleted, so that agents disconnect first.
    #[arg(long, default_value = "3m", value_parser = go_duration)]
    drain_grace_period: Duration,
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn go_duration(text: &str) -> Result<Duration, String> {
    match parse_go_duration(text) {
        Some(duration) => Ok(duration),
        None => Err(format!(
            "{text:?} is not a duration (examples: 1m, 30s, 1h30m)"
        )),
    }
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

/// What the flags ask for, validated.
#[derive(Debug)]
struct Settings {
    publisher: PublisherConfig,
    kvstoremesh: Option<KvstoreMeshConfig>,
}

fn settings(flags: &Flags) -> anyhow::Result<Settings> {
    let cluster_name = ClusterName::new(flags.cluster_name.clone())
        .with_context(|| format!("invalid --cluster-name {:?}", flags.cluster_name))?;
    let cluster_id = ClusterId::new(
        flags
            .cluster_id
            .context("--cluster-id is required: give this cluster an id from 1 to 255")?,
    );
    let mut publisher = PublisherConfig::new(cluster_name.clone(), cluster_id);
    publisher.heartbeat_interval = flags.heartbeat_interval;
    publisher.lease_ttl = flags.kvstore_lease_ttl;
    publisher
        .validate()
        .context("invalid clustermesh-apiserver configuration")?;
    let kvstoremesh = match (&flags.clustermesh_config, flags.kvstoremesh) {
        (Some(dir), true) => {
            let mut config = KvstoreMeshConfig::new(cluster_name, cluster_id, dir.clone());
            config.lease_ttl = flags.kvstore_lease_ttl;
            config.drain_grace_period = flags.drain_grace_period;
            Some(config)
        }
        (None, true) => bail!(
            "--kvstoremesh needs --clustermesh-config DIR with one etcd config file per remote cluster"
        ),
        (Some(_), false) => {
            tracing::warn!(
                "--clustermesh-config is only used with --kvstoremesh; publishing this cluster only"
            );
            None
        }
        (None, false) => None,
    };
    Ok(Settings {
        publisher,
        kvstoremesh,
    })
}

async fn run(flags: Flags) -> anyhow::Result<()> {
    if flags.kvstore != "etcd" {
        bail!(
            "--kvstore {:?} is not supported: clustermesh-apiserver publishes into the cluster's \
             etcd; pass --kvstore etcd --kvstore-opt etcd.config=FILE",
            flags.kvstore
        );
    }
    let settings = settings(&flags)?;
    let etcd_config = EtcdConfig::from_kvstore_opt_flags(&flags.kvstore_opt)
        .context("invalid --kvstore-opt: pass etcd.config=FILE with an endpoints list")?;
    let endpoints = etcd_config.endpoints.clone();
    let etcd = EtcdBackend::connect(&etcd_config).await.with_context(|| {
        format!("cannot connect to etcd at {endpoints:?}: check the endpoints and TLS files")
    })?;
    let backend: Arc<dyn Backend> = Arc::new(etcd);
    // Not fatal: publishing retries until etcd answers, but the user should know.
    if let Err(error) = backend.status().await {
        tracing::warn!(?endpoints, %error, "etcd does not answer yet; retrying until it does");
    }

    let publisher = Publisher::new(settings.publisher, Arc::clone(&backend))
        .context("invalid clustermesh-apiserver configuration")?;
    let mesh = settings
        .kvstoremesh
        .map(|config| KvstoreMesh::new(config, Arc::clone(&backend), Arc::new(EtcdConnector)))
        .transpose()
        .context("invalid kvstoremesh configuration")?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut publisher_task = tokio::spawn(publisher.run(stop_rx.clone()));
    let mut mesh_task = mesh.map(|mesh| {
        tracing::info!("kvstoremesh enabled");
        tokio::spawn(mesh.run(stop_rx.clone()))
    });

    let mut sigterm = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    let mesh_ended = async {
        match mesh_task.as_mut() {
            Some(task) => task.await,
            None => std::future::pending().await,
        }
    };
    let early = tokio::select! {
        _ = sigterm.recv() => {
            tracing::info!("SIGTERM: shutting down");
            Ok(())
        }
        _ = sigint.recv() => {
            tracing::info!("SIGINT: shutting down");
            Ok(())
        }
        ended = &mut publisher_task => {
            ended.context("publisher task failed")?;
            Err(anyhow!("publisher stopped unexpectedly"))
        }
        ended = mesh_ended => match ended {
            Ok(Ok(())) => Err(anyhow!("kvstoremesh stopped unexpectedly")),
            Ok(Err(error)) => Err(anyhow::Error::new(error).context("kvstoremesh failed")),
            Err(error) => Err(anyhow::Error::new(error).context("kvstoremesh task failed")),
        },
    };
    stop_tx.send_replace(true);
    if !publisher_task.is_finished() {
        publisher_task.await.context("publisher task failed")?;
    }
    if let Some(task) = mesh_task.filter(|task| !task.is_finished()) {
        task.await
            .context("kvstoremesh task failed")?
            .context("kvstoremesh failed")?;
    }
    early?;
    tracing::info!("clustermesh-apiserver stopped");
    Ok(())
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    init_logging(flags.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("clustermesh-apiserver")
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("clustermesh-apiserver: cannot start the tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(flags)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("clustermesh-apiserver: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Flags, clap::Error> {
        Flags::try_parse_from(std::iter::once("clustermesh-apiserver").chain(args.iter().copied()))
    }

    #[test]
    fn publisher_settings_from_flags() {
        let flags = parse(&[
            "--cluster-name",
            "c1",
            "--cluster-id",
            "7",
            "--kvstore",
            "etcd",
            "--heartbeat-interval",
            "5s",
        ])
        .unwrap();
        let settings = settings(&flags).unwrap();
        assert_eq!(settings.publisher.cluster_name.as_str(), "c1");
        assert_eq!(settings.publisher.cluster_id, ClusterId::new(7));
        assert_eq!(
            settings.publisher.heartbeat_interval,
            Duration::from_secs(5)
        );
        assert_eq!(settings.publisher.lease_ttl, Duration::from_secs(900));
        assert!(settings.kvstoremesh.is_none());
    }

    #[test]
    fn cluster_id_is_required_and_in_range() {
        for args in [
            &["--cluster-name", "c1"][..],
            &["--cluster-id", "0"],
            &["--cluster-id", "256"],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
        let flags = parse(&["--cluster-id", "1", "--cluster-name", "Bad_Name"]).unwrap();
        let err = settings(&flags).unwrap_err();
        assert!(format!("{err:#}").contains("--cluster-name"), "{err:#}");
    }

    #[test]
    fn kvstoremesh_needs_a_config_directory() {
        assert!(parse(&["--cluster-id", "1", "--kvstoremesh"]).is_err());
        let flags = parse(&[
            "--cluster-id",
            "1",
            "--kvstoremesh",
            "--clustermesh-config",
            "/etc/clustermesh",
            "--drain-grace-period",
            "10s",
        ])
        .unwrap();
        let mesh = settings(&flags).unwrap().kvstoremesh.unwrap();
        assert_eq!(mesh.config_dir, PathBuf::from("/etc/clustermesh"));
        assert_eq!(mesh.local_cluster_id, ClusterId::new(1));
        assert_eq!(mesh.drain_grace_period, Duration::from_secs(10));
        assert!(EtcdConfig::from_kvstore_opt_flags(&["etcd.config".to_owned()]).is_err());
    }
}
