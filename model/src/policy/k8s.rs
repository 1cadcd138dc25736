//! Kubernetes `NetworkPolicy` (`networking.k8s.io/v1`, and the legacy `extensions/v1beta1`)
//! and its translation into Cilium rules, following upstream's `pkg/k8s/network_policy.go`.
//!
//! The translation scopes every selector to the policy's namespace the way the agent sees pod
//! labels: pod labels carry the `k8s:` source, the pod's namespace is the label
//! `k8s:io.kubernetes.pod.namespace`, and a namespace's own labels appear on its pods as
//! `k8s:io.cilium.k8s.namespace.labels.<key>`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::cilium::{
    CidrRule, EgressRule, IngressRule, L4Proto, PortProtocol, PortRule, PortSpec, Rule,
};
use super::de::{IntOrString, null_as_default, opt_selector, selector};
use super::error::PolicyError;
use super::meta::{ObjectMeta, Scope};
use super::path::FieldPath;
use super::scope::{DEFAULT_NAMESPACE, policy_labels};
use super::validate;
use crate::labels::{keys, source};
use crate::selector::{LabelSelector, LabelSelectorRequirement, SelectorOperator};

/// The `kind` of a Kubernetes network policy.
pub const NETWORK_POLICY_KIND: &str = "NetworkPolicy";

/// A Kubernetes NetworkPolicy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicy {
    #[serde(
        default,
        alias = "apiversion",
        skip_serializing_if = "String::is_empty"
    )]
    pub api_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: NetworkPolicySpec,
}

/// `spec` of a NetworkPolicy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicySpec {
    /// The pods (of the policy's namespace) the policy applies to; `{}` selects all of them.
    #[serde(default, deserialize_with = "selector")]
    pub pod_selector: LabelSelector,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub policy_types: Vec<PolicyType>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub ingress: Vec<NetworkPolicyIngressRule>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub egress: Vec<NetworkPolicyEgressRule>,
}

/// `policyTypes` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PolicyType {
    Ingress,
    Egress,
}

/// An ingress rule: traffic from any of `from` (everything if empty) to any of `ports` (every
/// port if empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicyIngressRule {
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub from: Vec<NetworkPolicyPeer>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub ports: Vec<NetworkPolicyPort>,
}

/// An egress rule: traffic to any of `to` (everything if empty) on any of `ports`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicyEgressRule {
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub to: Vec<NetworkPolicyPeer>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub ports: Vec<NetworkPolicyPort>,
}

/// A peer: pods (by pod and/or namespace labels) or an IP block.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyPeer {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "opt_selector"
    )]
    pub pod_selector: Option<LabelSelector>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "opt_selector"
    )]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

/// `ipBlock`: a CIDR with exceptions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpBlock {
    #[serde(default)]
    pub cidr: String,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub except: Vec<String>,
}

/// A port, or a port range with `endPort`. Protocol defaults to TCP; no port means every port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<L4Proto>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i32>,
}

impl NetworkPolicy {
    /// The namespace the policy applies in: its own, or `default` like the API server assumes.
    pub fn effective_namespace(&self) -> &str {
        self.metadata
            .namespace
            .as_deref()
            .filter(|ns| !ns.is_empty())
            .unwrap_or(DEFAULT_NAMESPACE)
    }

    /// Checks the policy as the Kubernetes API server would; errors name the field.
    pub fn validate(&self) -> Result<(), PolicyError> {
        self.metadata
            .validate(NETWORK_POLICY_KIND, Scope::Namespaced)?;
        let spec = FieldPath::root().field("spec");
        validate::selector(&spec.field("podSelector"), &self.spec.pod_selector)?;
        for (i, rule) in self.spec.ingress.iter().enumerate() {
            let path = spec.field("ingress").index(i);
            validate_peers(&path.field("from"), &rule.from)?;
            validate_ports(&path.field("ports"), &rule.ports)?;
        }
        for (i, rule) in self.spec.egress.iter().enumerate() {
            let path = spec.field("egress").index(i);
            validate_peers(&path.field("to"), &rule.to)?;
            validate_ports(&path.field("ports"), &rule.ports)?;
        }
        Ok(())
    }

    /// Validates the policy and translates it into the one Cilium rule upstream derives from
    /// it, scoped to the policy's namespace and labelled with its origin.
    pub fn to_rules(&self) -> Result<Vec<Rule>, PolicyError> {
        self.validate()?;
        Ok(vec![self.translate()])
    }

