//! `no-unexpected-packet-drops`: upstream's check that the agents dropped no packet for a
//! reason other than the expected ones (policy denials and the like), read from each agent's
//! datapath drop counters (`cilium-dbg bpf metrics list`, the numbers behind the agent's
//! `cilium_drop_count_total`).
//!
//! Upstream reads the counters once, so it counts every drop since the agents started. With
//! a lab the test takes a snapshot before it deploys anything and counts what its own run
//! added, so drops from bringing the lab up or from earlier experiments do not fail it; with
//! agents named on the command line (nothing deployed) it counts since the agents started,
//! as upstream does.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use datapath::monitor::drop_reason_name;
use serde::Serialize;

use crate::api;

/// Upstream cilium-cli's default expected drop reasons (`defaults.ExpectedDropReasons`): what
/// a healthy datapath drops while policies deny and endpoints come and go.
pub const EXPECTED_DROP_REASONS: [&str; 15] = [
    "Policy denied",
    "Policy denied by denylist",
    "Unsupported L2 protocol",
    "Unsupported L3 protocol",
    "Stale or unroutable IP",
    "Authentication required",
    "Service backend not found",
    "Unsupported protocol for NAT masquerade",
    "Invalid source ip",
    "Unknown L3 target address",
    "Host datapath not ready",
    "Unknown ICMPv4 code",
    "Unknown ICMPv6 code",
    "Forbidden ICMPv6 message",
    "No egress gateway found",
];

/// Upstream's name of drop reason `code`, or the code itself for one upstream does not name.
pub fn reason_name(code: u8) -> String {
    drop_reason_name(code).map_or_else(|| format!("unknown ({code})"), str::to_owned)
}

/// Whether drops for reason `code` are expected during a connectivity test. Reasons upstream
/// does not name are never expected: they mean the datapath took a path nobody planned.
pub fn is_expected(code: u8) -> bool {
    drop_reason_name(code).is_some_and(|name| EXPECTED_DROP_REASONS.contains(&name))
}

/// Dropped packets per reason code of one agent.
pub type DropCounters = BTreeMap<u8, u64>;

/// Sums the drop counters of a `cilium-dbg bpf metrics list -o json` answer per reason
/// (over directions and drop sites); reason 0 counts forwarded packets and is left out.
pub fn parse_counters(json: &[u8]) -> Result<DropCounters, String> {
    let map: api::BpfMap =
        serde_json::from_slice(json).map_err(|e| format!("unexpected metrics answer: {e}"))?;
    let mut counters = DropCounters::new();
    for entry in &map.cache {
        let reason = entry
            .key_data
            .get("reason")
            .and_then(serde_json::Value::as_u64)
            .and_then(|r| u8::try_from(r).ok())
            .ok_or_else(|| format!("metrics entry {:?} has no reason code", entry.key))?;
        let packets = entry
            .value_data
            .get("packets")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| format!("metrics entry {:?} has no packet count", entry.key))?;
        if reason != 0 {
            let sum = counters.entry(reason).or_default();
            *sum = sum.saturating_add(packets);
        }
    }
    Ok(counters)
}

/// Reads the drop counters of the agent behind `socket`; the reason on failure.
pub fn read_counters(bin_dir: &Path, socket: &Path) -> Result<DropCounters, String> {
    let dbg = bin_dir.join("cilium-dbg");
    let out = Command::new(&dbg)
        .env_remove("CILIUM_SOCK")
        .arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .args(["bpf", "metrics", "list", "-o", "json"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", dbg.display()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    parse_counters(&out.stdout)
}

/// Drops of one reason on one agent during the counted interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DropCount {
    /// The node (or the socket, for agents named on the command line).
    pub agent: String,
    pub reason: u8,
    pub reason_name: String,
    pub packets: u64,
    pub expected: bool,
}

/// What the drop check saw (`-o json`: the scenario's `drops`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DropCheck {
    pub agents: Vec<String>,
    /// `test run` (counters compared with a snapshot taken before the run) or `agent start`.
    pub since: &'static str,
    pub drops: Vec<DropCount>,
}

impl DropCheck {
    pub fn unexpected(&self) -> impl Iterator<Item = &DropCount> {
        self.drops.iter().filter(|d| !d.expected)
    }

    /// `3 agents, 12 expected drops (Policy denied 12)` for the pass line.
    pub fn summary(&self) -> String {
        let expected: Vec<String> = self
            .drops
            .iter()
            .filter(|d| d.expected)
            .fold(BTreeMap::<&str, u64>::new(), |mut sums, d| {
                *sums.entry(d.reason_name.as_str()).or_default() += d.packets;
                sums
            })
            .into_iter()
            .map(|(name, packets)| format!("{name} {packets}"))
            .collect();
        let total: u64 = self
            .drops
            .iter()
            .filter(|d| d.expected)
            .map(|d| d.packets)
            .sum();
        let mut text = format!("{} agents, {total} expected drops", self.agents.len());
        if !expected.is_empty() {
            text.push_str(&format!(" ({})", expected.join(", ")));
        }
        text.push_str(&format!(" since {}", self.since));
        text
    }
}

