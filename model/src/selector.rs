//! Label selectors as they appear in policy documents (`endpointSelector`, `fromEndpoints`, ...).
//!
//! The serde shape follows the Kubernetes `LabelSelector` that Cilium embeds in its policy types.
//! Keys may carry a label source (`k8s:app`, `reserved:host`, `$host`); a key without one matches
//! a label of any source, as upstream's `any:` source does. Matching follows Kubernetes: every
//! `matchLabels` pair and every `matchExpressions` requirement must hold, and `NotIn` and
//! `DoesNotExist` hold when the key is absent.
//!
//! Deserialising is lenient where upstream documents are (`matchLabels: null`, operators in any
//! letter case); [`LabelSelector::validate`] is where malformed selectors are rejected.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

use crate::labels::{self, Label, LabelError, Labels, keys, source};

/// Errors from [`LabelSelector::validate`]; `field` names the offending field, e.g.
/// `matchExpressions[1].values`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("{field}: selector key {key:?} is invalid: {reason}")]
    InvalidKey {
        field: String,
        key: String,
        #[source]
        reason: LabelError,
    },
    #[error("{field}: selector value {value:?} is invalid: {reason}")]
    InvalidValue {
        field: String,
        value: String,
        #[source]
        reason: LabelError,
    },
    #[error(
        "unknown selector operator {operator:?}, expected one of In, NotIn, Exists, DoesNotExist"
    )]
    UnknownOperator { operator: String },
    #[error("{field}: operator {operator} needs at least one value")]
    MissingValues {
        field: String,
        operator: SelectorOperator,
    },
    #[error("{field}: operator {operator} takes no values")]
    UnexpectedValues {
        field: String,
        operator: SelectorOperator,
    },
}

/// A label selector: every `matchLabels` pair and every `matchExpressions` requirement must hold.
/// An empty selector selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub match_labels: BTreeMap<String, String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: SelectorOperator,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub values: Vec<String>,
}

/// The set-based operators of a `matchExpressions` requirement. Serialised with Kubernetes'
/// spelling; deserialised case-insensitively because upstream's own examples write `in`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl SelectorOperator {
    /// Every operator, in Kubernetes' spelling.
    pub const NAMES: &'static [&'static str] = &["In", "NotIn", "Exists", "DoesNotExist"];

    pub const fn as_str(self) -> &'static str {
        match self {
            SelectorOperator::In => "In",
            SelectorOperator::NotIn => "NotIn",
            SelectorOperator::Exists => "Exists",
            SelectorOperator::DoesNotExist => "DoesNotExist",
        }
    }

    /// Whether the operator compares against `values` (and so needs at least one).
    pub const fn takes_values(self) -> bool {
        matches!(self, SelectorOperator::In | SelectorOperator::NotIn)
    }
}

impl fmt::Display for SelectorOperator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Case-insensitive: `in`, `IN` and `In` are all [`SelectorOperator::In`].
impl FromStr for SelectorOperator {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            SelectorOperator::In,
            SelectorOperator::NotIn,
            SelectorOperator::Exists,
            SelectorOperator::DoesNotExist,
        ]
        .into_iter()
        .find(|op| op.as_str().eq_ignore_ascii_case(s))
        .ok_or_else(|| SelectorError::UnknownOperator {
            operator: s.to_owned(),
        })
    }
}

impl<'de> Deserialize<'de> for SelectorOperator {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse()
            .map_err(|_| serde::de::Error::unknown_variant(&name, Self::NAMES))
    }
}

/// Upstream documents write `matchLabels:` with nothing after it (YAML null); Go reads that as
/// an empty map, and so do we.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A parsed selector key: the source it requires (`None` for any source) and the label key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SelectorKey {
    pub source: Option<String>,
    pub key: String,
}

impl SelectorKey {
    /// Parses and validates a selector key: `k8s:app`, `reserved:host`, `$host`, `any:app` or a
    /// plain `app` (any source).
    pub fn parse(raw: &str) -> Result<Self, LabelError> {
        let (source, key) = split_key(raw);
        if let Some(source) = source {
            labels::check_source(raw, source)?;
        }
        labels::check_key(raw, key)?;
        Ok(Self {
            source: source.map(str::to_owned),
            key: key.to_owned(),
        })
    }

    /// Whether `label` has this key and, if the selector names a source, that source.
    pub fn matches(&self, label: &Label) -> bool {
        label.key == self.key && self.source.as_ref().is_none_or(|s| *s == label.source)
    }
}

/// `source:key`, with `any` standing for "any source".
impl fmt::Display for SelectorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = self.source.as_deref().unwrap_or(source::ANY);
        write!(f, "{source}:{}", self.key)
    }
}

/// Splits a raw selector key without validating it; `any` (and no source) mean any source.
fn split_key(raw: &str) -> (Option<&str>, &str) {
    match labels::split_source(raw) {
        (Some(source::ANY), key) | (None, key) => (None, key),
        (Some(source), key) => (Some(source), key),
    }
}

