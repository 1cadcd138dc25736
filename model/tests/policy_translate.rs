//! Effective rules: Kubernetes NetworkPolicy translation and namespace scoping of Cilium
//! policies, as upstream's agent derives them.

use std::collections::BTreeMap;

use model::labels::Label;
use model::policy::{
    CidrRule, EgressRule, IngressRule, L4Proto, NetworkPolicy, PolicyDocument, PortProtocol,
    PortRule, Rule, parse_documents, parse_documents_lenient,
};
use model::selector::{LabelSelector, LabelSelectorRequirement, SelectorOperator};

const NS: &str = "k8s:io.kubernetes.pod.namespace";

fn corpus(file: &str) -> String {
    let path = format!(
        "{}/../../shared/upstream-policies/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("corpus file {path}: {e}"))
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn selector(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: labels(pairs),
        match_expressions: Vec::new(),
    }
}

fn exists(key: &str) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.to_owned(),
        operator: SelectorOperator::Exists,
        values: Vec::new(),
    }
}

fn origin(kind: &str, name: &str, namespace: Option<&str>) -> Vec<Label> {
    let mut out = vec![
        Label::k8s("io.cilium.k8s.policy.derived-from", kind),
        Label::k8s("io.cilium.k8s.policy.name", name),
    ];
    if let Some(ns) = namespace {
        out.push(Label::k8s("io.cilium.k8s.policy.namespace", ns));
    }
    out.push(Label::k8s("io.cilium.k8s.policy.uid", ""));
    out
}

fn tcp(port: &str) -> PortRule {
    PortRule {
        ports: vec![PortProtocol {
            port: port.to_owned(),
            end_port: None,
            protocol: Some(L4Proto::Tcp),
        }],
        ..PortRule::default()
    }
}

#[test]
fn the_minikube_network_policy_translates_as_upstream() {
    let docs = parse_documents(&corpus("minikube/l3_l4_policy.yaml")).expect("valid");
    let PolicyDocument::NetworkPolicy(np) = &docs[0] else {
        panic!("not a NetworkPolicy");
    };
    let expected = Rule {
        endpoint_selector: Some(selector(&[("k8s:id", "app1"), (NS, "default")])),
        ingress: vec![IngressRule {
            from_endpoints: vec![selector(&[("k8s:id", "app2"), (NS, "default")])],
            to_ports: vec![tcp("80")],
            ..IngressRule::default()
        }],
        labels: origin("NetworkPolicy", "access-backend", Some("default")),
        ..Rule::default()
    };
    assert_eq!(np.to_rules().expect("translates"), vec![expected.clone()]);
    assert_eq!(docs[0].to_rules().expect("translates"), vec![expected]);
    // The legacy extensions/v1beta1 copy means the same.
    let legacy = parse_documents(&corpus("minikube/l3_l4_policy_deprecated.yaml")).expect("valid");
    assert_eq!(legacy[0].rules()[0].ingress, docs[0].rules()[0].ingress,);
}

fn translate(spec: &str) -> Rule {
    let text = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np, namespace: team}}\nspec: {spec}\n"
    );
    let docs = parse_documents(&text).unwrap_or_else(|e| panic!("{spec}: {e}"));
    let mut rules = docs[0].to_rules().expect("translates");
    assert_eq!(rules.len(), 1);
    rules.remove(0)
}

#[test]
fn namespace_selectors_select_by_namespace_labels() {
    let rule = translate(
        "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}, podSelector: {matchLabels: {app: db}}}, {namespaceSelector: {}}]}]}",
    );
    assert_eq!(rule.endpoint_selector, Some(selector(&[(NS, "team")])));
    assert_eq!(
        rule.ingress[0].from_endpoints,
        vec![selector(&[
            ("k8s:io.cilium.k8s.namespace.labels.team", "blue"),
            ("k8s:app", "db")
        ])]
    );
    // An empty namespaceSelector: any pod in any namespace.
    assert_eq!(
        rule.ingress[1].from_endpoints,
        vec![LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![exists(NS)],
        }]
    );
}

