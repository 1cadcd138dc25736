//! The operator's Prometheus metrics (DESIGN 4.10, served on `:9963` by the binary).
//!
//! [`OperatorMetrics`] owns one registry and a handle on every metric in it; the operator
//! updates the handles as it works (they are shared, cheap to clone), and a scrape renders the
//! registry with [`OperatorMetrics::render`]. Each operator has its own instance, so two
//! operators in one process (tests, the simulation) never mix their numbers.
//!
//! Names follow upstream's operator where it has the metric:
//! - `cilium_operator_identity_gc_entries{status="alive"|"deleted",identity_type="kvstore"}`
//!   (gauge): what the last identity GC run kept and deleted.
//! - `cilium_operator_identity_gc_runs{outcome="success"|"fail",identity_type="kvstore"}`
//!   (gauge, as upstream, counting runs).
//! - `cilium_operator_identity_gc_latency{outcome,identity_type}` (gauge): seconds the last
//!   run took.
//!
//! (ext) Upstream has no metric for these duties of a kvstore-only operator, so the names are
//! ours, in upstream's style:
//! - `cilium_operator_is_leader` (gauge): 1 while this operator holds the leader lock.
//! - `cilium_operator_ipam_pod_cidrs{type="allocated"|"available"}` (gauge): the cluster
//!   pool's per-node CIDRs. Only the leader knows the pool, so a standby has no such series.
//!   (Upstream's `ipam_ips` counts addresses of cloud IPAM modes, not cluster-pool CIDRs.)
//! - `cilium_operator_nodes_gc_deletions_total{type="pod_cidr"|"ipcache_entry"}` (counter):
//!   what node GC removed after vanished nodes.
//! - `cilium_operator_kvstore_heartbeat_writes_total{outcome="success"|"fail"}` (counter).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use kvstore::allocator::GcReport;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::ipam::CidrPool;

/// The content type of [`OperatorMetrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Label values of upstream's `outcome` label.
const SUCCESS: &str = "success";
const FAIL: &str = "fail";
/// Upstream labels identity GC metrics with the kind of identity collected; ours are always
/// kvstore identities.
const IDENTITY_TYPE: (&str, &str) = ("identity_type", "kvstore");

type OneLabel = [(&'static str, &'static str); 1];
type TwoLabels = [(&'static str, &'static str); 2];

/// Rendering the registry failed.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("encoding the operator metrics failed")]
    Encode(#[from] std::fmt::Error),
}

/// What node GC deleted after a vanished node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodeGcDeletion {
    /// The node's pod CIDR allocation.
    PodCidr,
    /// An unleased ipcache entry naming the node's IP as host.
    IpcacheEntry,
}

impl NodeGcDeletion {
    fn label(self) -> OneLabel {
        let value = match self {
            NodeGcDeletion::PodCidr => "pod_cidr",
            NodeGcDeletion::IpcacheEntry => "ipcache_entry",
        };
        [("type", value)]
    }
}

/// The operator's metrics: a registry and handles on what is in it. Clones share the metrics.
#[derive(Debug, Clone)]
pub struct OperatorMetrics {
    registry: Arc<Registry>,
    is_leader: Gauge,
    identity_gc_entries: Family<TwoLabels, Gauge>,
    identity_gc_runs: Family<TwoLabels, Gauge>,
    identity_gc_latency: Family<TwoLabels, Gauge<f64, AtomicU64>>,
    pod_cidrs: Family<OneLabel, Gauge>,
    nodes_gc_deletions: Family<OneLabel, Counter>,
    heartbeat_writes: Family<OneLabel, Counter>,
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        OperatorMetrics::new()
    }
}

