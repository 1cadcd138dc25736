//! Policy repository benchmarks (DESIGN 6), on the state machine alone:
//!
//! 1. full resolution of one endpoint against 3000 rules and 1000 identities (target < 20 ms);
//! 2. a new identity reaching every affected endpoint's entries with 1000 endpoints, i.e.
//!    the selector cache update plus the per-endpoint deltas (target p99 < 50 ms), for an
//!    identity that some rules' peers select and for one that a rule applying to every
//!    endpoint selects.
//!
//! `cargo bench -p actors --bench policy_resolve` runs the full sizes; without `--bench`
//! (as `cargo test --all-targets` runs it) a small smoke run checks that it still works.

use std::time::{Duration, Instant};

use actors::policy::{Effect, EndpointPolicyWanted, PolicyConfig, PolicySource, PolicyState};
use datapath::api::EndpointId;
use model::identity::{ClusterName, NumericIdentity};
use model::labels::{Label, Labels};
use model::policy::{EgressRule, IngressRule, L4Proto, PortProtocol, PortRule, Rule};
use model::selector::LabelSelector;

struct Sizes {
    rules: usize,
    identities: usize,
    endpoints: usize,
    apps: usize,
    iterations: usize,
}

fn selector(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: pairs
            .iter()
            .map(|(k, v)| (format!("k8s:{k}"), (*v).to_owned()))
            .collect(),
        match_expressions: Vec::new(),
    }
}

fn tcp(port: u32) -> Vec<PortRule> {
    vec![PortRule {
        ports: vec![PortProtocol {
            port: port.to_string(),
            end_port: None,
            protocol: Some(L4Proto::Tcp),
        }],
        ..PortRule::default()
    }]
}

/// Rule `r` is the `j`-th rule (`j = r / apps`) of `app-(r % apps)`: it admits
/// `app-(r + 7j + 1)` on port `1000 + j` and lets it reach `app-(r + 3j + 2)` on port
/// `2000 + j`, so that every rule of an app adds entries of its own. One more rule applies
/// to every endpoint and admits monitors.
fn rules(sizes: &Sizes) -> Vec<Rule> {
    let app = |n: usize| format!("app-{}", n % sizes.apps);
    let mut rules: Vec<Rule> = (0..sizes.rules)
        .map(|r| {
            let j = r / sizes.apps;
            Rule {
                endpoint_selector: Some(selector(&[("app", &app(r))])),
                ingress: vec![IngressRule {
                    from_endpoints: vec![selector(&[("app", &app(r + 7 * j + 1))])],
                    to_ports: tcp(1000 + (j % 1000) as u32),
                    ..IngressRule::default()
                }],
                egress: vec![EgressRule {
                    to_endpoints: vec![selector(&[("app", &app(r + 3 * j + 2))])],
                    to_ports: tcp(2000 + (j % 1000) as u32),
                    ..EgressRule::default()
                }],
                labels: vec![Label::k8s("rule", r.to_string())],
                ..Rule::default()
            }
        })
        .collect();
    rules.push(Rule {
        endpoint_selector: Some(LabelSelector::default()),
        ingress: vec![IngressRule {
            from_endpoints: vec![selector(&[("role", "monitor")])],
            to_ports: tcp(9100),
            ..IngressRule::default()
        }],
        labels: vec![Label::k8s("rule", "monitoring")],
        ..Rule::default()
    });
    rules
}

fn pod(app: usize, extra: &[(&str, &str)], sizes: &Sizes) -> Labels {
    let mut labels = vec![("app".to_owned(), format!("app-{}", app % sizes.apps))];
    labels.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    Labels::from_k8s_pod("default", labels, &ClusterName::default()).unwrap_or_default()
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples.get(index).copied().unwrap_or_default()
}

fn report(name: &str, samples: &mut [Duration], target: Option<Duration>) {
    let p50 = percentile(samples, 0.5);
    let p99 = percentile(samples, 0.99);
    let max = samples.iter().max().copied().unwrap_or_default();
    let verdict = match target {
        Some(t) if p99 <= t => format!(" (target {t:?}: met)"),
        Some(t) => format!(" (target {t:?}: MISSED)"),
        None => String::new(),
    };
    println!("{name}: p50 {p50:?}, p99 {p99:?}, max {max:?}{verdict}");
}