/// The label a raw selector key refers to in `labels`, honouring the key's source.
fn lookup<'a>(labels: &'a Labels, raw_key: &str) -> Option<&'a Label> {
    let (source, key) = split_key(raw_key);
    labels
        .get(key)
        .filter(|label| source.is_none_or(|s| label.source == s))
}

impl LabelSelector {
    /// A selector whose `matchLabels` require exactly these labels, sources included.
    pub fn from_labels(labels: &Labels) -> Self {
        Self {
            match_labels: labels
                .iter()
                .map(|l| (format!("{}:{}", l.source, l.key), l.value.clone()))
                .collect(),
            match_expressions: Vec::new(),
        }
    }

    /// Whether the selector has no requirements and so selects every label set.
    pub fn selects_all(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Whether the selector mentions `io.cilium.k8s.policy.cluster`. Selectors without it select
    /// only endpoints of the local cluster once ClusterMesh scoping applies.
    pub fn has_cluster_key(&self) -> bool {
        self.match_labels
            .keys()
            .chain(self.match_expressions.iter().map(|r| &r.key))
            .any(|raw| split_key(raw).1 == keys::POLICY_CLUSTER)
    }

    /// Whether the label set satisfies every requirement. Never fails: a key that
    /// [`validate`](Self::validate) would reject simply matches no label.
    pub fn matches(&self, labels: &Labels) -> bool {
        let labels_hold = self
            .match_labels
            .iter()
            .all(|(key, value)| lookup(labels, key).is_some_and(|l| l.value == *value));
        labels_hold && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// Checks keys, values and operator/value combinations; the error names the field.
    pub fn validate(&self) -> Result<(), SelectorError> {
        for (key, value) in &self.match_labels {
            let field = format!("matchLabels[{key:?}]");
            check_selector_key(&field, key)?;
            check_selector_value(&field, value)?;
        }
        for (i, requirement) in self.match_expressions.iter().enumerate() {
            requirement.validate(&format!("matchExpressions[{i}]"))?;
        }
        Ok(())
    }

    /// The requirements in canonical form: normalised keys, `matchLabels` as single-value `In`,
    /// sorted and deduplicated values, sorted and deduplicated requirements.
    fn canonical_requirements(&self) -> Vec<(String, SelectorOperator, Vec<&str>)> {
        let normalise = |raw: &str| {
            let (source, key) = split_key(raw);
            format!("{}:{key}", source.unwrap_or(source::ANY))
        };
        let mut requirements: Vec<_> = self
            .match_labels
            .iter()
            .map(|(key, value)| (normalise(key), SelectorOperator::In, vec![value.as_str()]))
            .chain(self.match_expressions.iter().map(|r| {
                let mut values: Vec<&str> = r.values.iter().map(String::as_str).collect();
                values.sort_unstable();
                values.dedup();
                (normalise(&r.key), r.operator, values)
            }))
            .collect();
        requirements.sort();
        requirements.dedup();
        requirements
    }
}

/// A canonical rendering used as the selector cache key: selectors that differ only in how they
/// spell the same requirements (`app` vs `any:app`, `matchLabels` vs a one-value `In`, value
/// order, duplicates) render the same. Keys and values are quoted and escaped so that different
/// requirements never render the same, e.g. `{"any:app" In ["web"], "k8s:tier" Exists}`.
impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (key, operator, values)) in self.canonical_requirements().iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{key:?} {operator}")?;
            if operator.takes_values() || !values.is_empty() {
                write!(f, " {values:?}")?;
            }
        }
        f.write_str("}")
    }
}

impl LabelSelectorRequirement {
    /// Kubernetes semantics: `NotIn` and `DoesNotExist` hold when the key is absent.
    pub fn matches(&self, labels: &Labels) -> bool {
        let label = lookup(labels, &self.key);
        let value_listed = || label.is_some_and(|l| self.values.contains(&l.value));
        match self.operator {
            SelectorOperator::In => value_listed(),
            SelectorOperator::NotIn => !value_listed(),
            SelectorOperator::Exists => label.is_some(),
            SelectorOperator::DoesNotExist => label.is_none(),
        }
    }

    fn validate(&self, field: &str) -> Result<(), SelectorError> {
        check_selector_key(&format!("{field}.key"), &self.key)?;
        let values_field = format!("{field}.values");
        match (self.operator.takes_values(), self.values.is_empty()) {
            (true, true) => Err(SelectorError::MissingValues {
                field: values_field,
                operator: self.operator,
            }),
            (false, false) => Err(SelectorError::UnexpectedValues {
                field: values_field,
                operator: self.operator,
            }),
            _ => self
                .values
                .iter()
                .try_for_each(|value| check_selector_value(&values_field, value)),
        }
    }
}

fn check_selector_key(field: &str, key: &str) -> Result<(), SelectorError> {
    SelectorKey::parse(key)
        .map(drop)
        .map_err(|reason| SelectorError::InvalidKey {
            field: field.to_owned(),
            key: key.to_owned(),
            reason,
        })
}

fn check_selector_value(field: &str, value: &str) -> Result<(), SelectorError> {
    labels::check_value(value, value).map_err(|reason| SelectorError::InvalidValue {
        field: field.to_owned(),
        value: value.to_owned(),
        reason,
    })
}
