//! Reading policy documents from YAML or JSON text, as `cilium-dbg policy import` receives it.
//!
//! The input may hold several YAML documents (`---`), a JSON object, a JSON array of objects,
//! or a Kubernetes `List` (`items`). Each object is dispatched on its `kind`. Import is all or
//! nothing: any malformed or invalid document rejects the whole input.
//!
//! Reading happens in two passes over the text. The first reads every document into a generic
//! YAML value to find out which kinds it holds. The second deserialises each policy straight
//! from the text into its typed form, so that shape errors carry the YAML reader's field path
//! and line (`spec.egress: invalid type: map, expected a sequence at line 12 column 5`); going
//! through the generic value would lose both.

use std::fmt;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_yaml_ng::Value;

use super::error::PolicyError;
use super::{PolicyDocument, PolicyKind};

/// Reads every document of `text`; any object that is not a policy is an error
/// ([`PolicyError::NotAPolicy`]), as is any malformed or invalid policy.
pub fn parse_documents(text: &str) -> Result<Vec<PolicyDocument>, PolicyError> {
    let parsed = parse(text, Mode::Strict)?;
    Ok(parsed.policies)
}

/// Reads every document of `text`, skipping objects of other kinds (the Services and
/// Deployments that demo manifests mix with their policies). Malformed or invalid policies
/// still reject the whole input.
pub fn parse_documents_lenient(text: &str) -> Result<ParsedDocuments, PolicyError> {
    parse(text, Mode::Lenient)
}

/// The outcome of [`parse_documents_lenient`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedDocuments {
    /// The policies, in input order.
    pub policies: Vec<PolicyDocument>,
    /// The objects that were skipped because they are not policies, in input order.
    pub skipped: Vec<SkippedDocument>,
}

/// An object skipped by [`parse_documents_lenient`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedDocument {
    /// 1-based position of the YAML document.
    pub document: usize,
    /// 0-based position inside a JSON array or `List`, if the object was in one.
    pub item: Option<usize>,
    pub kind: String,
    /// `metadata.name`, if the object has one.
    pub name: Option<String>,
}

impl fmt::Display for SkippedDocument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(name) = &self.name {
            write!(f, " {name}")?;
        }
        write!(f, " (document {}", self.document)?;
        if let Some(item) = self.item {
            write!(f, ", item {item}")?;
        }
        f.write_str(")")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Strict,
    Lenient,
}

/// What one object of the input is, found in the first pass.
#[derive(Debug)]
enum Slot {
    Policy(PolicyKind),
    Other { kind: String, name: Option<String> },
}

/// The layout of one YAML document, found in the first pass.
#[derive(Debug)]
enum Layout {
    Empty,
    Single(Slot),
    /// A JSON array (`list: false`) or a Kubernetes `List` object (`list: true`).
    Items {
        list: bool,
        slots: Vec<Slot>,
    },
}

fn wrap(document: usize, item: Option<usize>) -> impl FnOnce(PolicyError) -> PolicyError {
    move |source| PolicyError::Document {
        document,
        item,
        error: Box::new(source),
    }
}

fn parse_error(error: serde_yaml_ng::Error) -> PolicyError {
    PolicyError::Parse {
        message: error.to_string(),
    }
}

fn parse(text: &str, mode: Mode) -> Result<ParsedDocuments, PolicyError> {
    let layouts = plan(text)?;

    let mut skipped = Vec::new();
    for (index, layout) in layouts.iter().enumerate() {
        let slots: Vec<(Option<usize>, &Slot)> = match layout {
            Layout::Empty => Vec::new(),
            Layout::Single(slot) => vec![(None, slot)],
            Layout::Items { slots, .. } => slots
                .iter()
                .enumerate()
                .map(|(i, s)| (Some(i), s))
                .collect(),
        };
        for (item, slot) in slots {
            if let Slot::Other { kind, name } = slot {
                if mode == Mode::Strict {
                    return Err(wrap(index + 1, item)(PolicyError::NotAPolicy {
                        kind: kind.clone(),
                    }));
                }
                skipped.push(SkippedDocument {
                    document: index + 1,
                    item,
                    kind: kind.clone(),
                    name: name.clone(),
                });
            }
        }
    }

    let mut policies = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let Some(layout) = layouts.get(index) else {
            break;
        };
        let number = index + 1;
        let read: Vec<(Option<usize>, Option<PolicyDocument>)> = match layout {
            Layout::Empty => Vec::new(),
            Layout::Single(slot) => {
                let policy = SlotSeed(slot)
                    .deserialize(document)
                    .map_err(|e| wrap(number, None)(parse_error(e)))?;
                vec![(None, policy)]
            }
            Layout::Items { list, slots } => {
                let items = if *list {
                    ListSeed(slots).deserialize(document)
                } else {
                    ItemsSeed(slots).deserialize(document)
                };
                items
                    .map_err(|e| wrap(number, None)(parse_error(e)))?
                    .into_iter()
                    .enumerate()
                    .map(|(i, p)| (Some(i), p))
                    .collect()
            }
        };
        for (item, policy) in read {
            if let Some(policy) = policy {
                policy.validate().map_err(wrap(number, item))?;
                policies.push(policy);
            }
        }
    }
    Ok(ParsedDocuments { policies, skipped })
}

