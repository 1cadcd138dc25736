//! What a run reports: convergence after each step, work done (kvstore operations, datapath
//! writes, pods, policies), memory, the final hash of every datapath, and the first violation
//! with the seed that replays it.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::oracle::Violation;

/// p50/p99/max of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(samples: &[Duration]) -> Self {
        let mut sorted: Vec<Duration> = samples.to_vec();
        sorted.sort_unstable();
        let at = |q: f64| -> f64 {
            if sorted.is_empty() {
                return 0.0;
            }
            // Nearest rank: the smallest sample with at least q of the samples at or below it.
            let rank = (q * sorted.len() as f64).ceil() as usize;
            let index = rank.clamp(1, sorted.len()) - 1;
            sorted.get(index).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        Percentiles {
            count: sorted.len(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

impl fmt::Display for Percentiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (n={})",
            self.p50_ms, self.p99_ms, self.max_ms, self.count
        )
    }
}

/// One step of the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepReport {
    pub name: String,
    /// Virtual time from the start of the step to the last change before quiescence.
    pub converged_ms: f64,
    /// Virtual time when the step ended, since the start of the run.
    pub at_ms: f64,
    pub violations: usize,
}

/// Pods the harness asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PodCounts {
    pub created: u64,
    pub create_failed: u64,
    pub deleted: u64,
    pub delete_failed: u64,
    /// Pods that went away with a lost node.
    pub lost: u64,
    pub live: u64,
}

/// The first failing check of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    pub step: String,
    pub seed: u64,
    /// The first violations found (at most [`Failure::SHOWN`]).
    pub violations: Vec<Violation>,
    pub total: usize,
}

impl Failure {
    pub const SHOWN: usize = 20;
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "oracle failed after step '{}' with seed {} ({} violations); replay with --seed {}",
            self.step, self.seed, self.total, self.seed
        )?;
        for violation in &self.violations {
            writeln!(f, "  {violation}")?;
        }
        Ok(())
    }
}

/// Everything a run reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub clusters: usize,
    /// Nodes alive at the end, over every cluster.
    pub nodes: usize,
    pub steps: Vec<StepReport>,
    /// Over every step.
    pub convergence: Percentiles,
    /// From the creation request to the endpoint's policy being realized, per pod.
    pub endpoint_create: Percentiles,
    pub pods: PodCounts,
    pub policy_writes: u64,
    pub policy_write_failures: u64,
    pub service_writes: u64,
    pub service_write_failures: u64,
    pub kvstore_ops: u64,
    pub kvstore_ops_per_node_per_sec: f64,
    /// The most kvstore operations one live node made.
    pub kvstore_ops_busiest_node: u64,
    pub datapath_writes: u64,
    /// Watch events the nodes' actors processed (part of `kvstore_ops`).
    pub watch_events: u64,
    /// Watch events lost to `watch-event-loss` faults.
    pub watch_events_dropped: u64,
    pub virtual_secs: f64,
    /// The run went on the real clock (`--kvstore etcd`): every time above is real time.
    pub real_time: bool,
    pub wall_secs: f64,
    /// Peak resident memory of the process (`VmHWM`), if known.
    pub peak_rss_kib: Option<u64>,
    /// Resident memory at the end of the run (`VmRSS`), if known.
    pub final_rss_kib: Option<u64>,
    pub peak_rss_per_node_kib: Option<u64>,
    /// SHA-256 over every live node's datapath maps: the same seed gives the same hash.
    pub final_hash: String,
    pub failure: Option<Failure>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let clock = if self.real_time { "real" } else { "virtual" };
        writeln!(
            f,
            "scenario {} seed {}: {} clusters, {} nodes",
            self.scenario, self.seed, self.clusters, self.nodes
        )?;
        for step in &self.steps {
            writeln!(
                f,
                "  {:<48} converged after {:>9.0} ms ({clock} t={:.1}s){}",
                step.name,
                step.converged_ms,
                step.at_ms / 1000.0,
                if step.violations > 0 {
                    format!(", {} violations", step.violations)
                } else {
                    String::new()
                }
            )?;
        }
        writeln!(f, "convergence per step: {}", self.convergence)?;
        writeln!(f, "endpoint creation:    {}", self.endpoint_create)?;
        let p = &self.pods;
        writeln!(
            f,
            "pods: {} created ({} failed), {} deleted ({} failed), {} lost with nodes, {} live",
            p.created, p.create_failed, p.deleted, p.delete_failed, p.lost, p.live
        )?;
        writeln!(
            f,
            "policy writes: {} ({} failed); service writes: {} ({} failed)",
            self.policy_writes,
            self.policy_write_failures,
            self.service_writes,
            self.service_write_failures
        )?;
        writeln!(
            f,
            "kvstore ops: {} ({:.2} per node per {clock} second, busiest node {}); datapath \
             writes: {}",
            self.kvstore_ops,
            self.kvstore_ops_per_node_per_sec,
            self.kvstore_ops_busiest_node,
            self.datapath_writes
        )?;
        writeln!(
            f,
            "watch events processed: {} ({} lost to faults)",
            self.watch_events, self.watch_events_dropped
        )?;
        writeln!(
            f,
            "{clock} time {:.1} s, wall time {:.2} s, peak RSS {} ({} per node), RSS at the end {}",
            self.virtual_secs,
            self.wall_secs,
            kib(self.peak_rss_kib),
            kib(self.peak_rss_per_node_kib),
            kib(self.final_rss_kib)
        )?;
        writeln!(f, "final hash {}", self.final_hash)?;
        match &self.failure {
            Some(failure) => write!(f, "FAILED: {failure}"),
            None => writeln!(f, "oracle: every check passed"),
        }
    }
}

fn kib(value: Option<u64>) -> String {
    value.map_or_else(
        || "unknown".to_owned(),
        |kib| format!("{:.1} MiB", kib as f64 / 1024.0),
    )
}

/// The process's peak resident set size (Linux `VmHWM`), in KiB.
pub fn peak_rss_kib() -> Option<u64> {
    proc_status_kib("VmHWM:")
}

/// The process's resident set size now (Linux `VmRSS`), in KiB.
pub fn rss_kib() -> Option<u64> {
    proc_status_kib("VmRSS:")
}

fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let p = Percentiles::of(&samples);
        assert_eq!(p.count, 100);
        assert_eq!(p.p50_ms, 50.0);
        assert_eq!(p.p99_ms, 99.0);
        assert_eq!(p.max_ms, 100.0);
        let one = Percentiles::of(&[Duration::from_millis(7)]);
        assert_eq!((one.p50_ms, one.p99_ms, one.max_ms), (7.0, 7.0, 7.0));
        assert_eq!(Percentiles::of(&[]), Percentiles::default());
    }

    #[test]
    fn a_failure_names_the_seed_to_replay() {
        let failure = Failure {
            step: "setup".to_owned(),
            seed: 99,
            violations: vec![Violation {
                node: Some("cluster-1-node-0".to_owned()),
                what: "ipcache lacks 10.0.0.5".to_owned(),
            }],
            total: 1,
        };
        let text = failure.to_string();
        assert!(text.contains("replay with --seed 99"), "{text}");
        assert!(
            text.contains("cluster-1-node-0: ipcache lacks 10.0.0.5"),
            "{text}"
        );
    }
}
