//! Policy documents: CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy and Kubernetes
//! NetworkPolicy, from text to the rules the policy engine enforces.
//!
//! Four steps, each its own function so that callers (the agent's REST API, `cilium-dbg
//! policy import`, the kvstore policy watcher) can stop where they need to:
//!
//! 1. **Parse** ([`parse_documents`], [`parse_documents_lenient`]): YAML or JSON, one or many
//!    documents, dispatched on `kind`; the shape must match upstream's (a wrong type for a
//!    known field is an error naming the field path).
//! 2. **Validate** ([`PolicyDocument::validate`], run by the parsers): the language's rules as
//!    upstream enforces them (ports, CIDRs, selectors, endpointSelector xor nodeSelector, ...).
//! 3. **Support check** ([`PolicyDocument::check_supported`]): refuse valid features this
//!    project does not enforce yet, naming the feature. Separate from validation so that each
//!    milestone only shrinks one list.
//! 4. **Effective rules** ([`PolicyDocument::to_rules`]): the rules with namespace scoping
//!    and origin labels, as upstream's agent derives them (NetworkPolicy is translated).
//!
//! # Layout
//! - `cilium`: the Cilium document types and [`Rule`] with everything it can hold.
//! - `k8s`: Kubernetes NetworkPolicy and its translation into a [`Rule`].
//! - `meta`: object metadata and Kubernetes' name rules.
//! - `document`: multi-document YAML/JSON reading and kind dispatch.
//! - `validate`, `support`: steps 2 and 3; `scope`: step 4 for Cilium documents.
//! - `de`, `path`, `error`: serde helpers, field paths, [`PolicyError`].

mod cilium;
mod de;
mod document;
mod error;
mod k8s;
mod meta;
mod path;
mod scope;
mod support;
mod validate;

use std::fmt;

use serde::Deserialize;

pub use cilium::{
    Authentication, AwsGroup, CidrRule, CiliumClusterwideNetworkPolicy, CiliumNetworkPolicy,
    DefaultDenyConfig, EgressDenyRule, EgressRule, Entity, EnvoyConfigRef, FqdnSelector, Groups,
    HeaderMatch, HttpRule, IcmpFamily, IcmpField, IcmpRule, IngressDenyRule, IngressRule,
    KafkaRule, L4Proto, L7Rules, LegacyAuth, Listener, LogConfig, PortDenyRule, PortProtocol,
    PortRule, PortSpec, Rule, SecretRef, Service, ServiceName, ServiceSelector, TlsContext,
    UnknownProtocol, is_iana_service_name,
};
pub use de::IntOrString;
pub use document::{ParsedDocuments, SkippedDocument, parse_documents, parse_documents_lenient};
pub use error::{Feature, PolicyError};
pub use k8s::{
    IpBlock, NETWORK_POLICY_KIND, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule,
    NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec, PolicyType,
};
pub use meta::ObjectMeta;
pub use scope::{
    POLICY_LABEL_DERIVED_FROM, POLICY_LABEL_NAME, POLICY_LABEL_NAMESPACE, POLICY_LABEL_UID,
};
pub use validate::icmp_type_number;

/// The three policy kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    CiliumNetworkPolicy,
    CiliumClusterwideNetworkPolicy,
    NetworkPolicy,
}

impl PolicyKind {
    /// The `kind` string.
    pub const fn as_str(self) -> &'static str {
        match self {
            PolicyKind::CiliumNetworkPolicy => "CiliumNetworkPolicy",
            PolicyKind::CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
            PolicyKind::NetworkPolicy => NETWORK_POLICY_KIND,
        }
    }

    /// The kind named by a `kind` string, if it is a policy kind.
    pub fn from_kind(kind: &str) -> Option<PolicyKind> {
        [
            PolicyKind::CiliumNetworkPolicy,
            PolicyKind::CiliumClusterwideNetworkPolicy,
            PolicyKind::NetworkPolicy,
        ]
        .into_iter()
        .find(|k| k.as_str() == kind)
    }

    /// The `apiVersion`s that define the kind; the first is the current one. `cilium.io/v1`
    /// and `extensions/v1beta1` are legacy spellings still found in upstream examples.
    pub const fn api_versions(self) -> &'static [&'static str] {
        match self {
            PolicyKind::CiliumNetworkPolicy | PolicyKind::CiliumClusterwideNetworkPolicy => {
                &["cilium.io/v2", "cilium.io/v1"]
            }
            PolicyKind::NetworkPolicy => &["networking.k8s.io/v1", "extensions/v1beta1"],
        }
    }

    /// Checks an `apiVersion` (absent is accepted: the kind alone is unambiguous).
    pub(crate) fn check_api_version(self, api_version: &str) -> Result<(), PolicyError> {
        if api_version.is_empty() || self.api_versions().contains(&api_version) {
            return Ok(());
        }
        Err(PolicyError::UnknownApiVersion {
            kind: self.as_str(),
            api_version: api_version.to_owned(),
            expected: match self {
                PolicyKind::NetworkPolicy => "networking.k8s.io/v1, extensions/v1beta1",
                _ => "cilium.io/v2, cilium.io/v1",
            },
        })
    }

    fn deserialize_document<'de, D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<PolicyDocument, D::Error> {
        Ok(match self {
            PolicyKind::CiliumNetworkPolicy => {
                PolicyDocument::Cnp(CiliumNetworkPolicy::deserialize(deserializer)?)
            }
            PolicyKind::CiliumClusterwideNetworkPolicy => {
                PolicyDocument::Ccnp(CiliumClusterwideNetworkPolicy::deserialize(deserializer)?)
            }
            PolicyKind::NetworkPolicy => {
                PolicyDocument::NetworkPolicy(NetworkPolicy::deserialize(deserializer)?)
            }
        })
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One policy document of any of the three kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyDocument {
    Cnp(CiliumNetworkPolicy),
    Ccnp(CiliumClusterwideNetworkPolicy),
    NetworkPolicy(NetworkPolicy),
}