/// The drops of `agent` between `before` (empty: since the agent started) and `after`. A
/// counter that went down belongs to a restarted agent and counts from zero.
pub fn drops_between(agent: &str, before: &DropCounters, after: &DropCounters) -> Vec<DropCount> {
    after
        .iter()
        .filter_map(|(&reason, &now)| {
            let then = before.get(&reason).copied().unwrap_or(0);
            let packets = if now >= then { now - then } else { now };
            (packets > 0).then(|| DropCount {
                agent: agent.to_owned(),
                reason,
                reason_name: reason_name(reason),
                packets,
                expected: is_expected(reason),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_denials_are_expected_and_datapath_failures_are_not() {
        // 133 Policy denied, 181 Policy denied by denylist, 151 Stale or unroutable IP.
        for code in [133, 181, 151, 158] {
            assert!(is_expected(code), "{code} {}", reason_name(code));
        }
        // 155 CT: Map insertion failed, 140 Missed tail call, 169 FIB lookup failed, 160 no
        // tunnel endpoint: each means the datapath lost a packet it should have carried.
        for code in [155, 140, 169, 160, 2] {
            assert!(!is_expected(code), "{code} {}", reason_name(code));
        }
        // A code upstream does not name is never expected.
        assert_eq!(drop_reason_name(250), None);
        assert!(!is_expected(250));
        assert_eq!(reason_name(250), "unknown (250)");
    }

    #[test]
    fn every_expected_reason_is_a_name_the_datapath_can_report_or_upstream_only() {
        let named: Vec<&str> = (0..=u8::MAX).filter_map(drop_reason_name).collect();
        let known = EXPECTED_DROP_REASONS
            .iter()
            .filter(|r| named.contains(r))
            .count();
        // Upstream's list names a few reasons of features this datapath lacks (egress
        // gateway, host datapath readiness); most must be reasons it reports.
        assert!(
            known >= 10,
            "only {known} expected reasons are datapath reasons"
        );
    }

    #[test]
    fn counters_sum_per_reason_and_skip_forwarded_packets() {
        let json = br#"{"path":"/sys/fs/bpf/tc/globals/cilium_metrics","cache":[
            {"key":"a","value":"b","key-data":{"reason":133,"direction":"Ingress"},
             "value-data":{"packets":3,"bytes":180}},
            {"key":"c","value":"d","key-data":{"reason":133,"direction":"Egress"},
             "value-data":{"packets":2,"bytes":120}},
            {"key":"e","value":"f","key-data":{"reason":0,"direction":"Egress"},
             "value-data":{"packets":99,"bytes":9000}},
            {"key":"g","value":"h","key-data":{"reason":155,"direction":"Egress"},
             "value-data":{"packets":1,"bytes":60}}]}"#;
        let counters = parse_counters(json).expect("counters");
        assert_eq!(counters, DropCounters::from([(133, 5), (155, 1)]));
        assert!(parse_counters(b"{}").is_err());
        let no_reason = br#"{"path":"","cache":[
            {"key":"x","value":"y","key-data":{},"value-data":{"packets":1}}]}"#;
        assert!(parse_counters(no_reason).is_err());
    }

    #[test]
    fn only_drops_during_the_run_count_and_unexpected_ones_fail() {
        let before = DropCounters::from([(133, 10), (155, 4)]);
        let after = DropCounters::from([(133, 12), (155, 4), (140, 1)]);
        let drops = drops_between("c1-n1", &before, &after);
        assert_eq!(drops.len(), 2, "{drops:?}");
        let check = DropCheck {
            agents: vec!["c1-n1".to_owned()],
            since: "test run",
            drops,
        };
        let unexpected: Vec<u8> = check.unexpected().map(|d| d.reason).collect();
        assert_eq!(unexpected, vec![140]);
        assert_eq!(
            check.summary(),
            "1 agents, 2 expected drops (Policy denied 2) since test run"
        );
        // A restarted agent's counters start again from zero.
        let restarted = drops_between("c1-n1", &before, &DropCounters::from([(133, 3)]));
        assert_eq!(restarted.first().map(|d| d.packets), Some(3));
        // Without a snapshot everything since the agent started counts.
        assert_eq!(drops_between("x", &DropCounters::new(), &after).len(), 3);
    }
}
