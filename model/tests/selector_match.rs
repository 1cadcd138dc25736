//! `LabelSelector::matches`, keys with sources, and Kubernetes operator semantics.

use std::collections::BTreeMap;

use model::labels::{Label, Labels};
use model::selector::{LabelSelector, LabelSelectorRequirement, SelectorKey, SelectorOperator};
use proptest::prelude::*;

fn labels(items: &[&str]) -> Labels {
    items.iter().map(|s| Label::parse(s).unwrap()).collect()
}

fn match_labels(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        match_expressions: Vec::new(),
    }
}

fn expression(key: &str, operator: SelectorOperator, values: &[&str]) -> LabelSelector {
    LabelSelector {
        match_labels: BTreeMap::new(),
        match_expressions: vec![LabelSelectorRequirement {
            key: key.to_string(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }],
    }
}

#[test]
fn empty_selector_selects_everything() {
    let selector = LabelSelector::default();
    assert!(selector.selects_all());
    assert!(selector.matches(&Labels::new()));
    assert!(selector.matches(&labels(&["k8s:app=web", "reserved:host"])));
}

#[test]
fn plain_key_matches_any_source() {
    let selector = match_labels(&[("app", "web")]);
    assert!(!selector.selects_all());
    assert!(selector.matches(&labels(&["k8s:app=web"])));
    assert!(selector.matches(&labels(&["container:app=web"])));
    assert!(!selector.matches(&labels(&["k8s:app=db"])));
    assert!(!selector.matches(&labels(&["k8s:tier=web"])));
    assert!(match_labels(&[("any:app", "web")]).matches(&labels(&["cni:app=web"])));
}

#[test]
fn sourced_key_matches_only_that_source() {
    let selector = match_labels(&[("k8s:app", "web")]);
    assert!(selector.matches(&labels(&["k8s:app=web"])));
    assert!(!selector.matches(&labels(&["container:app=web"])));
}

#[test]
fn reserved_keys() {
    let host = labels(&["reserved:host"]);
    assert!(match_labels(&[("reserved:host", "")]).matches(&host));
    assert!(match_labels(&[("$host", "")]).matches(&host));
    assert!(!match_labels(&[("reserved:world", "")]).matches(&host));
    assert!(!match_labels(&[("k8s:host", "")]).matches(&host));
}

#[test]
fn match_labels_are_anded() {
    let selector = match_labels(&[("app", "web"), ("k8s:io.kubernetes.pod.namespace", "prod")]);
    assert!(selector.matches(&labels(&[
        "k8s:app=web",
        "k8s:io.kubernetes.pod.namespace=prod",
        "k8s:extra=1"
    ])));
    assert!(!selector.matches(&labels(&["k8s:app=web"])));
}

#[test]
fn in_operator() {
    let selector = expression("k8s:env", SelectorOperator::In, &["prod", "staging"]);
    assert!(selector.matches(&labels(&["k8s:env=prod"])));
    assert!(selector.matches(&labels(&["k8s:env=staging"])));
    assert!(!selector.matches(&labels(&["k8s:env=dev"])));
    assert!(!selector.matches(&Labels::new()));
    assert!(!selector.matches(&labels(&["container:env=prod"])));
}

#[test]
fn not_in_matches_absent_keys() {
    let selector = expression("env", SelectorOperator::NotIn, &["prod"]);
    assert!(!selector.matches(&labels(&["k8s:env=prod"])));
    assert!(selector.matches(&labels(&["k8s:env=dev"])));
    assert!(selector.matches(&Labels::new()));
}

#[test]
fn exists_and_does_not_exist() {
    let exists = expression(
        "k8s:io.kubernetes.pod.namespace",
        SelectorOperator::Exists,
        &[],
    );
    let absent = expression(
        "k8s:io.kubernetes.pod.namespace",
        SelectorOperator::DoesNotExist,
        &[],
    );
    let with_ns = labels(&["k8s:io.kubernetes.pod.namespace=x"]);
    assert!(exists.matches(&with_ns));
    assert!(!absent.matches(&with_ns));
    assert!(!exists.matches(&Labels::new()));
    assert!(absent.matches(&Labels::new()));
    // A label of another source does not exist for a sourced key.
    let other_source = labels(&["container:io.kubernetes.pod.namespace=x"]);
    assert!(!exists.matches(&other_source));
    assert!(absent.matches(&other_source));
}

#[test]
fn labels_and_expressions_are_anded() {
    let mut selector = match_labels(&[("app", "web")]);
    selector.match_expressions =
        expression("tier", SelectorOperator::DoesNotExist, &[]).match_expressions;
    assert!(selector.matches(&labels(&["k8s:app=web"])));
    assert!(!selector.matches(&labels(&["k8s:app=web", "k8s:tier=front"])));
}

#[test]
fn malformed_keys_match_nothing_instead_of_failing() {
    assert!(!match_labels(&[("", "")]).matches(&labels(&["k8s:app=web"])));
    assert!(!match_labels(&[("k8s:", "web")]).matches(&labels(&["k8s:app=web"])));
}

#[test]
fn cluster_key_detection() {
    assert!(match_labels(&[("io.cilium.k8s.policy.cluster", "c1")]).has_cluster_key());
    assert!(
        expression(
            "k8s:io.cilium.k8s.policy.cluster",
            SelectorOperator::In,
            &["c2"]
        )
        .has_cluster_key()
    );
    assert!(!match_labels(&[("app", "web")]).has_cluster_key());
    assert!(!match_labels(&[("io.cilium.k8s.policy.cluster.other", "x")]).has_cluster_key());
}

#[test]
fn selector_keys_parse() {
    let key = SelectorKey::parse("k8s:app").unwrap();
    assert_eq!(key.source.as_deref(), Some("k8s"));
    assert_eq!(key.key, "app");
    assert_eq!(key.to_string(), "k8s:app");
    let any = SelectorKey::parse("app").unwrap();
    assert_eq!(any.source, None);
    assert_eq!(any.to_string(), "any:app");
    assert_eq!(SelectorKey::parse("any:app"), Ok(any));
    let host = SelectorKey::parse("$host").unwrap();
    assert_eq!(host.to_string(), "reserved:host");
    assert!(host.matches(&Label::host()));
    assert!(SelectorKey::parse("").is_err());
    assert!(SelectorKey::parse("k8s:").is_err());
}

#[test]
fn from_labels_builds_an_exact_selector() {
    let set = labels(&["k8s:app=web", "reserved:host", "container:x=1"]);
    let selector = LabelSelector::from_labels(&set);
    assert_eq!(
        selector.match_labels.get("k8s:app").map(String::as_str),
        Some("web")
    );
    assert_eq!(
        selector
            .match_labels
            .get("reserved:host")
            .map(String::as_str),
        Some("")
    );
    assert!(selector.matches(&set));
    assert!(!selector.matches(&labels(&["k8s:app=web", "reserved:host"])));
}

fn arbitrary_selector() -> impl Strategy<Value = LabelSelector> {
    let key = prop_oneof!["[a-z$:.=/ ]{0,12}", any::<String>()];
    let operator = prop_oneof![
        Just(SelectorOperator::In),
        Just(SelectorOperator::NotIn),
        Just(SelectorOperator::Exists),
        Just(SelectorOperator::DoesNotExist),
    ];
    let requirement = (
        key.clone(),
        operator,
        prop::collection::vec(any::<String>(), 0..3),
    )
        .prop_map(|(key, operator, values)| LabelSelectorRequirement {
            key,
            operator,
            values,
        });
    (
        prop::collection::btree_map(key, any::<String>(), 0..3),
        prop::collection::vec(requirement, 0..3),
    )
        .prop_map(|(match_labels, match_expressions)| LabelSelector {
            match_labels,
            match_expressions,
        })
}

fn valid_labels() -> impl Strategy<Value = Labels> {
    prop::collection::vec(
        (
            prop_oneof![
                Just("k8s"),
                Just("reserved"),
                Just("container"),
                Just("unspec")
            ],
            "[a-z0-9][a-z0-9._-]{0,10}(/[a-z0-9._-]{1,8})?",
            "[^;\\p{Cc}]{0,12}",
        ),
        0..8,
    )
    .prop_map(|items| {
        items
            .into_iter()
            .map(|(source, key, value)| Label::new(source, key, value))
            .collect()
    })
}

proptest! {
    #[test]
    fn matching_and_validation_never_panic(selector in arbitrary_selector(), set in valid_labels()) {
        let _ = selector.matches(&set);
        let _ = selector.validate();
        let _ = selector.to_string();
        let _ = selector.has_cluster_key();
    }

    #[test]
    fn own_match_labels_match(set in valid_labels()) {
        let selector = LabelSelector::from_labels(&set);
        prop_assert_eq!(selector.validate(), Ok(()));
        prop_assert!(selector.matches(&set));
    }

    #[test]
    fn any_source_match_labels_match(set in valid_labels()) {
        let selector = LabelSelector {
            match_labels: set.iter().map(|l| (l.key.clone(), l.value.clone())).collect(),
            match_expressions: Vec::new(),
        };
        prop_assert!(selector.matches(&set));
    }
}