    /// The translation proper; assumes a validated policy.
    pub(crate) fn translate(&self) -> Rule {
        let namespace = self.effective_namespace();
        let spec = &self.spec;

        let mut ingress = Vec::new();
        for rule in &spec.ingress {
            let mut from_rules: Vec<IngressRule> = if rule.from.is_empty() {
                // No `from` allows every source.
                vec![IngressRule {
                    from_endpoints: vec![LabelSelector::default()],
                    ..IngressRule::default()
                }]
            } else {
                rule.from
                    .iter()
                    .map(|peer| IngressRule {
                        from_endpoints: peer_selector(namespace, peer).into_iter().collect(),
                        from_cidr_set: peer.ip_block.iter().map(ip_block_rule).collect(),
                        ..IngressRule::default()
                    })
                    .collect()
            };
            if !rule.ports.is_empty() {
                let to_ports = port_rules(&rule.ports);
                for from_rule in &mut from_rules {
                    from_rule.to_ports.clone_from(&to_ports);
                }
            }
            ingress.extend(from_rules);
        }

        let mut egress = Vec::new();
        for rule in &spec.egress {
            let mut to_rules: Vec<EgressRule> = if rule.to.is_empty() {
                vec![EgressRule {
                    to_endpoints: vec![LabelSelector::default()],
                    ..EgressRule::default()
                }]
            } else {
                rule.to
                    .iter()
                    .map(|peer| EgressRule {
                        to_endpoints: peer_selector(namespace, peer).into_iter().collect(),
                        to_cidr_set: peer.ip_block.iter().map(ip_block_rule).collect(),
                        ..EgressRule::default()
                    })
                    .collect()
            };
            if !rule.ports.is_empty() {
                let to_ports = port_rules(&rule.ports);
                for to_rule in &mut to_rules {
                    to_rule.to_ports.clone_from(&to_ports);
                }
            }
            egress.extend(to_rules);
        }

        // Kubernetes' default-deny model: without policyTypes a policy is about ingress; an
        // empty list of rules for a listed direction denies everything in that direction. An
        // empty Cilium rule (`{}`) selects no peer but puts the endpoint into default deny.
        let has_type = |t: PolicyType| spec.policy_types.contains(&t);
        if ingress.is_empty() && (has_type(PolicyType::Ingress) || !has_type(PolicyType::Egress)) {
            ingress.push(IngressRule::default());
        }
        if egress.is_empty() && has_type(PolicyType::Egress) {
            egress.push(EgressRule::default());
        }

        let mut endpoint_selector = k8s_prefixed(&spec.pod_selector);
        endpoint_selector
            .match_labels
            .insert(namespace_key(), namespace.to_owned());

        Rule {
            endpoint_selector: Some(endpoint_selector),
            ingress,
            egress,
            labels: policy_labels(NETWORK_POLICY_KIND, &self.metadata, Some(namespace), &[]),
            ..Rule::default()
        }
    }
}

/// `k8s:io.kubernetes.pod.namespace`.
fn namespace_key() -> String {
    format!("{}:{}", source::K8S, keys::POD_NAMESPACE)
}

/// The selector with every key given the `k8s:` source, as upstream's
/// `NewESFromK8sLabelSelector(k8s prefix, ...)` does for NetworkPolicy selectors.
fn k8s_prefixed(selector: &LabelSelector) -> LabelSelector {
    let prefix = |key: &str| format!("{}:{key}", source::K8S);
    LabelSelector {
        match_labels: selector
            .match_labels
            .iter()
            .map(|(k, v)| (prefix(k), v.clone()))
            .collect(),
        match_expressions: selector
            .match_expressions
            .iter()
            .map(|r| LabelSelectorRequirement {
                key: prefix(&r.key),
                ..r.clone()
            })
            .collect(),
    }
}