fn touched(effects: &[Effect]) -> (usize, usize) {
    effects.iter().fold((0, 0), |(endpoints, keys), e| match e {
        Effect::EndpointPolicy { delta, .. } => (
            endpoints + 1,
            keys + delta.upserted.len() + delta.removed.len(),
        ),
        Effect::CidrIdentities(_) => (endpoints, keys),
    })
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes = if full {
        Sizes {
            rules: 3000,
            identities: 1000,
            endpoints: 1000,
            apps: 100,
            iterations: 200,
        }
    } else {
        Sizes {
            rules: 30,
            identities: 20,
            endpoints: 10,
            apps: 5,
            iterations: 3,
        }
    };

    let mut state = PolicyState::new(PolicyConfig::default());
    let started = Instant::now();
    state.upsert_identities(
        (0..sizes.identities).map(|i| (NumericIdentity::new(1000 + i as u32), pod(i, &[], &sizes))),
    );
    if let Err(error) = state.import(PolicySource::Rules(rules(&sizes))) {
        panic!("benchmark rules do not import: {error}");
    }
    println!(
        "setup: {} rules and {} identities imported in {:?}",
        sizes.rules + 1,
        sizes.identities,
        started.elapsed()
    );

    // 1. Full resolution of one new endpoint.
    let mut samples = Vec::new();
    let mut entries = 0;
    for i in 0..sizes.iterations {
        let endpoint = EndpointId::new(60000);
        let wanted = EndpointPolicyWanted {
            endpoint,
            identity: NumericIdentity::new(1000 + (i % sizes.identities) as u32),
            labels: pod(i, &[], &sizes),
            named_ports: Vec::new(),
        };
        let start = Instant::now();
        let effects = state.upsert_endpoint(wanted);
        samples.push(start.elapsed());
        entries = state.entries(endpoint).map_or(0, |e| e.len());
        assert_eq!(touched(&effects).0, 1);
        state.remove_endpoint(endpoint);
    }
    report(
        &format!(
            "full resolve of one endpoint ({} rules x {} identities, {entries} entries)",
            sizes.rules + 1,
            sizes.identities
        ),
        &mut samples,
        Some(Duration::from_millis(20)),
    );

    // 2. A new identity with 1000 endpoints.
    let started = Instant::now();
    for e in 0..sizes.endpoints {
        state.upsert_endpoint(EndpointPolicyWanted {
            endpoint: EndpointId::new(1 + e as u16),
            identity: NumericIdentity::new(1000 + (e % sizes.identities) as u32),
            labels: pod(e, &[], &sizes),
            named_ports: Vec::new(),
        });
    }
    println!(
        "setup: {} endpoints resolved in {:?}",
        sizes.endpoints,
        started.elapsed()
    );
    for (case, extra) in [
        ("peer of some rules", &[][..]),
        (
            "peer of a rule on every endpoint",
            &[("role", "monitor")][..],
        ),
    ] {
        let mut add = Vec::new();
        let mut remove = Vec::new();
        let mut clone = Vec::new();
        let mut reach = (0, 0);
        for i in 0..sizes.iterations {
            let identity = NumericIdentity::new(50_000);
            let labels = pod(i, extra, &sizes);
            let start = Instant::now();
            let effects = state.upsert_identities([(identity, labels)]);
            add.push(start.elapsed());
            reach = touched(&effects);
            // What the actor does next: copy each affected endpoint's full map for the
            // Datapath actor. Not part of the target, reported for scale.
            let start = Instant::now();
            let copies: usize = effects
                .iter()
                .filter_map(|e| match e {
                    Effect::EndpointPolicy { endpoint, .. } => state.entries(*endpoint),
                    Effect::CidrIdentities(_) => None,
                })
                .map(|entries| entries.clone().len())
                .sum();
            clone.push(start.elapsed());
            assert!(copies >= reach.0);
            let start = Instant::now();
            state.remove_identities([identity]);
            remove.push(start.elapsed());
        }
        let name = format!(
            "new identity ({case}) -> {} endpoints, {} keys, of {} endpoints",
            reach.0, reach.1, sizes.endpoints
        );
        report(&name, &mut add, Some(Duration::from_millis(50)));
        report(
            "  same identity removed",
            &mut remove,
            Some(Duration::from_millis(50)),
        );
        report("  full-map copies for the datapath", &mut clone, None);
    }
}
