//! Label selectors as they appear in policy documents (`endpointSelector`, `fromEndpoints`, ...).
//!
//! The serde shape follows the Kubernetes `LabelSelector` that Cilium embeds in its policy types.
//! Keys may carry a label source (`k8s:app`, `reserved:host`); a key without one matches a label
//! of any source, as upstream's `any:` source does.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A label selector: every `matchLabels` pair and every `matchExpressions` requirement must hold.
/// An empty selector selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: SelectorOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// The set-based operators of a `matchExpressions` requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}
