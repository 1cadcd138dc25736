//! Serde helpers for the policy document types.
//!
//! Two upstream behaviours are reproduced here. Go's JSON decoder (and the Kubernetes API
//! server, which prunes nulls) treats `field: null` like an absent field, so lists and maps
//! accept `null`. And selectors are read strictly: a key next to `matchLabels` instead of under
//! it (an indentation slip that upstream's decoder would silently drop, turning the selector
//! into a wildcard) is an error that names the field.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::labels::{Label, source};
use crate::selector::{LabelSelector, LabelSelectorRequirement, SelectorOperator};

/// Reads `null` (or an absent field, with `#[serde(default)]`) as the type's default.
pub(crate) fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A label selector that refuses unknown fields; otherwise the shape of [`LabelSelector`].
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StrictSelector {
    #[serde(default, deserialize_with = "null_as_default")]
    match_labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_as_default")]
    match_expressions: Vec<StrictRequirement>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StrictRequirement {
    key: String,
    operator: SelectorOperator,
    #[serde(default, deserialize_with = "null_as_default")]
    values: Vec<String>,
}

impl From<StrictSelector> for LabelSelector {
    fn from(strict: StrictSelector) -> Self {
        LabelSelector {
            match_labels: strict.match_labels,
            match_expressions: strict
                .match_expressions
                .into_iter()
                .map(|r| LabelSelectorRequirement {
                    key: r.key,
                    operator: r.operator,
                    values: r.values,
                })
                .collect(),
        }
    }
}

/// A required selector field (`podSelector`); `null` is the empty selector.
pub(crate) fn selector<'de, D>(deserializer: D) -> Result<LabelSelector, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(Option::<StrictSelector>::deserialize(deserializer)?
        .map(LabelSelector::from)
        .unwrap_or_default())
}

/// An optional selector field (`endpointSelector`, `namespaceSelector`); `null` is absent.
pub(crate) fn opt_selector<'de, D>(deserializer: D) -> Result<Option<LabelSelector>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(Option::<StrictSelector>::deserialize(deserializer)?.map(LabelSelector::from))
}

/// A list of selectors (`fromEndpoints`, ...); `null` is the empty list.
pub(crate) fn selectors<'de, D>(deserializer: D) -> Result<Vec<LabelSelector>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(Option::<Vec<StrictSelector>>::deserialize(deserializer)?
        .unwrap_or_default()
        .into_iter()
        .map(LabelSelector::from)
        .collect())
}

/// Kubernetes' `IntOrString`, used for NetworkPolicy ports and ICMP types.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IntOrString {
    Int(i64),
    String(String),
}

impl fmt::Display for IntOrString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntOrString::Int(n) => write!(f, "{n}"),
            IntOrString::String(s) => f.write_str(s),
        }
    }
}

impl Serialize for IntOrString {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            IntOrString::Int(n) => serializer.serialize_i64(*n),
            IntOrString::String(s) => serializer.serialize_str(s),
        }
    }
}

impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IntOrStringVisitor;

        impl Visitor<'_> for IntOrStringVisitor {
            type Value = IntOrString;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or a string")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(IntOrString::Int(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i64::try_from(v)
                    .map(IntOrString::Int)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(IntOrString::String(v.to_owned()))
            }
        }

        deserializer.deserialize_any(IntOrStringVisitor)
    }
}

/// Rule labels as upstream accepts them: either the label object (`{key, value, source}`) or
/// the string form `source:key=value`.
pub(crate) fn rule_labels<'de, D>(deserializer: D) -> Result<Vec<Label>, D::Error>
where
    D: Deserializer<'de>,
{
    struct LabelVisitor;

    impl<'de> Visitor<'de> for LabelVisitor {
        type Value = Label;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a label object or a `source:key=value` string")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Label::parse(v).map_err(E::custom)
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct LabelFields {
                key: String,
                #[serde(default)]
                value: String,
                #[serde(default = "unspec_source")]
                source: String,
            }
            fn unspec_source() -> String {
                source::UNSPEC.to_owned()
            }
            let fields = LabelFields::deserialize(de::value::MapAccessDeserializer::new(map))?;
            Ok(Label::new(fields.source, fields.key, fields.value))
        }
    }

    struct OneLabel(Label);

    impl<'de> Deserialize<'de> for OneLabel {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_any(LabelVisitor).map(OneLabel)
        }
    }

    Ok(Option::<Vec<OneLabel>>::deserialize(deserializer)?
        .unwrap_or_default()
        .into_iter()
        .map(|l| l.0)
        .collect())
}
