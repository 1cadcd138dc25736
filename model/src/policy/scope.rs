//! From rules as written to the rules the agent enforces: namespace scoping of selectors and
//! the labels that record which policy a rule came from (upstream's `ParseToCiliumRule` and
//! `GetPolicyLabels`).
//!
//! A CiliumNetworkPolicy only ever applies to endpoints of its own namespace, and its peer
//! selectors only select pods of that namespace unless they name a namespace themselves. A
//! cluster-wide policy's peer selectors are limited to pods (anything with a namespace label)
//! so that a wildcard `{}` does not silently select the world.

use super::PolicyKind;
use super::cilium::{CiliumClusterwideNetworkPolicy, CiliumNetworkPolicy, Rule};
use super::error::PolicyError;
use super::meta::ObjectMeta;
use crate::labels::{Label, keys, source};
use crate::selector::{LabelSelector, LabelSelectorRequirement, SelectorOperator};

/// The namespace of a namespaced policy that does not name one, as the API server assumes.
pub(crate) const DEFAULT_NAMESPACE: &str = "default";

/// Label key recording the kind a rule was derived from.
pub const POLICY_LABEL_DERIVED_FROM: &str = "io.cilium.k8s.policy.derived-from";
/// Label key recording the name of the policy a rule came from.
pub const POLICY_LABEL_NAME: &str = "io.cilium.k8s.policy.name";
/// Label key recording the namespace of the policy a rule came from.
pub const POLICY_LABEL_NAMESPACE: &str = "io.cilium.k8s.policy.namespace";
/// Label key recording the UID of the policy a rule came from.
pub const POLICY_LABEL_UID: &str = "io.cilium.k8s.policy.uid";

/// The labels of a rule derived from a policy object, followed by the rule's own labels, sorted
/// by key as upstream's `LabelArray.Sort`.
pub(crate) fn policy_labels(
    kind: &str,
    meta: &ObjectMeta,
    namespace: Option<&str>,
    rule_labels: &[Label],
) -> Vec<Label> {
    let mut labels = vec![
        Label::k8s(POLICY_LABEL_DERIVED_FROM, kind),
        Label::k8s(POLICY_LABEL_NAME, meta.name.clone().unwrap_or_default()),
    ];
    if let Some(ns) = namespace {
        labels.push(Label::k8s(POLICY_LABEL_NAMESPACE, ns));
    }
    labels.push(Label::k8s(
        POLICY_LABEL_UID,
        meta.uid.clone().unwrap_or_default(),
    ));
    labels.extend(rule_labels.iter().cloned());
    labels.sort_by(|a, b| (&a.key, &a.source).cmp(&(&b.key, &b.source)));
    labels
}

/// The rule with its selectors scoped: to `namespace` for a namespaced policy, to "any pod"
/// for a cluster-wide one (`namespace` is `None`).
pub(crate) fn scope_rule(rule: &Rule, namespace: Option<&str>) -> Rule {
    let mut scoped = rule.clone();
    // Initialising endpoints have no labels yet, not even a namespace: a selector that targets
    // them must not be narrowed to a namespace.
    let matches_init = rule
        .endpoint_selector
        .as_ref()
        .is_some_and(|s| has_key(s, is_reserved_init));
    if let (Some(selector), Some(ns)) = (&mut scoped.endpoint_selector, namespace)
        && !matches_init
    {
        selector.match_labels.insert(namespace_key(), ns.to_owned());
    }
    let peers = |list: &mut Vec<LabelSelector>, reserved_exempt: bool| {
        for selector in list.iter_mut() {
            scope_peer(selector, namespace, reserved_exempt, matches_init);
        }
    };
    for r in &mut scoped.ingress {
        peers(&mut r.from_endpoints, true);
        peers(&mut r.from_requires, false);
    }
    for r in &mut scoped.ingress_deny {
        peers(&mut r.from_endpoints, true);
        peers(&mut r.from_requires, false);
    }
    for r in &mut scoped.egress {
        peers(&mut r.to_endpoints, true);
        peers(&mut r.to_requires, false);
    }
    for r in &mut scoped.egress_deny {
        peers(&mut r.to_endpoints, true);
        peers(&mut r.to_requires, false);
    }
    scoped
}

