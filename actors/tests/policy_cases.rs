//! Data-driven policy cases: policy documents, identities and endpoints in
//! (`testdata/policy/<case>.yaml`), the resolved policy-map entries of every endpoint out
//! (`testdata/policy/<case>.expected`, checked with expect-test; `UPDATE_EXPECT=1` rewrites
//! them, after which every change must be reviewed by hand).
//!
//! Every case runs twice, in two orders: identities, rules, endpoints (a full resolution)
//! and endpoints, rules, identities (everything arrives incrementally). Both must give the
//! same entries.
//!
//! The second half imports every upstream example policy that this project supports
//! (`../shared/upstream-policies`) and resolves endpoints that its rules select.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use actors::policy::{
    EndpointPolicyWanted, EnforcementMode, NamedPort, PolicyConfig, PolicySource, PolicyState,
};
use datapath::api::{EndpointId, Protocol};
use expect_test::expect_file;
use model::identity::{ClusterName, NumericIdentity};
use model::labels::{Label, Labels};
use model::policy::{PolicyDocument, parse_documents, parse_documents_lenient};
use model::selector::{LabelSelector, SelectorKey, SelectorOperator};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// What the case shows.
    description: String,
    #[serde(default)]
    config: CaseConfig,
    #[serde(default)]
    identities: Vec<CaseIdentity>,
    endpoints: Vec<CaseEndpoint>,
    policy: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseConfig {
    enforcement: Option<String>,
    cluster: Option<String>,
    allow_localhost: Option<bool>,
}

