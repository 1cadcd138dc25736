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
//!
//! Which reasons count as expected is upstream's list unless `--expected-drop-reasons` edits
//! or replaces it ([`ExpectedDropReasons`]); unlike upstream, which filters by whatever text
//! it is given, a name the datapath's reason table lacks is refused, so a typo cannot make a
//! real drop pass or an expected one fail.

use std::collections::{BTreeMap, BTreeSet};
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

/// The drop reasons the check accepts: upstream's defaults, or what `--expected-drop-reasons`
/// made of them. Only names the datapath's reason table knows get in, so a misspelt reason
/// cannot silently leave a real drop unexpected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedDropReasons(BTreeSet<&'static str>);

/// A `--expected-drop-reasons` entry that names no drop reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--expected-drop-reasons: {name:?} is not a drop reason; the known reasons are: {known}")]
pub struct UnknownDropReason {
    pub name: String,
    /// Every name the datapath reports, comma-separated.
    pub known: String,
}

impl Default for ExpectedDropReasons {
    fn default() -> Self {
        ExpectedDropReasons(
            EXPECTED_DROP_REASONS
                .iter()
                .filter_map(|name| known_reason(name))
                .collect(),
        )
    }
}

impl ExpectedDropReasons {
    /// Upstream's `--expected-drop-reasons` semantics (its `ComputeFailureExceptions`): the
    /// entries are applied in order; a plain name is expected, `+NAME` adds to and `-NAME`
    /// removes from the defaults, which join the set at the first signed entry. So plain names
    /// alone replace the defaults and an empty list expects nothing. Entries may also be
    /// comma-separated lists; blanks around names and empty entries are ignored.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<ExpectedDropReasons, UnknownDropReason> {
        let mut set = BTreeSet::new();
        let mut defaults_in = false;
        for entry in entries
            .iter()
            .flat_map(|e| e.as_ref().split(','))
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let (sign, name) = match entry.strip_prefix('+') {
                Some(name) => (Some(true), name),
                None => match entry.strip_prefix('-') {
                    Some(name) => (Some(false), name),
                    None => (None, entry),
                },
            };
            let name = known_reason(name.trim()).ok_or_else(|| UnknownDropReason {
                name: name.trim().to_owned(),
                known: known_reasons().join(", "),
            })?;
            if sign.is_some() && !defaults_in {
                set.extend(ExpectedDropReasons::default().0);
                defaults_in = true;
            }
            if sign == Some(false) {
                set.remove(name);
            } else {
                set.insert(name);
            }
        }
        Ok(ExpectedDropReasons(set))
    }

    /// Whether drops for reason `code` are expected. Reasons upstream does not name never
    /// are: they mean the datapath took a path nobody planned.
    pub fn contains(&self, code: u8) -> bool {
        drop_reason_name(code).is_some_and(|name| self.0.contains(name))
    }

    /// The expected reasons' names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        self.0.iter().copied().collect()
    }
}

/// The table's spelling of a drop reason's name.
fn known_reason(name: &str) -> Option<&'static str> {
    (1..=u8::MAX)
        .filter_map(drop_reason_name)
        .find(|known| *known == name)
}

/// Every drop reason name the datapath reports (code 0 is forwarding, not a drop), sorted.
fn known_reasons() -> Vec<&'static str> {
    let names: BTreeSet<&'static str> = (1..=u8::MAX).filter_map(drop_reason_name).collect();
    names.into_iter().collect()
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
    /// The reasons counted as expected (`--expected-drop-reasons`, upstream's defaults
    /// without it), sorted.
    pub expected_reasons: Vec<&'static str>,
    pub drops: Vec<DropCount>,
}

impl DropCheck {
    pub fn unexpected(&self) -> impl Iterator<Item = &DropCount> {
        self.drops.iter().filter(|d| !d.expected)
    }

    /// `3 agents, 12 expected drops (Policy denied 12) since test run` for the pass line,
    /// followed by how `--expected-drop-reasons` changed the defaults, if it did
    /// (`; expected reasons: +CT: Unknown L4 protocol, -Policy denied`).
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
        let defaults = ExpectedDropReasons::default().names();
        let changes: Vec<String> = self
            .expected_reasons
            .iter()
            .filter(|r| !defaults.contains(r))
            .map(|r| format!("+{r}"))
            .chain(
                defaults
                    .iter()
                    .filter(|r| !self.expected_reasons.contains(r))
                    .map(|r| format!("-{r}")),
            )
            .collect();
        if !changes.is_empty() {
            text.push_str(&format!("; expected reasons: {}", changes.join(", ")));
        }
        text
    }
}