fn scope_peer(
    selector: &mut LabelSelector,
    namespace: Option<&str>,
    reserved_exempt: bool,
    matches_init: bool,
) {
    // Reserved identities (host, health, ...) have no namespace.
    if reserved_exempt && has_key(selector, is_reserved) {
        return;
    }
    // The author chose the namespace(s) explicitly.
    if has_key(selector, |k| names_key(k, keys::POD_NAMESPACE)) {
        return;
    }
    match namespace {
        None if !matches_init => selector.match_expressions.push(LabelSelectorRequirement {
            key: namespace_key(),
            operator: SelectorOperator::Exists,
            values: Vec::new(),
        }),
        None => {}
        Some(ns) => {
            // Selecting by namespace labels picks namespaces, so no single namespace is added.
            let namespace_labels = format!("{}.", keys::NAMESPACE_LABELS);
            if !has_key(selector, |k| names_key_prefix(k, &namespace_labels)) {
                selector.match_labels.insert(namespace_key(), ns.to_owned());
            }
        }
    }
}

/// `k8s:io.kubernetes.pod.namespace`.
fn namespace_key() -> String {
    format!("{}:{}", source::K8S, keys::POD_NAMESPACE)
}

fn has_key(selector: &LabelSelector, pred: impl Fn(&str) -> bool) -> bool {
    selector.match_labels.keys().any(|k| pred(k))
        || selector.match_expressions.iter().any(|r| pred(&r.key))
}

/// Whether a selector key names a reserved label (`reserved:host`, or the `$host` shorthand).
fn is_reserved(key: &str) -> bool {
    key.starts_with(&format!("{}:", source::RESERVED)) || key.starts_with('$')
}

fn is_reserved_init(key: &str) -> bool {
    let init = crate::labels::reserved::INIT;
    key == format!("{}:{init}", source::RESERVED) || key == format!("${init}")
}

/// Whether a selector key is `name` with the `k8s` or `any` source, or without a source (which
/// matches any source).
fn names_key(key: &str, name: &str) -> bool {
    strip_k8s_or_any(key) == name
}

fn names_key_prefix(key: &str, prefix: &str) -> bool {
    strip_k8s_or_any(key).starts_with(prefix)
}

fn strip_k8s_or_any(key: &str) -> &str {
    [source::K8S, source::ANY]
        .iter()
        .find_map(|src| key.strip_prefix(src).and_then(|k| k.strip_prefix(':')))
        .unwrap_or(key)
}

impl CiliumNetworkPolicy {
    /// The namespace the policy applies in: its own, or `default` as the API server assumes.
    pub fn effective_namespace(&self) -> &str {
        self.metadata
            .namespace
            .as_deref()
            .filter(|ns| !ns.is_empty())
            .unwrap_or(DEFAULT_NAMESPACE)
    }

    /// Validates the policy and returns its rules scoped to its namespace and labelled with
    /// its origin.
    pub fn to_rules(&self) -> Result<Vec<Rule>, PolicyError> {
        self.validate()?;
        let namespace = self.effective_namespace();
        Ok(self
            .rules()
            .map(|rule| Rule {
                labels: policy_labels(
                    PolicyKind::CiliumNetworkPolicy.as_str(),
                    &self.metadata,
                    Some(namespace),
                    &rule.labels,
                ),
                ..scope_rule(rule, Some(namespace))
            })
            .collect())
    }
}

impl CiliumClusterwideNetworkPolicy {
    /// Validates the policy and returns its rules with peers limited to pods and labelled
    /// with its origin.
    pub fn to_rules(&self) -> Result<Vec<Rule>, PolicyError> {
        self.validate()?;
        Ok(self
            .rules()
            .map(|rule| Rule {
                labels: policy_labels(
                    PolicyKind::CiliumClusterwideNetworkPolicy.as_str(),
                    &self.metadata,
                    None,
                    &rule.labels,
                ),
                ..scope_rule(rule, None)
            })
            .collect())
    }
}
