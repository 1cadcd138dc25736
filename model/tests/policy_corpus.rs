//! Conformance against upstream Cilium's example policies (`shared/upstream-policies`).
//!
//! Every file is parsed leniently (demo manifests mix policies with Services and
//! Deployments), then support-checked. The expected outcome of each file is written below by
//! reading the file, and the test fails both for a file without an entry and for an entry
//! without a file, so the table cannot silently drift from the corpus.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use model::policy::{PolicyError, parse_documents_lenient};

#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Parses, validates and is supported, with this many policies.
    Ok(usize),
    /// Valid but refused by the support check; the error message contains this text.
    Unsupported(&'static str),
    /// Rejected as malformed or invalid; the error message contains this text (the field
    /// path and/or the reason).
    Invalid(&'static str),
}

use Expect::{Invalid, Ok, Unsupported};

const EXPECTED: &[(&str, Expect)] = &[
    // Cluster mesh demo manifests: Services, Deployments, ConfigMaps only.
    (
        "kubernetes/clustermesh/cilium-etcd-external-service/cilium-etcd-external-eks.yaml",
        Ok(0),
    ),
    (
        "kubernetes/clustermesh/cilium-etcd-external-service/cilium-etcd-external-gke.yaml",
        Ok(0),
    ),
    (
        "kubernetes/clustermesh/cilium-etcd-external-service/cilium-etcd-external-nodeport.yaml",
        Ok(0),
    ),
    ("kubernetes/clustermesh/cluster1.yaml", Ok(0)),
    ("kubernetes/clustermesh/cluster2.yaml", Ok(0)),
    ("kubernetes/clustermesh/global-service-example.yaml", Ok(0)),
    (
        "kubernetes/clustermesh/global-service-example/cluster1.yaml",
        Ok(0),
    ),
    (
        "kubernetes/clustermesh/global-service-example/cluster2.yaml",
        Ok(0),
    ),
    (
        "kubernetes/clustermesh/global-service-example/rebel-base-global-shared.yaml",
        Ok(0),
    ),
    ("kubernetes/clustermesh/mcsapi-example.yaml", Ok(0)),
    // Minikube getting-started guide.
    ("minikube/cilium-ds.yaml", Ok(0)),
    ("minikube/ciliumnetworkpolicy.yaml", Ok(0)), // a ThirdPartyResource
    ("minikube/demo.yaml", Ok(0)),
    ("minikube/dns-sw-app.yaml", Ok(0)),
    (
        "minikube/dns_policy.yaml",
        Unsupported("specs[0].egress[0].toFQDNs: FQDN selectors"),
    ),
    (
        "minikube/dns_policy_with_l7.yaml",
        Unsupported("specs[0].egress[0].toFQDNs: FQDN"),
    ),
    ("minikube/http-sw-app.yaml", Ok(0)),
    (
        "minikube/l3_l4_l7_policy.yaml",
        Unsupported("spec.ingress[0].toPorts[0].rules.http: L7 HTTP"),
    ),
    (
        "minikube/l3_l4_l7_policy_deprecated.yaml",
        Unsupported("rules.http: L7 HTTP"),
    ),
    ("minikube/l3_l4_policy.yaml", Ok(1)),
    ("minikube/l3_l4_policy_deprecated.yaml", Ok(1)),
    // `podSelector` (a NetworkPolicy field) is unknown in a Cilium rule, and `egress` is a map.
    (
        "minikube/malformed_policy.yaml",
        Invalid("spec: unknown field `podSelector`"),
    ),
    ("minikube/sw_deny_policy.yaml", Ok(1)),
    (
        "minikube/sw_l3_l4_l7_policy.yaml",
        Unsupported("L7 HTTP rules"),
    ),
    ("minikube/sw_l3_l4_policy.yaml", Ok(1)),
    // Upstream example policies.
    (
        "policies/auth/auth.yaml",
        Unsupported("spec.egress[0].auth: authentication"),
    ),
    // toCIDR and toCIDRSet in one egress rule: upstream refuses to combine peer kinds.
    (
        "policies/cidr.yaml",
        Invalid("spec.egress[0]: combining toCIDR and toCIDRSet"),
    ),
    ("policies/entities.yaml", Ok(1)),
    (
        "policies/getting-started/cilium_dkr_demo_l3-l4-policy-170817.yaml",
        Ok(1),
    ),
    (
        "policies/getting-started/cilium_dkr_demo_l7-policy-230817.yaml",
        Unsupported("L7 HTTP"),
    ),
    (
        "policies/getting-started/dns-matchname.yaml",
        Unsupported("specs[0].egress[0].toFQDNs"),
    ),
    (
        "policies/getting-started/dns-pattern.yaml",
        Unsupported("toFQDNs: FQDN"),
    ),
    (
        "policies/getting-started/dns-port.yaml",
        Unsupported("toFQDNs: FQDN"),
    ),
    (
        "policies/getting-started/kafka.yaml",
        Unsupported("rules.kafka: L7 Kafka rules"),
    ),
    ("policies/getting-started/l3-l4-policy.yaml", Ok(1)),
    (
        "policies/getting-started/l7-policy.yaml",
        Unsupported("L7 HTTP"),
    ),
    (
        "policies/host/allow-extended-protocols.yaml",
        Unsupported("spec.nodeSelector: host policies"),
    ),
    (
        "policies/host/demo-host-policy.yaml",
        Unsupported("host policies"),
    ),
    (
        "policies/host/lock-down-dev-vms-cidr-node.yaml",
        Unsupported("host policies"),
    ),
    (
        "policies/host/lock-down-dev-vms-remote-node.yaml",
        Unsupported("host policies"),
    ),
    (
        "policies/host/lock-down-dev-vms.yaml",
        Unsupported("host policies"),
    ),
    (
        "policies/host/lock-down-gke.yaml",
        Unsupported("host policies"),
    ),
    // A deliberate placeholder in place of a port.
    (
        "policies/host/lock-down-ingress.yaml",
        Invalid(
            "spec.ingress[1].toPorts[0].ports[5].port: \"REMOVE_ME_AFTER_DOUBLE_CHECKING_PORTS\" \
             is not a port number or a valid port name",
        ),
    ),
    (
        "policies/kubernetes/clustermesh/cross-cluster-any-namespace-policy.yaml",
        Ok(1),
    ),
    (
        "policies/kubernetes/clustermesh/cross-cluster-policy.yaml",
        Ok(1),
    ),
    (
        "policies/kubernetes/clusterwide/clusterscope-policy.yaml",
        Ok(1),
    ),
    ("policies/kubernetes/clusterwide/health.yaml", Ok(1)),
    (
        "policies/kubernetes/clusterwide/wildcard-from-endpoints.yaml",
        Ok(1),
    ),
    ("policies/kubernetes/namespace/demo-pods.yaml", Ok(0)),
    (
        "policies/kubernetes/namespace/isolate-namespaces.yaml",
        Ok(2),
    ),
    ("policies/kubernetes/namespace/kubedns-policy.yaml", Ok(1)),
    (
        "policies/kubernetes/namespace/namespace-labels-policy.yaml",
        Ok(1),
    ),
    ("policies/kubernetes/namespace/namespace-policy.yaml", Ok(1)),
    ("policies/kubernetes/serviceaccount/demo-pods.yaml", Ok(0)),
    (
        "policies/kubernetes/serviceaccount/serviceaccount-policy.yaml",
        Unsupported("L7 HTTP"),
    ),
    ("policies/l3/cidr/cidr.yaml", Ok(1)),
    ("policies/l3/egress-allow-all/egress-allow-all.yaml", Ok(1)),
    (
        "policies/l3/egress-default-deny/egress-default-deny.yaml",
        Ok(1),
    ),
    ("policies/l3/egress-deny/egress-deny.yaml", Ok(1)),
    ("policies/l3/entities/apiserver.yaml", Ok(1)),
    (
        "policies/l3/entities/customnodes.yaml",
        Unsupported("spec.ingress[0].fromNodes: node selectors"),
    ),
    (
        "policies/l3/entities/from_nodes.yaml",
        Unsupported("fromNodes: node selectors"),
    ),
    ("policies/l3/entities/from_world_deny.yaml", Ok(1)),
    ("policies/l3/entities/host.yaml", Ok(1)),
    ("policies/l3/entities/nodes.yaml", Ok(1)),
    ("policies/l3/entities/world.yaml", Ok(1)),
    // The DNS proxy rule comes first (egress[0]); toFQDNs follows in egress[1].
    (
        "policies/l3/fqdn/fqdn-cascade.yaml",
        Unsupported("spec.egress[0].toPorts[0].rules.dns: L7 DNS"),
    ),
    (
        "policies/l3/fqdn/fqdn-short.yaml",
        Unsupported("rules.dns: L7 DNS"),
    ),
    (
        "policies/l3/fqdn/fqdn.yaml",
        Unsupported("rules.dns: L7 DNS"),
    ),
    (
        "policies/l3/host/host-policy.yaml",
        Unsupported("host policies"),
    ),
    (
        "policies/l3/ingress-allow-all/ingress-allow-all.yaml",
        Ok(1),
    ),
    // Operators written `in`: accepted case-insensitively by the selector module.
    ("policies/l3/match-expressions/and-statement.yaml", Ok(1)),
    ("policies/l3/match-expressions/or-statement.yaml", Ok(1)),
    ("policies/l3/requires/endpoints.yaml", Ok(1)),
    (
        "policies/l3/requires/requires.yaml",
        Unsupported("specs[0].ingress[0].fromRequires: requirement"),
    ),
    (
        "policies/l3/service/service-labels.yaml",
        Unsupported("toServices: service selectors"),
    ),
    (
        "policies/l3/service/service.yaml",
        Unsupported("toServices: service selectors"),
    ),
    ("policies/l3/simple/l3.yaml", Ok(1)),
    ("policies/l3/simple/l3_egress.yaml", Ok(1)),
    ("policies/l4/cidr_l4_combined.yaml", Ok(1)),
    (
        "policies/l4/envoy_forward_proxy.yaml",
        Unsupported("toPorts[0].listener: Envoy listener"),
    ),
    ("policies/l4/envoy_forward_proxy_cec.yaml", Ok(0)),
    (
        "policies/l4/envoy_listener_redirect.yaml",
        Unsupported("spec.egress[0].toFQDNs"),
    ),
    ("policies/l4/envoy_listener_redirect_cec.yaml", Ok(0)),
    ("policies/l4/from_init.yaml", Ok(1)),
    ("policies/l4/icmp.yaml", Ok(1)),
    ("policies/l4/init.yaml", Ok(1)),
    ("policies/l4/l3_l4_combined.yaml", Ok(1)),
    ("policies/l4/l4.yaml", Ok(1)),
    ("policies/l4/l4_port_range.yaml", Ok(1)),
    (
        "policies/l4/l4_sni.yaml",
        Unsupported("serverNames: TLS server name"),
    ),
    ("policies/l4/multi_rule.yaml", Ok(1)),
    (
        "policies/l4/wildcard_port_listener.yaml",
        Unsupported("listener: Envoy listener"),
    ),
    ("policies/l7.yaml", Unsupported("L7 HTTP")),
    (
        "policies/l7/dns/dns-upgrade.yaml",
        Unsupported("rules.dns: L7 DNS"),
    ),
    (
        "policies/l7/dns/dns-visibility.yaml",
        Unsupported("rules.dns: L7 DNS"),
    ),
    ("policies/l7/dns/dns.yaml", Unsupported("rules.dns: L7 DNS")),
    (
        "policies/l7/http/http.yaml",
        Unsupported("rules.http: L7 HTTP"),
    ),
    (
        "policies/l7/http/l7_multi.yaml",
        Unsupported("specs[0].ingress[0].toPorts[0].rules.http"),
    ),
    ("policies/l7/http/simple/l7.yaml", Unsupported("L7 HTTP")),
    ("policies/l7/kafka/kafka-Role.yaml", Unsupported("L7 Kafka")),
    ("policies/l7/kafka/kafka-role.yaml", Unsupported("L7 Kafka")),
    ("policies/l7/kafka/kafka.yaml", Unsupported("L7 Kafka")),
    // `role: frontend` sits beside `matchLabels` instead of under it: an unknown selector
    // field, which upstream's decoder would drop, allowing every endpoint.
    (
        "policies/multi_rule.yaml",
        Invalid("spec.ingress[0].fromEndpoints[0]: unknown field `role`"),
    ),
    (
        "policies/requires.yaml",
        Unsupported("specs[0].ingress[0].fromRequires"),
    ),
    (
        "policies/service-empty.yaml",
        Unsupported("spec.egress[1].toServices"),
    ),
    (
        "policies/service.yaml",
        Unsupported("toServices: service selectors"),
    ),
];

fn corpus_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/upstream-policies");
    assert!(
        root.join("README.md").is_file(),
        "the upstream policy corpus is missing: expected it at {} (shared/upstream-policies \
         beside the repository)",
        root.display()
    );
    root
}