/// An identity: a pod (`pod` labels, optional `namespace` and `cluster`), a CIDR identity
/// (`cidr`), or raw `labels`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseIdentity {
    id: u32,
    pod: Option<BTreeMap<String, String>>,
    namespace: Option<String>,
    cluster: Option<String>,
    cidr: Option<String>,
    labels: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseEndpoint {
    id: u16,
    /// One of the case's identities; the endpoint has its labels.
    identity: u32,
    #[serde(default)]
    named_ports: Vec<CasePort>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CasePort {
    name: String,
    port: u16,
    protocol: String,
}

fn identity_labels(identity: &CaseIdentity) -> Labels {
    if let Some(pod) = &identity.pod {
        let cluster = identity
            .cluster
            .as_deref()
            .map_or_else(ClusterName::default, |c| ClusterName::new(c).unwrap());
        let namespace = identity.namespace.as_deref().unwrap_or("default");
        return Labels::from_k8s_pod(namespace, pod.clone(), &cluster).unwrap();
    }
    if let Some(cidr) = &identity.cidr {
        return Labels::for_cidr(cidr.parse().unwrap(), false);
    }
    identity
        .labels
        .iter()
        .flatten()
        .map(|l| Label::parse(l).unwrap())
        .collect()
}

fn protocol(name: &str) -> Protocol {
    match name {
        "TCP" => Protocol::TCP,
        "UDP" => Protocol::UDP,
        "SCTP" => Protocol::SCTP,
        other => panic!("unknown protocol {other:?} in a case"),
    }
}

fn config(case: &Case) -> PolicyConfig {
    PolicyConfig {
        enforcement: case
            .config
            .enforcement
            .as_deref()
            .map_or(EnforcementMode::Default, |m| m.parse().unwrap()),
        cluster_name: case
            .config
            .cluster
            .as_deref()
            .map_or_else(ClusterName::default, |c| ClusterName::new(c).unwrap()),
        allow_localhost: case.config.allow_localhost.unwrap_or(true),
        dual_stack: false,
    }
}

/// Runs the case in one order and renders every endpoint's entries.
fn run(case: &Case, documents: &[PolicyDocument], incremental: bool) -> String {
    let mut state = PolicyState::new(config(case));
    let identities: Vec<(NumericIdentity, Labels)> = case
        .identities
        .iter()
        .map(|i| (NumericIdentity::new(i.id), identity_labels(i)))
        .collect();
    let by_id: BTreeMap<NumericIdentity, Labels> = identities.iter().cloned().collect();
    let endpoints: Vec<EndpointPolicyWanted> = case
        .endpoints
        .iter()
        .map(|e| EndpointPolicyWanted {
            endpoint: EndpointId::new(e.id),
            identity: NumericIdentity::new(e.identity),
            labels: by_id
                .get(&NumericIdentity::new(e.identity))
                .cloned()
                .unwrap_or_else(|| panic!("endpoint {} has an unknown identity", e.id)),
            named_ports: e
                .named_ports
                .iter()
                .map(|p| NamedPort {
                    name: p.name.clone(),
                    port: p.port,
                    protocol: protocol(&p.protocol),
                })
                .collect(),
        })
        .collect();
    let import = || PolicySource::Documents(documents.to_vec());
    if incremental {
        for endpoint in endpoints {
            state.upsert_endpoint(endpoint);
        }
        state.import(import()).unwrap();
        for identity in identities {
            state.upsert_identities([identity]);
        }
    } else {
        state.upsert_identities(identities);
        state.import(import()).unwrap();
        for endpoint in endpoints {
            state.upsert_endpoint(endpoint);
        }
    }
    render(&state)
}

fn render(state: &PolicyState) -> String {
    let dump = state.dump();
    let mut out = String::new();
    if !dump.cidr_prefixes.is_empty() {
        let prefixes: Vec<String> = dump.cidr_prefixes.iter().map(ToString::to_string).collect();
        out.push_str(&format!(
            "cidr identities wanted: {}\n",
            prefixes.join(", ")
        ));
    }
    for endpoint in &dump.endpoints {
        let enforced = |on: bool| if on { "enforced" } else { "allow-all" };
        out.push_str(&format!(
            "endpoint {} (identity {}): ingress {}, egress {}\n",
            endpoint.endpoint,
            endpoint.identity,
            enforced(endpoint.ingress_enforced),
            enforced(endpoint.egress_enforced),
        ));
        let mut entries: Vec<_> = state
            .entries(endpoint.endpoint)
            .into_iter()
            .flatten()
            .collect();
        entries.sort_by_key(|(k, _)| (k.direction(), **k));
        for (key, entry) in entries {
            let verdict = if entry.deny { "deny" } else { "allow" };
            out.push_str(&format!("  {key} {verdict}\n"));
        }
    }
    out
}

fn check(name: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/policy");
    let text = std::fs::read_to_string(dir.join(format!("{name}.yaml")))
        .unwrap_or_else(|e| panic!("reading case {name}: {e}"));
    let case: Case =
        serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("case {name} is malformed: {e}"));
    assert!(
        !case.description.trim().is_empty(),
        "{name}: every case says what it shows"
    );
    let documents = parse_documents(&case.policy).unwrap();
    let full = run(&case, &documents, false);
    let incremental = run(&case, &documents, true);
    assert_eq!(
        full, incremental,
        "{name}: incremental resolution differs from full resolution"
    );
    expect_file![dir.join(format!("{name}.expected"))].assert_eq(&full);
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                check(stringify!($name));
            }
        )*
    };
}

cases!(
    from_endpoints,
    to_endpoints,
    match_expressions,
    entities_ingress,
    entities_egress,
    to_cidr,
    to_cidr_set_except,
    to_ports,
    icmps,
    deny_over_allow,
    default_deny,
    enable_default_deny_false,
    enforcement_always,
    enforcement_never,
    ccnp,
    network_policy,
    cluster_scoping,
);