impl OperatorMetrics {
    /// A registry with every metric at zero. Series whose label values are known up front
    /// exist from the start, so a dashboard sees 0 rather than nothing.
    pub fn new() -> OperatorMetrics {
        let is_leader = Gauge::default();
        let identity_gc_entries = Family::<TwoLabels, Gauge>::default();
        let identity_gc_runs = Family::<TwoLabels, Gauge>::default();
        let identity_gc_latency = Family::<TwoLabels, Gauge<f64, AtomicU64>>::default();
        let pod_cidrs = Family::<OneLabel, Gauge>::default();
        let nodes_gc_deletions = Family::<OneLabel, Counter>::default();
        let heartbeat_writes = Family::<OneLabel, Counter>::default();

        for outcome in [SUCCESS, FAIL] {
            identity_gc_runs
                .get_or_create(&[("outcome", outcome), IDENTITY_TYPE])
                .set(0);
            heartbeat_writes
                .get_or_create(&[("outcome", outcome)])
                .inc_by(0);
        }
        for deletion in [NodeGcDeletion::PodCidr, NodeGcDeletion::IpcacheEntry] {
            nodes_gc_deletions
                .get_or_create(&deletion.label())
                .inc_by(0);
        }

        let mut registry = Registry::default();
        registry.register(
            "cilium_operator_is_leader",
            "1 while this operator holds the leader lock and acts, 0 while it stands by",
            is_leader.clone(),
        );
        registry.register(
            "cilium_operator_identity_gc_entries",
            "The number of alive and deleted identities at the end of a garbage collector run",
            identity_gc_entries.clone(),
        );
        registry.register(
            "cilium_operator_identity_gc_runs",
            "The number of times identity garbage collector has run",
            identity_gc_runs.clone(),
        );
        registry.register(
            "cilium_operator_identity_gc_latency",
            "Duration of the last identity garbage collector run in seconds",
            identity_gc_latency.clone(),
        );
        registry.register(
            "cilium_operator_ipam_pod_cidrs",
            "Per-node pod CIDRs of the cluster pool, allocated and still available",
            pod_cidrs.clone(),
        );
        registry.register(
            "cilium_operator_nodes_gc_deletions",
            "Objects deleted by node garbage collection after a node vanished",
            nodes_gc_deletions.clone(),
        );
        registry.register(
            "cilium_operator_kvstore_heartbeat_writes",
            "Writes of the kvstore heartbeat key, by outcome",
            heartbeat_writes.clone(),
        );

        OperatorMetrics {
            registry: Arc::new(registry),
            is_leader,
            identity_gc_entries,
            identity_gc_runs,
            identity_gc_latency,
            pod_cidrs,
            nodes_gc_deletions,
            heartbeat_writes,
        }
    }

    /// The OpenMetrics text of every metric ([`CONTENT_TYPE`]).
    pub fn render(&self) -> Result<String, MetricsError> {
        let mut text = String::new();
        encode(&mut text, &self.registry)?;
        Ok(text)
    }

    pub(crate) fn set_leader(&self, leading: bool) {
        self.is_leader.set(i64::from(leading));
    }

    /// Records a finished identity GC run. Kept in-range keys (in use, re-used while being
    /// checked, or corrupt) count as alive, as upstream counts what a run leaves behind.
    pub(crate) fn identity_gc_succeeded(&self, report: &GcReport, took: Duration) {
        let alive = report.in_use + report.raced + report.corrupt.len();
        self.identity_gc_entries
            .get_or_create(&[("status", "alive"), IDENTITY_TYPE])
            .set(saturating_i64(alive));
        self.identity_gc_entries
            .get_or_create(&[("status", "deleted"), IDENTITY_TYPE])
            .set(saturating_i64(report.deleted));
        self.record_identity_gc_run(SUCCESS, took);
    }

    pub(crate) fn identity_gc_failed(&self, took: Duration) {
        self.record_identity_gc_run(FAIL, took);
    }

    fn record_identity_gc_run(&self, outcome: &'static str, took: Duration) {
        let labels = [("outcome", outcome), IDENTITY_TYPE];
        self.identity_gc_runs.get_or_create(&labels).inc();
        self.identity_gc_latency
            .get_or_create(&labels)
            .set(took.as_secs_f64());
    }

    /// Publishes the leader's view of the cluster pool.
    pub(crate) fn set_pod_cidrs(&self, pool: &CidrPool) {
        self.pod_cidrs
            .get_or_create(&[("type", "allocated")])
            .set(saturating_i64(pool.allocated_cidrs()));
        self.pod_cidrs
            .get_or_create(&[("type", "available")])
            .set(i64::try_from(pool.free_cidrs()).unwrap_or(i64::MAX));
    }

    /// Drops the pool series when leadership ends: a standby does not know the pool, and a
    /// stale copy of the last term's numbers would read as current.
    pub(crate) fn clear_pod_cidrs(&self) {
        self.pod_cidrs.clear();
    }

    pub(crate) fn node_gc_deleted(&self, deletion: NodeGcDeletion, count: u64) {
        self.nodes_gc_deletions
            .get_or_create(&deletion.label())
            .inc_by(count);
    }