fn corpus_files(dir: &Path, root: &Path, out: &mut Vec<String>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            corpus_files(&path, root, out);
        } else {
            let relative = path.strip_prefix(root).expect("path under the corpus root");
            out.push(relative.to_string_lossy().replace('\\', "/"));
        }
    }
}

enum Outcome {
    Ok(usize),
    Unsupported(PolicyError),
    Invalid(PolicyError),
}

fn outcome(text: &str) -> Outcome {
    let parsed = match parse_documents_lenient(text) {
        Err(e) => return Outcome::Invalid(e),
        Result::Ok(parsed) => parsed,
    };
    for policy in &parsed.policies {
        if let Err(e) = policy.check_supported() {
            return Outcome::Unsupported(e);
        }
        let rules = policy
            .to_rules()
            .expect("a supported, validated policy translates");
        assert_eq!(rules.len(), policy.rules().len());
    }
    Outcome::Ok(parsed.policies.len())
}

fn check(expect: Expect, outcome: &Outcome) -> Result<(), String> {
    match (expect, outcome) {
        (Ok(n), Outcome::Ok(got)) if n == *got => Result::Ok(()),
        (Unsupported(text), Outcome::Unsupported(e)) if e.to_string().contains(text) => {
            assert!(e.is_unsupported());
            Result::Ok(())
        }
        (Invalid(text), Outcome::Invalid(e)) if e.to_string().contains(text) => {
            assert!(!e.is_unsupported());
            Result::Ok(())
        }
        (_, Outcome::Ok(got)) => Err(format!("expected {expect:?}, got Ok({got})")),
        (_, Outcome::Unsupported(e)) => Err(format!("expected {expect:?}, got unsupported: {e}")),
        (_, Outcome::Invalid(e)) => Err(format!("expected {expect:?}, got invalid: {e}")),
    }
}