impl PolicyDocument {
    pub fn kind(&self) -> PolicyKind {
        match self {
            PolicyDocument::Cnp(_) => PolicyKind::CiliumNetworkPolicy,
            PolicyDocument::Ccnp(_) => PolicyKind::CiliumClusterwideNetworkPolicy,
            PolicyDocument::NetworkPolicy(_) => PolicyKind::NetworkPolicy,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            PolicyDocument::Cnp(p) => &p.metadata,
            PolicyDocument::Ccnp(p) => &p.metadata,
            PolicyDocument::NetworkPolicy(p) => &p.metadata,
        }
    }

    /// `metadata.name` (validated documents always have one; empty otherwise).
    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or_default()
    }

    /// `metadata.namespace` as written; `None` for cluster-wide policies and for namespaced
    /// ones that do not name a namespace (see [`PolicyDocument::effective_namespace`]).
    pub fn namespace(&self) -> Option<&str> {
        self.metadata()
            .namespace
            .as_deref()
            .filter(|ns| !ns.is_empty())
    }

    /// The namespace the policy applies in: its own, `default` for a namespaced policy that
    /// does not name one (as the API server would), `None` for a cluster-wide policy.
    pub fn effective_namespace(&self) -> Option<&str> {
        match self {
            PolicyDocument::Cnp(p) => Some(p.effective_namespace()),
            PolicyDocument::NetworkPolicy(p) => Some(p.effective_namespace()),
            PolicyDocument::Ccnp(_) => None,
        }
    }

    /// The Cilium rules as written, without namespace scoping or origin labels. A
    /// NetworkPolicy has no Cilium rules of its own: its translation is returned, which is
    /// scoped by construction.
    pub fn rules(&self) -> Vec<Rule> {
        match self {
            PolicyDocument::Cnp(p) => p.rules().cloned().collect(),
            PolicyDocument::Ccnp(p) => p.rules().cloned().collect(),
            PolicyDocument::NetworkPolicy(p) => vec![p.translate()],
        }
    }

    /// Checks the document; errors name the field path. The parsers run this on every
    /// document they return.
    pub fn validate(&self) -> Result<(), PolicyError> {
        match self {
            PolicyDocument::Cnp(p) => p.validate(),
            PolicyDocument::Ccnp(p) => p.validate(),
            PolicyDocument::NetworkPolicy(p) => p.validate(),
        }
    }

    /// Refuses features this project does not enforce yet ([`PolicyError::Unsupported`]).
    /// Assumes a validated document.
    pub fn check_supported(&self) -> Result<(), PolicyError> {
        let spec = path::FieldPath::root().field("spec");
        match self {
            PolicyDocument::Cnp(p) => check_rules_supported(p.spec.as_ref(), &p.specs),
            PolicyDocument::Ccnp(p) => check_rules_supported(p.spec.as_ref(), &p.specs),
            // Everything a NetworkPolicy can say translates into supported rule features;
            // checking the translation keeps that true if the translation grows.
            PolicyDocument::NetworkPolicy(p) => support::rule(&spec, &p.translate()),
        }
    }

    /// The rules the agent enforces for this document: validated, every selector scoped to
    /// the policy's namespace as upstream does, and labelled with the policy's origin
    /// (`io.cilium.k8s.policy.name`, ...).
    pub fn to_rules(&self) -> Result<Vec<Rule>, PolicyError> {
        match self {
            PolicyDocument::Cnp(p) => p.to_rules(),
            PolicyDocument::Ccnp(p) => p.to_rules(),
            PolicyDocument::NetworkPolicy(p) => p.to_rules(),
        }
    }
}

fn check_rules_supported(spec: Option<&Rule>, specs: &[Rule]) -> Result<(), PolicyError> {
    let root = path::FieldPath::root();
    if let Some(rule) = spec {
        support::rule(&root.field("spec"), rule)?;
    }
    for (i, rule) in specs.iter().enumerate() {
        support::rule(&root.field("specs").index(i), rule)?;
    }
    Ok(())
}