#[test]
fn ip_blocks_and_ports_become_cidr_sets_and_port_rules() {
    let rule = translate(
        "{podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}, {podSelector: {}}], ports: [{port: 53, protocol: UDP}, {port: dns-tcp}, {port: 8000, endPort: 8080}, {}]}]}",
    );
    let ports = vec![
        PortRule {
            ports: vec![PortProtocol {
                port: "53".into(),
                end_port: None,
                protocol: Some(L4Proto::Udp),
            }],
            ..PortRule::default()
        },
        tcp("dns-tcp"),
        PortRule {
            ports: vec![PortProtocol {
                port: "8000".into(),
                end_port: Some(8080),
                protocol: Some(L4Proto::Tcp),
            }],
            ..PortRule::default()
        },
        tcp("0"),
    ];
    assert_eq!(
        rule.egress,
        vec![
            EgressRule {
                to_cidr_set: vec![CidrRule {
                    cidr: "10.0.0.0/8".into(),
                    except: vec!["10.1.0.0/16".into()],
                    ..CidrRule::default()
                }],
                to_ports: ports.clone(),
                ..EgressRule::default()
            },
            EgressRule {
                to_endpoints: vec![selector(&[(NS, "team")])],
                to_ports: ports,
                ..EgressRule::default()
            },
        ]
    );
    // policyTypes: [Egress] only: no ingress section, so ingress is not default deny.
    assert!(rule.ingress.is_empty());
    assert!(!rule.default_deny_ingress());
    assert!(rule.default_deny_egress());
}

#[test]
fn default_deny_follows_policy_types() {
    // No policyTypes and no rules: ingress default deny (an empty rule allows nothing).
    let rule = translate("{podSelector: {}}");
    assert_eq!(rule.ingress, vec![IngressRule::default()]);
    assert!(rule.egress.is_empty());
    // Both types listed, no rules: deny both ways.
    let rule = translate("{podSelector: {}, policyTypes: [Ingress, Egress]}");
    assert_eq!(rule.ingress, vec![IngressRule::default()]);
    assert_eq!(rule.egress, vec![EgressRule::default()]);
    // An ingress rule without `from`: every source.
    let rule = translate("{podSelector: {}, ingress: [{}]}");
    assert_eq!(
        rule.ingress,
        vec![IngressRule {
            from_endpoints: vec![LabelSelector::default()],
            ..IngressRule::default()
        }]
    );
}

#[test]
fn network_policy_validation_is_kubernetes_validation() {
    for (spec, expected) in [
        (
            "{ingress: [{from: [{}]}]}",
            "spec.ingress[0].from[0]: a peer must have",
        ),
        (
            "{ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]}",
            "ipBlock may not be combined",
        ),
        (
            "{egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/8]}}]}]}",
            "spec.egress[0].to[0].ipBlock.except[0]: 11.0.0.0/8 is not inside",
        ),
        (
            "{ingress: [{ports: [{port: 0}]}]}",
            "spec.ingress[0].ports[0].port: \"0\" is not a port",
        ),
        (
            "{ingress: [{ports: [{port: http, endPort: 90}]}]}",
            "endPort requires a numeric port",
        ),
        (
            "{ingress: [{ports: [{protocol: ICMP}]}]}",
            "ports[0].protocol: ICMP is not allowed",
        ),
        (
            "{podSelector: {matchExpressions: [{key: a, operator: In}]}}",
            "spec.podSelector.matchExpressions[0]",
        ),
    ] {
        let np: NetworkPolicy = serde_yaml_ng::from_str(&format!(
            "kind: NetworkPolicy\nmetadata: {{name: n}}\nspec: {spec}\n"
        ))
        .expect("shape");
        let err = np.to_rules().expect_err(spec);
        assert!(err.to_string().contains(expected), "{spec}: {err}");
    }
}