#[test]
fn every_corpus_file_has_its_expected_outcome() {
    let root = corpus_root();
    let mut found = Vec::new();
    corpus_files(&root, &root, &mut found);
    found.retain(|f| f != "README.md");
    found.sort();

    let table: BTreeMap<&str, Expect> = EXPECTED.iter().copied().collect();
    assert_eq!(
        table.len(),
        EXPECTED.len(),
        "a file is listed twice in the table"
    );

    let mut failures = Vec::new();
    for file in &found {
        let Some(expect) = table.get(file.as_str()) else {
            failures.push(format!("{file}: not in the expectation table"));
            continue;
        };
        let text = std::fs::read_to_string(root.join(file))
            .unwrap_or_else(|e| panic!("reading {file}: {e}"));
        if let Err(problem) = check(*expect, &outcome(&text)) {
            failures.push(format!("{file}: {problem}"));
        }
    }
    for (file, _) in EXPECTED {
        if !found.iter().any(|f| f == file) {
            failures.push(format!("{file}: in the table but not in the corpus"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} corpus mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The corpus README counts 107 files; guard against walking the wrong directory.
    assert_eq!(found.len(), 107);
}

#[test]
fn strict_parsing_rejects_the_mixed_demo_manifests() {
    let root = corpus_root();
    let text =
        std::fs::read_to_string(root.join("minikube/http-sw-app.yaml")).expect("corpus file");
    let err = model::policy::parse_documents(&text).expect_err("Services are not policies");
    assert!(
        matches!(err.innermost(), PolicyError::NotAPolicy { kind } if kind == "Service"),
        "{err}"
    );
}