/// The drops of `agent` between `before` (empty: since the agent started) and `after`, each
/// marked expected or not. A counter that went down belongs to a restarted agent and counts
/// from zero.
pub fn drops_between(
    agent: &str,
    before: &DropCounters,
    after: &DropCounters,
    expected: &ExpectedDropReasons,
) -> Vec<DropCount> {
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
                expected: expected.contains(reason),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(entries: &[&str]) -> Vec<&'static str> {
        ExpectedDropReasons::parse(entries)
            .unwrap_or_else(|e| panic!("{entries:?}: {e}"))
            .names()
    }

    fn defaults_and(extra: &[&'static str], without: &[&str]) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = EXPECTED_DROP_REASONS
            .iter()
            .copied()
            .chain(extra.iter().copied())
            .filter(|n| !without.contains(n))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    #[test]
    fn policy_denials_are_expected_and_datapath_failures_are_not() {
        let expected = ExpectedDropReasons::default();
        // 133 Policy denied, 181 Policy denied by denylist, 151 Stale or unroutable IP.
        for code in [133, 181, 151, 158] {
            assert!(expected.contains(code), "{code} {}", reason_name(code));
        }
        // 155 CT: Map insertion failed, 140 Missed tail call, 169 FIB lookup failed, 160 no
        // tunnel endpoint: each means the datapath lost a packet it should have carried.
        for code in [155, 140, 169, 160, 2, 137] {
            assert!(!expected.contains(code), "{code} {}", reason_name(code));
        }
        // A code upstream does not name is never expected.
        assert_eq!(drop_reason_name(250), None);
        assert!(!expected.contains(250));
        assert_eq!(reason_name(250), "unknown (250)");
    }

    #[test]
    fn every_default_reason_is_a_name_the_datapath_reports() {
        for name in EXPECTED_DROP_REASONS {
            assert_eq!(known_reason(name), Some(name));
        }
        assert_eq!(
            ExpectedDropReasons::default().names(),
            defaults_and(&[], &[])
        );
    }

    #[test]
    fn signed_reasons_edit_the_defaults_and_plain_ones_replace_them() {
        // Upstream's cases: nothing given expects nothing; + adds, - removes, in order.
        assert!(parse(&[]).is_empty());
        assert!(parse(&["", " , "]).is_empty());
        let unknown_l4 = "CT: Unknown L4 protocol";
        assert_eq!(
            parse(&["+CT: Unknown L4 protocol"]),
            defaults_and(&[unknown_l4], &[])
        );
        assert_eq!(
            parse(&["-Policy denied"]),
            defaults_and(&[], &["Policy denied"])
        );
        assert_eq!(
            parse(&["+CT: Unknown L4 protocol", "-CT: Unknown L4 protocol"]),
            defaults_and(&[], &[])
        );
        assert_eq!(
            parse(&["-Policy denied", "+Policy denied"]),
            defaults_and(&[], &[])
        );
        // Plain names replace the defaults...
        assert_eq!(
            parse(&["Policy denied", "Missed tail call"]),
            vec!["Missed tail call", "Policy denied"]
        );
        // ...unless a signed entry brings the defaults in, wherever it stands.
        assert_eq!(
            parse(&["Missed tail call", "+CT: Unknown L4 protocol"]),
            defaults_and(&["Missed tail call", unknown_l4], &[])
        );
        // One flag value may hold a comma-separated list, with blanks around the names.
        assert_eq!(
            parse(&[" +CT: Unknown L4 protocol , -Policy denied"]),
            defaults_and(&[unknown_l4], &["Policy denied"])
        );
        let replaced = ExpectedDropReasons::parse(&[unknown_l4]).expect("parse");
        assert!(replaced.contains(137));
        assert!(!replaced.contains(133));
    }

    #[test]
    fn an_unknown_reason_is_an_error_naming_it_and_the_known_ones() {
        for entries in [
            &["+CT: unknown L4 protocol"][..],
            &["Policy denied", "-No such reason"],
            &["+"],
        ] {
            let err = ExpectedDropReasons::parse(entries).expect_err("unknown reason");
            let text = err.to_string();
            let name = entries
                .last()
                .map(|e| e.trim_start_matches(['+', '-']))
                .unwrap_or_default();
            assert_eq!(err.name, name);
            assert!(text.contains(&format!("{name:?}")), "{text}");
            assert!(text.contains("CT: Unknown L4 protocol"), "{text}");
            assert!(text.contains("Policy denied by denylist"), "{text}");
            // Success (code 0) is forwarding, not a drop reason.
            assert!(!err.known.contains("Success"), "{text}");
        }
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
        let defaults = ExpectedDropReasons::default();
        let drops = drops_between("c1-n1", &before, &after, &defaults);
        assert_eq!(drops.len(), 2, "{drops:?}");
        let mut check = DropCheck {
            agents: vec!["c1-n1".to_owned()],
            since: "test run",
            expected_reasons: defaults.names(),
            drops,
        };
        let unexpected: Vec<u8> = check.unexpected().map(|d| d.reason).collect();
        assert_eq!(unexpected, vec![140]);
        assert_eq!(
            check.summary(),
            "1 agents, 2 expected drops (Policy denied 2) since test run"
        );
        // Expecting the missed tail call (and no longer policy denials) turns the tables.
        let edited =
            ExpectedDropReasons::parse(&["+Missed tail call", "-Policy denied"]).expect("parse");
        check.drops = drops_between("c1-n1", &before, &after, &edited);
        check.expected_reasons = edited.names();
        let unexpected: Vec<u8> = check.unexpected().map(|d| d.reason).collect();
        assert_eq!(unexpected, vec![133]);
        assert_eq!(
            check.summary(),
            "1 agents, 1 expected drops (Missed tail call 1) since test run; expected \
             reasons: +Missed tail call, -Policy denied"
        );
        // A restarted agent's counters start again from zero.
        let restarted = drops_between("c1-n1", &before, &DropCounters::from([(133, 3)]), &defaults);
        assert_eq!(restarted.first().map(|d| d.packets), Some(3));
        // Without a snapshot everything since the agent started counts.
        assert_eq!(
            drops_between("x", &DropCounters::new(), &after, &defaults).len(),
            3
        );
    }
}
