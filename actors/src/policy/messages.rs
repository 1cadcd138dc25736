//! What the policy repository receives and sends, the plain data those messages carry, its
//! errors and the snapshot it answers [`Dump`] with. Everything here can be built, cloned and
//! compared in a test.

use std::fmt;

use actix::Message;
use datapath::api::{EndpointId, Protocol};
use ipnet::IpNet;
use model::identity::NumericIdentity;
use model::labels::{Label, Labels};
use model::policy::{PolicyDocument, Rule};
use serde::{Deserialize, Serialize};

use super::selector_cache::SelectorId;
use super::state::EnforcementMode;
use super::store::PolicyStoreError;

/// The policy repository's revision: it starts at 1 and grows by one with every change of
/// the rule set (import or delete), as upstream's repository revision does. Identity changes
/// do not bump it: they change which peers a rule selects, not the rules.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Revision(u64);

impl Revision {
    /// The revision of an empty repository.
    pub const INITIAL: Revision = Revision(1);

    pub const fn new(revision: u64) -> Self {
        Revision(revision)
    }

    pub const fn get(self) -> u64 {
        self.0
    }

    pub(crate) fn next(self) -> Revision {
        Revision(self.0.saturating_add(1))
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A named container port of an endpoint (`ports[].name` of a pod), which `toPorts` may refer
/// to by name instead of number.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NamedPort {
    /// Compared case-insensitively, as policy port names are.
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// Errors of the policy repository. Import and delete are all or nothing: an error means the
/// repository did not change.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A policy document could not be turned into rules (invalid or unsupported).
    // The inner error is part of the message rather than a `source()`, so that printing the
    // error chain does not repeat it.
    #[error("policy document {index} ({name}): {error}")]
    Document {
        /// 0-based position in the import.
        index: usize,
        name: String,
        error: Box<PolicyError>,
    },
    /// One rule of an import is not enforceable.
    #[error("rule {index}: {error}")]
    Rule {
        /// 0-based position among the rules of the import (or of its document).
        index: usize,
        error: Box<PolicyError>,
    },
    /// Validation or the support check of the policy language refused the input.
    #[error(transparent)]
    Model(#[from] model::policy::PolicyError),
    #[error("the rule has no endpointSelector: host policies (nodeSelector) are not supported")]
    MissingEndpointSelector,
    #[error("{cidr:?} is not an IP address or CIDR prefix")]
    InvalidCidr { cidr: String },
    #[error("icmp type {icmp_type:?} is not a type number or name of its family")]
    InvalidIcmpType { icmp_type: String },
    #[error("endPort {end_port} is not a port between {port} and 65535")]
    InvalidEndPort { port: u16, end_port: i32 },
    #[error("invalid policy key")]
    InvalidKey(#[from] datapath::api::PolicyKeyError),
    #[error("no rule has all of the labels [{labels}]")]
    NotFound { labels: String },
    #[error("revision {requested} does not exist yet: the repository is at revision {current}")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    #[error("the policy repository stopped before revision {revision} was realized")]
    WaitCancelled { revision: Revision },
    #[error("endpoint {endpoint} is not known to the policy repository")]
    UnknownEndpoint { endpoint: EndpointId },
    /// Persisting the rules failed; the change was not applied.
    #[error("the policy rules could not be persisted, nothing changed")]
    Persist(#[source] PolicyStoreError),
    #[error("the persisted policy rules could not be loaded")]
    Load(#[source] PolicyStoreError),
    /// A persisted rule no longer imports (for example after an upgrade narrowed support).
    #[error("the persisted policy rules could not be restored")]
    Restore(#[source] Box<PolicyError>),
}

/// Where imported rules come from.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicySource {
    /// Parsed policy documents (`cilium-dbg policy import`, the kvstore or Kubernetes
    /// watchers). Each document replaces the rules of an earlier document with the same kind,
    /// name and namespace, atomically.
    Documents(Vec<PolicyDocument>),
    /// Rules with their labels already set (for example the output of
    /// [`PolicyDocument::to_rules`]). They replace earlier rules with exactly the same labels.
    Rules(Vec<Rule>),
}

/// Adds or replaces rules. Answers with the new repository revision.
#[derive(Debug, Clone, PartialEq, Message)]
#[rtype(result = "Result<Revision, PolicyError>")]
pub struct PolicyImport {
    pub source: PolicySource,
}

/// Deletes every rule that carries all of `labels` (every rule when `labels` is empty, as
/// `cilium-dbg policy delete --all`). [`policy_name_labels`] builds the labels that name one
/// policy.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "Result<PolicyDeleted, PolicyError>")]
pub struct PolicyDelete {
    pub labels: Vec<Label>,
}

/// The answer to [`PolicyDelete`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDeleted {
    pub revision: Revision,
    /// How many rules were removed.
    pub deleted: usize,
}

/// The labels that identify the rules of one policy object: its name and, for namespaced
/// policies, its namespace (upstream's `io.cilium.k8s.policy.name` and `...namespace`).
pub fn policy_name_labels(name: &str, namespace: Option<&str>) -> Vec<Label> {
    let mut labels = vec![Label::k8s(model::policy::POLICY_LABEL_NAME, name)];
    if let Some(namespace) = namespace {
        labels.push(Label::k8s(model::policy::POLICY_LABEL_NAMESPACE, namespace));
    }
    labels
}

/// Identities that appeared or changed labels (from the allocator, remote clusters, or local
/// CIDR identities).
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct IdentityAdded {
    pub identities: Vec<(NumericIdentity, Labels)>,
}

/// Identities that are gone.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct IdentityRemoved {
    pub identities: Vec<NumericIdentity>,
}

/// An endpoint wants (or needs a new) policy: it was created, restored, or its labels or
/// named ports changed. Answers with the repository revision its policy was computed at; the
/// entries go to the datapath as [`datapath::reconciler::messages::SetEndpointPolicy`].
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "Revision")]
pub struct EndpointPolicyWanted {
    pub endpoint: EndpointId,
    pub identity: NumericIdentity,
    /// The labels of the endpoint's identity; rules select endpoints by these.
    pub labels: Labels,
    pub named_ports: Vec<NamedPort>,
}

/// The endpoint is gone. The repository forgets it; removing its policy map is the endpoint
/// manager's job (it detaches the endpoint from the datapath).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct EndpointRemoved {
    pub endpoint: EndpointId,
}

