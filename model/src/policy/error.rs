//! Errors of policy parsing, validation, support checking and translation.
//!
//! Every variant that is about a particular field carries its path in upstream's JSON spelling
//! (`spec.ingress[0].toPorts[0].ports[0].port`), so a user can find the offending line in the
//! document they wrote.

use std::fmt;

use crate::selector::SelectorError;

/// An error from reading, validating, support-checking or translating a policy document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The input is not YAML/JSON, or a document does not have the shape of its kind (a wrong
    /// type for a known field, an unknown field inside a rule). The message comes from the YAML
    /// reader and names the field path and the line.
    #[error("{message}")]
    Parse { message: String },

    /// A document is not a mapping (or a list of mappings), so it cannot be a Kubernetes object.
    #[error("a document must be an object with `apiVersion` and `kind`, found {found}")]
    NotAnObject { found: &'static str },

    /// A Kubernetes object without `kind`.
    #[error("the object has no `kind`")]
    MissingKind,

    /// A Kubernetes object of a kind that is not a network policy (Service, Deployment, ...).
    #[error(
        "kind {kind:?} is not a policy (expected CiliumNetworkPolicy, \
         CiliumClusterwideNetworkPolicy or NetworkPolicy)"
    )]
    NotAPolicy { kind: String },

    /// A policy kind with an `apiVersion` that does not define that kind.
    #[error("apiVersion {api_version:?} does not define kind {kind}, expected one of {expected}")]
    UnknownApiVersion {
        kind: &'static str,
        api_version: String,
        expected: &'static str,
    },

    /// A field holds a value the policy language does not allow.
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },

    /// A label selector is malformed; `path` is where the selector sits in the document.
    // The selector's error is part of this message, not a `source()`: printing the chain
    // would otherwise say it twice.
    #[error("{path}.{error}")]
    Selector {
        path: String,
        error: Box<SelectorError>,
    },

    /// The document is valid Cilium policy but uses a feature this project does not enforce yet.
    /// Importing it would silently enforce less than the author asked for, so it is refused.
    #[error("{path}: {feature} are not supported")]
    Unsupported { path: String, feature: Feature },

    /// An error inside one document of a multi-document input. `document` is 1-based and counts
    /// YAML documents (`---`); `item` is the 0-based position inside a JSON array or a `List`.
    // As for `Selector`, the inner error is part of the message, not a `source()`.
    #[error("{}: {error}", DocumentPosition::new(.document, .item))]
    Document {
        document: usize,
        item: Option<usize>,
        error: Box<PolicyError>,
    },
}

impl PolicyError {
    pub(crate) fn invalid(path: impl fmt::Display, reason: impl Into<String>) -> Self {
        PolicyError::Invalid {
            path: path.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn unsupported(path: impl fmt::Display, feature: Feature) -> Self {
        PolicyError::Unsupported {
            path: path.to_string(),
            feature,
        }
    }

    /// The error without its [`PolicyError::Document`] wrappers: what actually went wrong.
    pub fn innermost(&self) -> &PolicyError {
        match self {
            PolicyError::Document { error, .. } => error.innermost(),
            other => other,
        }
    }

    /// Whether the input was refused only because it uses a feature that is not implemented
    /// yet (as opposed to being malformed or invalid).
    pub fn is_unsupported(&self) -> bool {
        matches!(self.innermost(), PolicyError::Unsupported { .. })
    }
}

struct DocumentPosition {
    document: usize,
    item: Option<usize>,
}

impl DocumentPosition {
    fn new(document: &usize, item: &Option<usize>) -> Self {
        DocumentPosition {
            document: *document,
            item: *item,
        }
    }
}

impl fmt::Display for DocumentPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        if let Some(item) = self.item {
            write!(f, ", item {item}")?;
        }
        Ok(())
    }
}

/// A policy feature that parses and validates but is not enforced by this project yet.
///
/// The list shrinks as milestones land; [`super::PolicyDocument::check_supported`] is the only
/// place that refuses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    /// `nodeSelector`: policies that apply to the host (nodes) rather than endpoints.
    HostPolicy,
    /// `rules.http`.
    L7Http,
    /// `rules.kafka`.
    L7Kafka,
    /// `rules.dns`.
    L7Dns,
    /// `rules.l7proto` / `rules.l7`.
    L7Generic,
    /// `toFQDNs`.
    Fqdn,
    /// `toServices`.
    Services,
    /// `fromRequires` / `toRequires`.
    Requires,
    /// `fromNodes` / `toNodes`.
    Nodes,
    /// `fromGroups` / `toGroups`.
    Groups,
    /// `cidrGroupRef` / `cidrGroupSelector` in a CIDR set.
    CidrGroups,
    /// `listener` (redirect to an Envoy listener).
    Listener,
    /// `serverNames` (TLS SNI matching).
    ServerNames,
    /// `terminatingTLS` / `originatingTLS`.
    TlsContext,
    /// `authentication` (and the older `auth`).
    Authentication,
    /// Port-less IP protocols (`VRRP`, `IGMP`) in `toPorts`.
    ExtendedIpProtocols,
}

impl Feature {
    /// The feature as a plural noun phrase, as it appears in [`PolicyError::Unsupported`].
    pub const fn description(self) -> &'static str {
        match self {
            Feature::HostPolicy => "host policies (nodeSelector)",
            Feature::L7Http => "L7 HTTP rules",
            Feature::L7Kafka => "L7 Kafka rules",
            Feature::L7Dns => "L7 DNS rules",
            Feature::L7Generic => "generic L7 rules (l7proto)",
            Feature::Fqdn => "FQDN selectors (toFQDNs)",
            Feature::Services => "service selectors (toServices)",
            Feature::Requires => "requirement selectors (fromRequires/toRequires)",
            Feature::Nodes => "node selectors (fromNodes/toNodes)",
            Feature::Groups => "cloud provider groups (fromGroups/toGroups)",
            Feature::CidrGroups => "CIDR group references (cidrGroupRef/cidrGroupSelector)",
            Feature::Listener => "Envoy listener redirects (listener)",
            Feature::ServerNames => "TLS server name matches (serverNames)",
            Feature::TlsContext => "TLS contexts (terminatingTLS/originatingTLS)",
            Feature::Authentication => "authentication requirements",
            Feature::ExtendedIpProtocols => "port-less IP protocols (VRRP, IGMP)",
        }
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}