/// Labels that satisfy the simple requirements of a selector (`matchLabels`, `In`,
/// `Exists`), in the default namespace and cluster unless the selector says otherwise.
fn labels_for(selector: &LabelSelector) -> Labels {
    let mut labels =
        Labels::from_k8s_pod("default", [("sample", "yes")], &ClusterName::default()).unwrap();
    let mut put = |raw_key: &str, value: &str| {
        let Ok(key) = SelectorKey::parse(raw_key) else {
            return;
        };
        let source = key.source.unwrap_or_else(|| "k8s".to_owned());
        labels.insert(Label::new(source, key.key, value));
    };
    for (key, value) in &selector.match_labels {
        put(key, value);
    }
    for requirement in &selector.match_expressions {
        match requirement.operator {
            SelectorOperator::In => put(&requirement.key, &requirement.values[0]),
            SelectorOperator::Exists => put(&requirement.key, "x"),
            SelectorOperator::NotIn | SelectorOperator::DoesNotExist => {}
        }
    }
    labels
}

fn corpus_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            corpus_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
}

#[test]
fn supported_upstream_examples_resolve() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/upstream-policies");
    assert!(
        root.join("README.md").is_file(),
        "the upstream policy corpus is missing at {}",
        root.display()
    );
    let mut files = Vec::new();
    corpus_files(&root, &mut files);
    files.sort();
    let mut resolved_files = 0;
    let mut selected_endpoints = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let Ok(parsed) = parse_documents_lenient(&text) else {
            continue;
        };
        if parsed.policies.is_empty()
            || parsed.policies.iter().any(|p| p.check_supported().is_err())
        {
            continue;
        }
        let name = file.strip_prefix(&root).unwrap().display().to_string();
        let mut state = PolicyState::new(PolicyConfig::default());
        // A few peers: a plain pod, the host, a CIDR identity.
        state.upsert_identities([
            (
                NumericIdentity::new(1000),
                Labels::from_k8s_pod("default", [("app", "peer")], &ClusterName::default())
                    .unwrap(),
            ),
            (
                NumericIdentity::new(0x0100_0001),
                Labels::for_cidr("10.1.2.3/32".parse().unwrap(), false),
            ),
        ]);
        state
            .import(PolicySource::Documents(parsed.policies.clone()))
            .unwrap_or_else(|e| panic!("{name}: supported policy not imported: {e}"));
        let mut endpoint = 0u16;
        for document in &parsed.policies {
            for rule in document.to_rules().unwrap() {
                let Some(selector) = &rule.endpoint_selector else {
                    continue;
                };
                let labels = labels_for(selector);
                if !selector.matches(&labels) {
                    continue;
                }
                endpoint += 1;
                state.upsert_endpoint(EndpointPolicyWanted {
                    endpoint: EndpointId::new(endpoint),
                    identity: NumericIdentity::new(2000 + u32::from(endpoint)),
                    labels,
                    named_ports: vec![NamedPort {
                        name: "http".to_owned(),
                        port: 80,
                        protocol: Protocol::TCP,
                    }],
                });
                let dump = state.dump();
                let resolved = dump
                    .endpoints
                    .iter()
                    .find(|e| e.endpoint == EndpointId::new(endpoint))
                    .unwrap();
                // Other rules of the file may select the endpoint too, so the rule's own
                // default deny implies enforcement, not the other way round.
                assert!(
                    resolved.ingress_enforced || !rule.default_deny_ingress(),
                    "{name}: endpoint {endpoint} selected by an ingress rule is not enforced"
                );
                assert!(
                    resolved.egress_enforced || !rule.default_deny_egress(),
                    "{name}: endpoint {endpoint} selected by an egress rule is not enforced"
                );
                selected_endpoints += 1;
                // Identities arriving afterwards are applied without error as well.
                state.upsert_identities([(
                    NumericIdentity::new(3000 + u32::from(endpoint)),
                    labels_for(selector),
                )]);
                assert!(state.entries(EndpointId::new(endpoint)).is_some());
            }
        }
        resolved_files += 1;
    }
    // 39 files of the corpus are supported today; far fewer means this test
    // stopped testing anything.
    assert!(
        resolved_files >= 35,
        "only {resolved_files} upstream files resolved"
    );
    assert!(
        selected_endpoints >= 40,
        "only {selected_endpoints} endpoints selected"
    );
}