/// The endpoint selector of a peer, or `None` for an `ipBlock`-only peer.
fn peer_selector(namespace: &str, peer: &NetworkPolicyPeer) -> Option<LabelSelector> {
    if let Some(namespace_selector) = &peer.namespace_selector {
        // Namespace labels are matched through the copies the agent puts on every pod.
        let labels_key = |key: &str| format!("{}.{key}", keys::NAMESPACE_LABELS);
        let mut combined = k8s_prefixed(&LabelSelector {
            match_labels: namespace_selector
                .match_labels
                .iter()
                .map(|(k, v)| (labels_key(k), v.clone()))
                .collect::<BTreeMap<_, _>>(),
            match_expressions: namespace_selector
                .match_expressions
                .iter()
                .map(|r| LabelSelectorRequirement {
                    key: labels_key(&r.key),
                    ..r.clone()
                })
                .collect(),
        });
        if combined.match_labels.is_empty() && combined.match_expressions.is_empty() {
            // An empty namespaceSelector selects every namespace, i.e. every pod that has one.
            combined.match_expressions.push(LabelSelectorRequirement {
                key: namespace_key(),
                operator: SelectorOperator::Exists,
                values: Vec::new(),
            });
        }
        if let Some(pod_selector) = &peer.pod_selector {
            let pods = k8s_prefixed(pod_selector);
            combined.match_labels.extend(pods.match_labels);
            combined.match_expressions.extend(pods.match_expressions);
        }
        Some(combined)
    } else if let Some(pod_selector) = &peer.pod_selector {
        // A podSelector alone selects pods of the policy's own namespace.
        let mut pods = k8s_prefixed(pod_selector);
        pods.match_labels
            .insert(namespace_key(), namespace.to_owned());
        Some(pods)
    } else {
        None
    }
}

fn ip_block_rule(block: &IpBlock) -> CidrRule {
    CidrRule {
        cidr: block.cidr.clone(),
        except: block.except.clone(),
        ..CidrRule::default()
    }
}

/// One Cilium port rule per NetworkPolicy port, as upstream's `parsePorts`.
fn port_rules(ports: &[NetworkPolicyPort]) -> Vec<PortRule> {
    ports
        .iter()
        .map(|port| PortRule {
            ports: vec![PortProtocol {
                port: port
                    .port
                    .as_ref()
                    .map_or_else(|| "0".to_owned(), IntOrString::to_string),
                end_port: port.end_port,
                protocol: Some(port.protocol.unwrap_or(L4Proto::Tcp)),
            }],
            ..PortRule::default()
        })
        .collect()
}

fn validate_peers(path: &FieldPath, peers: &[NetworkPolicyPeer]) -> Result<(), PolicyError> {
    for (i, peer) in peers.iter().enumerate() {
        let path = path.index(i);
        let has_selector = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
        match (&peer.ip_block, has_selector) {
            (None, false) => {
                return Err(PolicyError::invalid(
                    path,
                    "a peer must have podSelector, namespaceSelector or ipBlock",
                ));
            }
            (Some(_), true) => {
                return Err(PolicyError::invalid(
                    path,
                    "ipBlock may not be combined with podSelector or namespaceSelector",
                ));
            }
            (Some(block), false) => {
                validate::cidr_with_exceptions(&path.field("ipBlock"), &block.cidr, &block.except)?;
            }
            (None, true) => {}
        }
        if let Some(selector) = &peer.pod_selector {
            validate::selector(&path.field("podSelector"), selector)?;
        }
        if let Some(selector) = &peer.namespace_selector {
            validate::selector(&path.field("namespaceSelector"), selector)?;
        }
    }
    Ok(())
}

fn validate_ports(path: &FieldPath, ports: &[NetworkPolicyPort]) -> Result<(), PolicyError> {
    for (i, port) in ports.iter().enumerate() {
        let path = path.index(i);
        if let Some(protocol) = port.protocol
            && !matches!(protocol, L4Proto::Tcp | L4Proto::Udp | L4Proto::Sctp)
        {
            return Err(PolicyError::invalid(
                path.field("protocol"),
                format!("{protocol} is not allowed, expected one of TCP, UDP, SCTP"),
            ));
        }
        let start = match &port.port {
            None => None,
            Some(value) => {
                let text = value.to_string();
                match PortSpec::parse(&text) {
                    Some(PortSpec::Number(0)) | None => {
                        return Err(PolicyError::invalid(
                            path.field("port"),
                            format!("{text:?} is not a port number (1-65535) or a valid port name"),
                        ));
                    }
                    Some(spec) => Some(spec),
                }
            }
        };
        if let Some(end) = port.end_port {
            let end_path = path.field("endPort");
            let Some(PortSpec::Number(start)) = start else {
                return Err(PolicyError::invalid(
                    end_path,
                    "endPort requires a numeric port",
                ));
            };
            if !(i32::from(start)..=65535).contains(&end) {
                return Err(PolicyError::invalid(
                    end_path,
                    format!("{end} must be between port {start} and 65535"),
                ));
            }
        }
    }
    Ok(())
}