#[test]
fn cilium_network_policies_are_scoped_to_their_namespace() {
    let text = "kind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: shop, uid: u-1}\nspec:\n  \
                endpointSelector: {matchLabels: {app: web}}\n  labels: [{key: team, value: a, source: unspec}]\n  \
                ingress:\n  - fromEndpoints:\n    - matchLabels: {app: client}\n    - matchLabels: {k8s:io.kubernetes.pod.namespace: other, app: x}\n    \
                - matchLabels: {io.cilium.k8s.namespace.labels.tier: front}\n    - matchLabels: {reserved:host: ''}\n  \
                - fromEntities: [world]\n  egressDeny:\n  - toEndpoints: [{}]\n";
    let docs = parse_documents(text).expect("valid");
    assert_eq!(docs[0].effective_namespace(), Some("shop"));
    let rules = docs[0].to_rules().expect("scoped");
    let rule = &rules[0];
    assert_eq!(
        rule.endpoint_selector,
        Some(selector(&[("app", "web"), (NS, "shop")]))
    );
    assert_eq!(
        rule.ingress[0].from_endpoints,
        vec![
            selector(&[("app", "client"), (NS, "shop")]),
            // An explicit namespace is the author's choice.
            selector(&[(NS, "other"), ("app", "x")]),
            // Namespace labels select namespaces; no single namespace is added.
            selector(&[("io.cilium.k8s.namespace.labels.tier", "front")]),
            // Reserved identities have no namespace.
            selector(&[("reserved:host", "")]),
        ]
    );
    assert_eq!(
        rule.ingress[1].from_entities,
        docs[0].rules()[0].ingress[1].from_entities
    );
    assert_eq!(
        rule.egress_deny[0].to_endpoints,
        vec![selector(&[(NS, "shop")])]
    );
    let mut expected_labels = origin("CiliumNetworkPolicy", "p", Some("shop"));
    expected_labels[3] = Label::k8s("io.cilium.k8s.policy.uid", "u-1");
    expected_labels.push(Label::new("unspec", "team", "a"));
    assert_eq!(rule.labels, expected_labels);
    // rules() is the document as written.
    assert_eq!(
        docs[0].rules()[0].endpoint_selector,
        Some(selector(&[("app", "web")]))
    );
}

#[test]
fn a_cnp_without_namespace_lives_in_default() {
    let docs = parse_documents_lenient(&corpus("policies/l3/simple/l3.yaml")).expect("valid");
    let rules = docs.policies[0].to_rules().expect("scoped");
    assert_eq!(
        rules[0].endpoint_selector,
        Some(selector(&[("role", "backend"), (NS, "default")]))
    );
    assert_eq!(
        rules[0].ingress[0].from_endpoints,
        vec![selector(&[("role", "frontend"), (NS, "default")])]
    );
}

#[test]
fn cluster_wide_peers_are_limited_to_pods_except_for_init() {
    let rules = parse_documents(&corpus(
        "policies/kubernetes/clusterwide/wildcard-from-endpoints.yaml",
    ))
    .expect("valid")[0]
        .to_rules()
        .expect("scoped");
    // The endpoint selector of a cluster-wide policy is not namespaced.
    assert_eq!(
        rules[0].endpoint_selector,
        Some(selector(&[(NS, "kube-system"), ("k8s-app", "kube-dns")]))
    );
    // A wildcard peer becomes "any pod", not "anything".
    assert_eq!(
        rules[0].ingress[0].from_endpoints,
        vec![LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![exists(NS)],
        }]
    );
    assert_eq!(
        rules[0].labels,
        origin(
            "CiliumClusterwideNetworkPolicy",
            "wildcard-from-endpoints",
            None
        )
    );

    // A policy for initialising endpoints leaves its peers alone: those have no namespace.
    let text = "kind: CiliumClusterwideNetworkPolicy\nmetadata: {name: i}\nspec:\n  \
                endpointSelector: {matchLabels: {'reserved:init': ''}}\n  egress: [{toEndpoints: [{matchLabels: {app: dns}}]}]\n";
    let rules = parse_documents(text).expect("valid")[0]
        .to_rules()
        .expect("scoped");
    assert_eq!(
        rules[0].egress[0].to_endpoints,
        vec![selector(&[("app", "dns")])]
    );
}