/// First pass: the layout of every document. Stops at the first error, because the YAML
/// reader cannot resynchronise after a syntax error.
fn plan(text: &str) -> Result<Vec<Layout>, PolicyError> {
    let mut layouts = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let number = index + 1;
        let value = Value::deserialize(document).map_err(|e| wrap(number, None)(parse_error(e)))?;
        layouts.push(layout(value).map_err(|(item, e)| wrap(number, item)(e))?);
    }
    Ok(layouts)
}

fn layout(value: Value) -> Result<Layout, (Option<usize>, PolicyError)> {
    let items = |values: &[Value]| {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| slot(v).map_err(|e| (Some(i), e)))
            .collect::<Result<Vec<_>, _>>()
    };
    match &value {
        Value::Null => Ok(Layout::Empty),
        Value::Sequence(values) => Ok(Layout::Items {
            list: false,
            slots: items(values)?,
        }),
        Value::Mapping(map) => {
            let is_list = map
                .get("kind")
                .and_then(Value::as_str)
                .is_some_and(|kind| kind.ends_with("List"));
            match map.get("items") {
                Some(Value::Sequence(values)) if is_list => Ok(Layout::Items {
                    list: true,
                    slots: items(values)?,
                }),
                _ => Ok(Layout::Single(slot(&value).map_err(|e| (None, e))?)),
            }
        }
        other => Err((None, not_an_object(other))),
    }
}

fn not_an_object(value: &Value) -> PolicyError {
    let found = match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "an object",
        Value::Tagged(_) => "a tagged value",
    };
    PolicyError::NotAnObject { found }
}

fn slot(value: &Value) -> Result<Slot, PolicyError> {
    let Value::Mapping(map) = value else {
        return Err(not_an_object(value));
    };
    let kind = match map.get("kind") {
        None | Some(Value::Null) => return Err(PolicyError::MissingKind),
        Some(Value::String(kind)) => kind,
        Some(_) => return Err(PolicyError::invalid("kind", "must be a string")),
    };
    Ok(match PolicyKind::from_kind(kind) {
        Some(policy) => Slot::Policy(policy),
        None => Slot::Other {
            kind: kind.clone(),
            name: map
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .map(str::to_owned),
        },
    })
}

/// Second pass, one object: the typed policy, or `None` for a skipped object.
struct SlotSeed<'a>(&'a Slot);

impl<'de> DeserializeSeed<'de> for SlotSeed<'_> {
    type Value = Option<PolicyDocument>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        match self.0 {
            Slot::Policy(kind) => kind.deserialize_document(deserializer).map(Some),
            Slot::Other { .. } => {
                IgnoredAny::deserialize(deserializer)?;
                Ok(None)
            }
        }
    }
}

/// Second pass, a sequence of objects.
struct ItemsSeed<'a>(&'a [Slot]);

impl<'de> DeserializeSeed<'de> for ItemsSeed<'_> {
    type Value = Vec<Option<PolicyDocument>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed<'_> {
    type Value = Vec<Option<PolicyDocument>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of Kubernetes objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(self.0.len());
        for slot in self.0 {
            match seq.next_element_seed(SlotSeed(slot))? {
                Some(policy) => out.push(policy),
                None => return Ok(out),
            }
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(out)
    }
}

/// Second pass, a `List` object: its `items`.
struct ListSeed<'a>(&'a [Slot]);

impl<'de> DeserializeSeed<'de> for ListSeed<'_> {
    type Value = Vec<Option<PolicyDocument>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ListSeed<'_> {
    type Value = Vec<Option<PolicyDocument>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Kubernetes List object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == "items" {
                items = map.next_value_seed(ItemsSeed(self.0))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(items)
    }
}