    pub(crate) fn heartbeat_written(&self, ok: bool) {
        let outcome = if ok { SUCCESS } else { FAIL };
        self.heartbeat_writes
            .get_or_create(&[("outcome", outcome)])
            .inc();
    }
}

fn saturating_i64(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use kvstore::allocator::CorruptMasterKey;

    use super::*;
    use crate::nodes::NodeName;

    /// The value of the series `series` (name and labels exactly as rendered).
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn fresh_registry_has_zeroed_known_series() {
        let text = OperatorMetrics::new().render().unwrap();
        assert_eq!(value(&text, "cilium_operator_is_leader"), Some(0.0));
        assert_eq!(
            value(
                &text,
                r#"cilium_operator_identity_gc_runs{outcome="success",identity_type="kvstore"}"#
            ),
            Some(0.0)
        );
        assert_eq!(
            value(
                &text,
                r#"cilium_operator_kvstore_heartbeat_writes_total{outcome="fail"}"#
            ),
            Some(0.0)
        );
        assert_eq!(
            value(
                &text,
                r#"cilium_operator_nodes_gc_deletions_total{type="pod_cidr"}"#
            ),
            Some(0.0)
        );
        // Nothing is known about the pool or GC results before a run.
        assert!(!text.contains("cilium_operator_ipam_pod_cidrs{"), "{text}");
        assert!(
            !text.contains("cilium_operator_identity_gc_entries{"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn updates_show_in_the_rendered_text() {
        let metrics = OperatorMetrics::new();
        let shared = metrics.clone();
        shared.set_leader(true);
        shared.identity_gc_succeeded(
            &GcReport {
                scanned: 7,
                in_use: 3,
                deleted: 2,
                raced: 1,
                out_of_range: 0,
                corrupt: vec![CorruptMasterKey {
                    key: "k".to_owned(),
                    message: "bad".to_owned(),
                }],
            },
            Duration::from_millis(1500),
        );
        shared.identity_gc_failed(Duration::from_secs(2));
        shared.identity_gc_failed(Duration::from_secs(3));
        let mut pool = CidrPool::new("10.0.0.0/22".parse().unwrap(), 24).unwrap();
        pool.allocate(&NodeName::new("a")).unwrap();
        shared.set_pod_cidrs(&pool);
        shared.node_gc_deleted(NodeGcDeletion::IpcacheEntry, 4);
        shared.heartbeat_written(true);
        shared.heartbeat_written(true);
        shared.heartbeat_written(false);

        let text = metrics.render().unwrap();
        let expect = [
            ("cilium_operator_is_leader", 1.0),
            (
                r#"cilium_operator_identity_gc_entries{status="alive",identity_type="kvstore"}"#,
                5.0,
            ),
            (
                r#"cilium_operator_identity_gc_entries{status="deleted",identity_type="kvstore"}"#,
                2.0,
            ),
            (
                r#"cilium_operator_identity_gc_runs{outcome="success",identity_type="kvstore"}"#,
                1.0,
            ),
            (
                r#"cilium_operator_identity_gc_runs{outcome="fail",identity_type="kvstore"}"#,
                2.0,
            ),
            (
                r#"cilium_operator_identity_gc_latency{outcome="success",identity_type="kvstore"}"#,
                1.5,
            ),
            (
                r#"cilium_operator_identity_gc_latency{outcome="fail",identity_type="kvstore"}"#,
                3.0,
            ),
            (r#"cilium_operator_ipam_pod_cidrs{type="allocated"}"#, 1.0),
            (r#"cilium_operator_ipam_pod_cidrs{type="available"}"#, 3.0),
            (
                r#"cilium_operator_nodes_gc_deletions_total{type="ipcache_entry"}"#,
                4.0,
            ),
            (
                r#"cilium_operator_kvstore_heartbeat_writes_total{outcome="success"}"#,
                2.0,
            ),
            (
                r#"cilium_operator_kvstore_heartbeat_writes_total{outcome="fail"}"#,
                1.0,
            ),
        ];
        for (series, expected) in expect {
            assert_eq!(value(&text, series), Some(expected), "{series} in\n{text}");
        }

        metrics.clear_pod_cidrs();
        metrics.set_leader(false);
        let text = metrics.render().unwrap();
        assert!(!text.contains("cilium_operator_ipam_pod_cidrs{"), "{text}");
        assert_eq!(value(&text, "cilium_operator_is_leader"), Some(0.0));
    }
}