/// Waits until every endpoint's policy at `revision` (or later) has been handed to the
/// datapath; answers with the lowest revision realized on the node at that moment. A revision
/// the repository has not reached yet is an error rather than an endless wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "Result<Revision, PolicyError>")]
pub struct PolicyWait {
    pub revision: Revision,
}

/// Waits until one endpoint's policy at `revision` (or later) has been handed to the
/// datapath; answers with the revision the endpoint has realized. Unlike [`PolicyWait`] it
/// does not wait behind other endpoints, so a pod's creation is not slowed by a busy
/// neighbour. Fails for a revision the repository has not reached and for an endpoint it does
/// not know (or that is removed while waiting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "Result<Revision, PolicyError>")]
pub struct EndpointPolicyWait {
    pub endpoint: EndpointId,
    pub revision: Revision,
}

/// What the policy store persists: the rules with their labels, in import order, and the
/// revision they were at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicySnapshot {
    pub revision: Revision,
    pub rules: Vec<Rule>,
}

/// Asks for a snapshot of the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "PolicyDump")]
pub struct Dump;

/// Sent to the identity side when the set of CIDR prefixes named by the rules changes.
///
/// Upstream allocates a local-scope identity for every prefix a policy names (`toCIDR`,
/// `toCIDRSet` and its `except` prefixes) when the policy is imported, and upserts the prefix
/// into the ipcache so that traffic to those addresses carries that identity. The identity
/// side does the same on this message: allocate (or release) a local identity with
/// [`Labels::for_cidr`], upsert (or delete) the ipcache entry, and announce the identity back
/// with `IdentitiesChanged` (the identity actor handles this message itself, see
/// `crate::identity`), which is when CIDR selectors start (or
/// stop) selecting it. Except prefixes get identities too, so that their addresses resolve
/// to an identity the CIDR selector excludes rather than to the broader allowed prefix.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct CidrIdentitiesWanted {
    /// Prefixes that rules now name and did not before.
    pub added: Vec<IpNet>,
    /// Prefixes no rule names any more.
    pub removed: Vec<IpNet>,
}

/// The repository as the CLI (`cilium-dbg policy get`, `policy selectors`) and tests read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyDump {
    pub revision: Revision,
    /// The lowest revision realized by every endpoint (the current revision without
    /// endpoints).
    pub realized_revision: Revision,
    pub enforcement: EnforcementMode,
    /// In import order.
    pub rules: Vec<RuleDump>,
    pub selectors: Vec<SelectorDump>,
    pub endpoints: Vec<EndpointDump>,
    /// The CIDR prefixes rules name, for which identities were requested.
    pub cidr_prefixes: Vec<IpNet>,
    /// How many identities the node knows (reserved ones included).
    pub identities: usize,
}

/// One rule in a [`PolicyDump`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleDump {
    /// The rule's labels as `source:key=value` strings.
    pub labels: Vec<String>,
    pub rule: Rule,
}

/// One cached selector in a [`PolicyDump`] (`cilium-dbg policy selectors`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelectorDump {
    pub id: SelectorId,
    pub selector: String,
    pub identities: Vec<NumericIdentity>,
    /// How many rule peers use it.
    pub users: usize,
}

/// One endpoint in a [`PolicyDump`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointDump {
    pub endpoint: EndpointId,
    pub identity: NumericIdentity,
    /// The repository revision the endpoint's entries were computed at.
    pub revision: Revision,
    /// The revision the datapath has accepted; `None` before the first acknowledgement.
    pub realized_revision: Option<Revision>,
    pub ingress_enforced: bool,
    pub egress_enforced: bool,
    pub entries: usize,
}
